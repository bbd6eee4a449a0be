"""The learned codec's weights folder, read without torch: what a base install (no torch extra)
needs to decode a `learned` container.

    encoder.safetensors   analysis + hyper-analysis (float16; the encoder needs no exactness)
    decoder.npz           integer hyper-synthesis and synthesis layers, inverse gains, the
                          entropy tables: everything a decoder needs, no float model
                          (`IntDecoder`: its layout, written and read here only)
    config.json           the architecture (`CodecConfig`), calibration and training record
    MODEL_CARD.md         written by the training script

export.py (torch) writes a folder; runtime.py decodes with one. The weights hash is the zoo's
(decoder.npz then encoder.safetensors).

Clips: a layer's outputs are clipped to +-2^15 (0..2^15 after a ReLU), and the synthesis
input to +-2^15, unless decoder.npz has "<layer>.clip" / "synth_in_clip" (one value, or one
per channel: weights exported for float32, export.py); folders written before have neither
and decode as they always did.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ... import zoo
from .entropy import Tables
from .exact import ACT_BITS, FastLayer, IntLayer, compile_layers

FORMAT = zoo.FORMATS["learned-codec"]
CONFIG_FILE, DECODER_FILE, ENCODER_FILE = FORMAT.needs  # config.json, decoder.npz, encoder...
GAIN_FRAC = 12  # inverse gains in fixed point
QUALITY_STEPS = 16  # quality knob resolution: 1/16 of a level
SYNTH_INPUT_BOUND = 2.0**ACT_BITS  # the synthesis input's clip unless decoder.npz sets one
LEGACY_CLIP = 2.0**ACT_BITS  # a layer's clip where decoder.npz has no "<layer>.clip"


@dataclass(frozen=True)
class CodecConfig:
    n: int = 96  # analysis channels
    m: int = 96  # latent channels
    z: int = 64  # hyper-latent channels
    hyper: int = 96  # hyper-synthesis channels
    # latents at 1/latent_stride of the tile (8 or 16); hyper-latents always at 1/32
    latent_stride: int = 8
    synthesis: tuple[int, ...] = (64,)  # hidden channels: one 2x layer each, then a 4x one
    lambdas: tuple[float, ...] = (0.005, 0.0088, 0.0153, 0.027, 0.047, 0.082, 0.143, 0.25)
    distortion: str = "mse"  # "mse" | "ms-ssim"
    name: str = "he-shallow-hyperprior"
    version: str = "1"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["synthesis"] = list(self.synthesis)
        d["lambdas"] = list(self.lambdas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CodecConfig:
        d = dict(d)
        d.setdefault("latent_stride", 16)  # weights exported before the field existed
        d["synthesis"] = tuple(d["synthesis"])
        d["lambdas"] = tuple(d["lambdas"])
        return cls(**d)

    @property
    def levels(self) -> int:
        return len(self.lambdas)


def config_of(folder: Path) -> CodecConfig:
    return CodecConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text())["config"])


@dataclass
class IntDecoder:
    """The contents of decoder.npz."""

    hyper: list[IntLayer]
    synth: list[IntLayer]
    mu_frac: int  # means and log-scales at 2^-mu_frac
    synth_in_frac: int
    scale_thresholds: np.ndarray  # log-scale (at 2^-mu_frac) -> scale table index
    inv_gain: np.ndarray  # (levels, M) at 2^-GAIN_FRAC
    log_scale_min: float
    log_scale_max: float
    tables: Tables
    # the decoder clips the synthesis input to +-this (integer units; one value or one per
    # latent channel); None: +-2^ACT_BITS (weights exported before it was a choice:
    # decoder.npz then has no "synth_in_clip")
    synth_in_clip: float | np.ndarray | None = None

    @property
    def synth_in_bound(self) -> float | np.ndarray:
        return SYNTH_INPUT_BOUND if self.synth_in_clip is None else self.synth_in_clip

    def to_arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {
            "mu_frac": np.int64(self.mu_frac),
            "synth_in_frac": np.int64(self.synth_in_frac),
            "scale_thresholds": self.scale_thresholds,
            "inv_gain": self.inv_gain,
            "log_scale_min": np.float64(self.log_scale_min),
            "log_scale_max": np.float64(self.log_scale_max),
            **{f"tables.{k}": v for k, v in self.tables.to_arrays().items()},
        }
        if self.synth_in_clip is not None:
            out["synth_in_clip"] = _integers(self.synth_in_clip, "synth_in_clip")
        for name, layers in (("hyper", self.hyper), ("synth", self.synth)):
            out[f"{name}.count"] = np.int64(len(layers))
            for i, L in enumerate(layers):
                p = f"{name}.{i}."
                out[p + "weight"], out[p + "bias"], out[p + "w_exp"] = L.weight, L.bias, L.w_exp
                out[p + "meta"] = np.array(
                    [L.stride, L.in_frac, L.out_frac, int(L.relu), int(L.clip is not None)]
                )
                if L.clip is not None and not (np.ndim(L.clip) == 0 and L.clip == LEGACY_CLIP):
                    out[p + "clip"] = _integers(L.clip, f"{name}.{i} clip")
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> IntDecoder:
        tables = {k[len("tables.") :]: v for k, v in arrays.items() if k.startswith("tables.")}
        return cls(
            load_layers(arrays, "hyper"), load_layers(arrays, "synth"),
            int(arrays["mu_frac"]), int(arrays["synth_in_frac"]), arrays["scale_thresholds"],
            arrays["inv_gain"], float(arrays["log_scale_min"]), float(arrays["log_scale_max"]),
            Tables.from_arrays(tables),
            _clip_value(arrays["synth_in_clip"]) if "synth_in_clip" in arrays else None,
        )  # fmt: skip

    @property
    def z_bound(self) -> float:
        """The largest |hyper-latent| a stream can carry (the z tables' range)."""
        return float(self.tables.z_radius.max())

    def fast_layers(self) -> tuple[list[FastLayer], list[FastLayer]]:
        """The hyper-synthesis and the synthesis (to uint8 pixels) as exact.FastLayer stacks,
        exactness proven from the weights and the input ranges (hyper-latents within
        `z_bound`; the synthesis input clipped to +-`synth_in_bound` by the decoder). ValueError
        where it cannot be: export calls this too, so such weights are never shipped."""
        return (
            compile_layers(self.hyper, self.z_bound),
            compile_layers(self.synth, self.synth_in_bound, pixels=True),
        )

    def save(self, folder: Path) -> None:
        with open(folder / DECODER_FILE, "wb") as f:
            np.savez_compressed(f, **self.to_arrays())

    @classmethod
    def load(cls, folder: Path) -> IntDecoder:
        with np.load(folder / DECODER_FILE, allow_pickle=False) as z:
            return cls.from_arrays({k: z[k] for k in z.files})


def load_layers(arrays: dict[str, np.ndarray], name: str) -> list[IntLayer]:
    layers = []
    for i in range(int(arrays[f"{name}.count"])):
        p = f"{name}.{i}."
        stride, in_frac, out_frac, relu, clip = (int(v) for v in arrays[p + "meta"])
        # a clip of its own ("clip": one, or one per output channel) else 2^15 (as before)
        value = _clip_value(arrays[p + "clip"]) if p + "clip" in arrays else LEGACY_CLIP
        layers.append(IntLayer(
            arrays[p + "weight"], arrays[p + "bias"], arrays[p + "w_exp"], stride, in_frac,
            out_frac, bool(relu), value if clip else None,
        ))  # fmt: skip
    return layers


def _integers(clip: float | np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(clip, np.float64)
    if np.any(a != np.floor(a)) or np.any(a < 0):
        raise ValueError(f"{what}: clips are integers >= 0")
    return a


def _clip_value(a: np.ndarray) -> float | np.ndarray:
    a = np.asarray(a, np.float64)
    return float(a) if a.ndim == 0 else a
