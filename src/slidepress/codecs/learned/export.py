"""A trained CodecNet -> the shipped weights folder (its files and decoder.npz's layout:
weights_folder.py, which decodes without torch; this module needs torch to write one).

Post-training quantisation: activation scales are calibrated on real crops at every level;
weights get per-output-channel power-of-two scales (exact.py). The fixed-point decoder differs
from the float one by far less than a grey level (measured and recorded at export).

Precision (`PRECISIONS`): "float64" (the default, as codec-he-shallow was exported) gives
weights 11 bits and activations 15 bits (clips at +-2^15), so the synthesis' sums need float64
(up to 2^32 < 2^53); "float32" gives activations ~10 bits with clips at their calibrated
peaks and each layer's output channels the finest weight scale that keeps the layer's proven
worst partial sum (exact.worst_units) below 2^24, and the decoder then runs every layer as
float32 products (exact.FastLayer, twice BLAS's float64 rate). `requantize(folder)` derives
such a decoder from a shipped folder's integer weights (an exact function of the folder and
the peaks: the float model is not needed); an export from a float model (`export(...,
precision=)`) rounds the float weights directly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from ... import zoo
from .entropy import Tables
from .exact import EXACT_SPAN, IntLayer, frac_bits_for, quantize_layer, quantize_to_span
from .model import LOG_SCALE_MAX, LOG_SCALE_MIN, PIXEL_CENTRE, PIXEL_SPREAD, CodecNet
from .runtime import LearnedModel
from .weights_folder import (
    CONFIG_FILE,
    DECODER_FILE,
    ENCODER_FILE,
    FORMAT,
    GAIN_FRAC,
    QUALITY_STEPS,
    IntDecoder,
)

__all__ = [
    "CONFIG_FILE", "PRECISIONS", "build_decoder", "calibrate", "calibrate_channels", "export",
    "fit_precision", "requantize", "write_requantized",
]  # fmt: skip
PRECISIONS = ("float64", "float32")
MARGIN = 1.5  # activations' range: the calibration peak times this (exact.frac_bits_for's)
# "float32" defaults, chosen on the validation crops (scripts/export_codec.py; MODEL_CARD.md
# of codec-he-shallow-f32): activations get about 10 bits (9 or 11 cost more PSNR: fewer
# activation bits, or fewer weight bits to keep the bound); the synthesis' clips at the
# calibrated peaks themselves (real H&E stays below them; a wider margin costs the weights
# bits), the hyper-synthesis' with MARGIN (its precision hardly matters)
FLOAT32_ACT_BITS = 10
FLOAT32_MARGIN = {"hyper": MARGIN, "synth": 1.0}


@torch.no_grad()
def calibrate(net: CodecNet, crops: torch.Tensor, per_channel: bool = False) -> dict[str, list]:
    """Peak |activation| entering and leaving every decoder layer, over all levels (with
    `per_channel`, one per channel: arrays)."""
    peaks: dict[str, list] = {
        "hyper": [0.0] * (len(_convs(net.hyper_synthesis)) + 1),
        "synth": [0.0] * (len(_convs(net.synthesis)) + 1),
    }
    net.eval()
    for lv in range(net.cfg.levels):
        level = torch.full((len(crops),), lv, dtype=torch.long)
        g = net.gain(level)
        y = net.analysis(crops) * g
        h = _track(net.hyper_synthesis, torch.round(net.hyper_analysis(y)), peaks["hyper"],
                   per_channel)  # fmt: skip
        mu, _ = h.chunk(2, dim=1)
        _track(net.synthesis, (torch.round(y - mu) + mu) / g, peaks["synth"], per_channel)
    net.train()
    return peaks


def _track(
    seq: torch.nn.Sequential, x: torch.Tensor, peaks: list, per_channel: bool = False
) -> torch.Tensor:
    """Run `seq`, raising `peaks` to the largest |value| entering it and leaving each ReLU and
    its last module (per channel: arrays); returns the output."""
    acts = [x]
    for mod in seq:
        x = mod(x)
        if isinstance(mod, torch.nn.ReLU) or mod is seq[-1]:
            acts.append(x)
    for i, a in enumerate(acts):
        if per_channel:
            peaks[i] = np.maximum(peaks[i], a.abs().amax(dim=(0, 2, 3)).double().numpy())
        else:
            peaks[i] = max(peaks[i], float(a.abs().max()))
    return x


@torch.no_grad()
def calibrate_channels(model: LearnedModel, tiles: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Per channel, the peak |activation| (real units) a weights folder's integer decoder
    meets on `tiles` ((N, H, W, 3) uint8, H and W multiples of 32) at every level, as the
    codec codes them: {"hyper": [leaving hyper-synthesis layer 0, 1, ... but the last],
    "synth": [entering the synthesis, leaving layer 0, 1, ... but the last]} (`fit_precision`'s
    `channel_peaks`). The reference integer layers (exact.IntLayer), rounded as the decoder
    rounds; the encoder is the folder's own."""
    _, net = model._torch_encoder()
    x = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).float().div_(255.0)
    y0 = net.analysis(x)
    out = {
        "hyper": [np.zeros(L.cout) for L in model.hyper[:-1]],
        "synth": [np.zeros(model.config.m)] + [np.zeros(L.cout) for L in model.synth[:-1]],
    }

    def track(peaks: np.ndarray, a: np.ndarray, frac: int) -> None:
        np.maximum(peaks, np.abs(a).reshape(-1, a.shape[-1]).max(axis=0) * 2.0**-frac, out=peaks)

    rz = model.tables.z_radius
    for lv in range(model.levels):
        q16 = (lv + 1) * QUALITY_STEPS
        gain = torch.from_numpy(2.0 ** (GAIN_FRAC + 4) / model.inverse_gain(q16)).float()
        y = y0 * gain[None, :, None, None]
        z = net.hyper_analysis(y).round().permute(0, 2, 3, 1).numpy().astype(np.int64)
        z = np.clip(z, -rz, rz)
        h = z.astype(np.float64)
        for i, L in enumerate(model.hyper[:-1]):
            h = L(h)
            track(out["hyper"][i], h, L.out_frac)
        mu, idx = model.entropy_params(z)
        y_sym = np.round(y.permute(0, 2, 3, 1).double().numpy() - mu * 2.0**-model.mu_frac)
        r = model.tables.y_radius[idx]
        s = model.synthesis_input(np.clip(y_sym, -r, r), mu, q16)
        track(out["synth"][0], s, model.synth_in_frac)
        for i, L in enumerate(model.synth[:-1]):
            s = L(s)
            track(out["synth"][i + 1], s, L.out_frac)
    return out


def _convs(seq: torch.nn.Sequential) -> list[torch.nn.Module]:
    return [m for m in seq if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]


def _layer(
    conv: torch.nn.Module, in_frac: int, out_frac: int, relu: bool, shift: float = 0.0, **kw
) -> IntLayer:
    w = conv.weight.detach().double().numpy()
    b = conv.bias.detach().double().numpy() + shift
    if isinstance(conv, torch.nn.ConvTranspose2d):
        stride = conv.stride[0]
    else:  # 1x1 convolution (cout, cin, 1, 1) -> transposed layout (cin, cout, 1, 1)
        if conv.kernel_size != (1, 1):
            raise ValueError("only 1x1 convolutions are supported on the decoder side")
        w, stride = w.transpose(1, 0, 2, 3), 1
    return quantize_layer(w, b, stride, in_frac, out_frac, relu, **kw)


def _real(
    conv: torch.nn.Module, out_gain: float = 1.0, shift: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """A decoder-side convolution's float weights in exact.py's layout (cin, k, k, cout) and
    its bias, as `_layer` scales them (bias + shift, both times out_gain)."""
    w = conv.weight.detach().double().numpy()
    if not isinstance(conv, torch.nn.ConvTranspose2d):  # 1x1: (cout, cin, 1, 1)
        w = w.transpose(1, 0, 2, 3)
    b = conv.bias.detach().double().numpy() + shift
    return w.transpose(0, 2, 3, 1) * out_gain, b * out_gain


def build_decoder(
    net: CodecNet,
    peaks: dict[str, list[float]],
    precision: str = "float64",
    fracs: dict[str, list[int]] | None = None,
    channel_peaks: dict[str, list] | None = None,
    record: dict | None = None,
) -> IntDecoder:
    """Integer layers, gains and tables (the contents of decoder.npz); with precision
    "float32", its layers fitted to float32 from the float weights (`fit_precision`; its
    record of the choices goes into `record`)."""
    hyper_fracs = [0] + [frac_bits_for(p) for p in peaks["hyper"][1:]]
    hyper_fracs[-1] = min(hyper_fracs[-1], 8)  # mu and log-scale: 8 fractional bits at most
    hyper_convs = _convs(net.hyper_synthesis)
    hyper = [
        _layer(c, hyper_fracs[i], hyper_fracs[i + 1], relu=i < len(hyper_convs) - 1)
        for i, c in enumerate(hyper_convs)
    ]
    synth_fracs = [frac_bits_for(p) for p in peaks["synth"][:-1]] + [0]
    synth_convs = _convs(net.synthesis)
    last = len(synth_convs) - 1
    # the pixel un-centring (model.Affine) folded into the last layer: 255 * (v / spread + centre)
    pixel = {"out_gain": 255.0 / PIXEL_SPREAD, "shift": PIXEL_CENTRE * PIXEL_SPREAD}
    synth = [
        _layer(
            c,
            synth_fracs[i],
            synth_fracs[i + 1],
            relu=i < last,
            clip=i < last,
            **(pixel if i == last else {}),
        )  # fmt: skip
        for i, c in enumerate(synth_convs)
    ]
    mu_frac = hyper_fracs[-1]
    lmin, lmax = LOG_SCALE_MIN, LOG_SCALE_MAX
    tables = Tables.build(lmin, lmax, net.z_log_scale.detach().exp().double().numpy())
    step = (lmax - lmin) / (len(tables.scales) - 1)
    thresholds = np.floor((lmin + (np.arange(len(tables.scales) - 1) + 0.5) * step) * 2**mu_frac)
    inv_gain = np.round(np.exp(-net.log_gain.detach().double().numpy()) * 2**GAIN_FRAC)
    dec = IntDecoder(hyper, synth, mu_frac, synth_fracs[0], thresholds, inv_gain, lmin, lmax,
                     tables)  # fmt: skip
    if precision != "float64":  # refitted from the float weights (rounded once)
        source = {
            "hyper": [_real(c) for c in hyper_convs],
            "synth": [_real(c, **(pixel if i == last else {})) for i, c in enumerate(synth_convs)],
        }
        dec, fit = fit_precision(dec, peaks, precision, fracs, source=source,
                                 channel_peaks=channel_peaks)  # fmt: skip
        if record is not None:
            record.update(fit)
    dec.fast_layers()  # ValueError unless the fast decoder is provably exact with these weights
    return dec


# -- precision ---------------------------------------------------------------------------------


def layer_real(layer: IntLayer) -> tuple[np.ndarray, np.ndarray]:
    """A fixed-point layer's real weights (cin, k, k, cout) and bias (at the output's scale):
    exact in float64 (integers times powers of two)."""
    e = layer.w_exp.astype(np.float64)
    return layer.weight * np.exp2(-e), layer.bias * np.exp2(-(layer.in_frac + e))


def decoder_fracs(dec: IntDecoder) -> dict[str, list[int]]:
    """Fractional bits of a decoder's free activations: {"hyper": [after hyper-synthesis
    layer 0, 1, ... but the last], "synth": [the synthesis input, after layer 0, 1, ... but
    the last]} (the hyper-latents are integers, the means and log-scales keep 2^-mu_frac, the
    pixels are integers)."""
    return {"hyper": [L.out_frac for L in dec.hyper[:-1]],
            "synth": [dec.synth_in_frac] + [L.out_frac for L in dec.synth[:-1]]}  # fmt: skip


def default_fracs(
    dec: IntDecoder,
    peaks: dict[str, list[float]],
    precision: str,
    margin: float | dict[str, float] | None = None,
) -> dict[str, list[int]]:
    """`decoder_fracs` for `precision`: "float64", the decoder's own; "float32", about
    FLOAT32_ACT_BITS bits for each activation's calibrated range (peak x margin): 2^-round(
    FLOAT32_ACT_BITS - log2(peak x margin))."""
    _check(precision)
    if precision == "float64":
        return decoder_fracs(dec)
    margins = _margins(margin, precision)

    def frac(peak: float, part: str) -> int:
        return int(np.round(FLOAT32_ACT_BITS - np.log2(peak * margins[part])))

    return {"hyper": [frac(p, "hyper") for p in peaks["hyper"][1:-1]],
            "synth": [frac(p, "synth") for p in peaks["synth"][:-1]]}  # fmt: skip


def _margins(margin: float | dict[str, float] | None, precision: str) -> dict[str, float]:
    if margin is None:
        margin = FLOAT32_MARGIN if precision == "float32" else MARGIN
    if isinstance(margin, dict):
        return {"hyper": float(margin["hyper"]), "synth": float(margin["synth"])}
    return {"hyper": float(margin), "synth": float(margin)}


def _listed(channel_peaks: dict[str, list]) -> dict[str, list[list[float]]]:
    """Channel peaks for config.json (float64 to JSON and back: the same numbers)."""
    return {k: [np.asarray(p, np.float64).tolist() for p in v] for k, v in channel_peaks.items()}


def _check(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")


def _clip(peak, frac: int, margin: float) -> float | np.ndarray:
    """An activation's clip in integer units: the calibrated peak (or one per channel) times
    `margin`, at least 1."""
    c = np.maximum(np.ceil(np.asarray(peak, np.float64) * margin * 2.0**frac), 1.0)
    return float(c) if c.ndim == 0 else c


def fit_precision(
    dec: IntDecoder,
    peaks: dict[str, list[float]],
    precision: str = "float32",
    fracs: dict[str, list[int]] | None = None,
    margin: float | dict[str, float] | None = None,
    source: dict[str, list[tuple[np.ndarray, np.ndarray]]] | None = None,
    channel_peaks: dict[str, list] | None = None,
) -> tuple[IntDecoder, dict]:
    """`dec` with its layers re-rounded for `precision` (module docstring), and the record
    of what was chosen (config.json's "precision").

    Each free activation (`default_fracs`; `fracs` overrides) gets its fractional bits and a
    clip at its calibrated peak x `margin` (one, or {"hyper": .., "synth": ..}; default
    FLOAT32_MARGIN) -- per channel where `channel_peaks` has that part (`calibrate_channels`:
    the sums' bound then weighs each input by its own clip, ~1 bit tighter); then per layer
    and output channel the finest power-of-two weight scale whose proven worst partial sum,
    for inputs within the previous clip, stays below the precision's exact span
    (exact.quantize_to_span). The weights and
    biases re-rounded are `source`'s real ones (a float model's: (weight (cin, k, k, cout),
    bias) per layer) or else `dec`'s own, never on a finer grid than theirs. "float64"
    returns `dec` unchanged. Gains, tables and thresholds are kept (the means stay at
    2^-mu_frac), so the entropy model changes only through the hyper-synthesis' outputs, and
    encoder and decoder both compute those with the integer layers."""
    _check(precision)
    margins = _margins(margin, precision)
    fracs = default_fracs(dec, peaks, precision, margins) if fracs is None else fracs
    record: dict = {"precision": precision, "fracs": fracs}
    if precision == "float64":
        return dec, record
    span = EXACT_SPAN[np.dtype(precision)]
    src = source or {"hyper": [layer_real(L) for L in dec.hyper],
                     "synth": [layer_real(L) for L in dec.synth]}  # fmt: skip

    cp = channel_peaks or {}

    def chain(layers, sources, in_frac, in_bound, out_fracs, out_peaks, margin):
        out, nonneg = [], False
        for i, (L, (w, b)) in enumerate(zip(layers, sources, strict=True)):
            last = i == len(layers) - 1
            out_frac = out_fracs[i]
            clip = L.clip if last else _clip(out_peaks[i], out_frac, margin)
            out.append(quantize_to_span(
                w, b, L.stride, in_frac, out_frac, L.relu, clip, in_bound, nonneg, span,
                max_exp=None if source else L.w_exp,
            ))  # fmt: skip
            in_frac, in_bound, nonneg = out_frac, clip, L.relu
        return out

    hf, sf = list(fracs["hyper"]), list(fracs["synth"])
    hyper = chain(dec.hyper, src["hyper"], 0, dec.z_bound, hf + [dec.mu_frac],
                  cp.get("hyper") or peaks["hyper"][1:-1], margins["hyper"])  # fmt: skip
    synth_peaks = cp.get("synth") or peaks["synth"][:-1]
    synth_in_clip = _clip(synth_peaks[0], sf[0], margins["synth"])
    synth = chain(dec.synth, src["synth"], sf[0], synth_in_clip, sf[1:] + [0],
                  synth_peaks[1:], margins["synth"])  # fmt: skip
    new = IntDecoder(hyper, synth, dec.mu_frac, sf[0], dec.scale_thresholds, dec.inv_gain,
                     dec.log_scale_min, dec.log_scale_max, dec.tables, synth_in_clip)  # fmt: skip
    hyper_fast, synth_fast = new.fast_layers()  # proven here, as every load will
    fast = hyper_fast + synth_fast
    if any(f.dtype != np.dtype(precision) for f in fast):
        raise ValueError(f"a layer does not fit {precision}: {[str(f.dtype) for f in fast]}")
    record |= {
        "margin": margins,
        "clips": {k: "per channel" if k in cp else "per layer" for k in ("hyper", "synth")},
        "weight_bits_median": {  # per layer: median over output channels of the bits of
            # the largest |integer weight| (11 for the float64 export)
            n: [
                float(np.median(np.ceil(np.log2(np.abs(L.weight).reshape(-1, L.cout).max(0) + 1))))
                for L in layers
            ]
            for n, layers in (("hyper", hyper), ("synth", synth))
        },  # fmt: skip
        "worst_log2": [round(float(np.log2(f.worst)), 3) for f in fast],
    }
    return new, record


def requantize(
    folder: str | Path,
    precision: str = "float32",
    fracs: dict[str, list[int]] | None = None,
    margin: float | dict[str, float] | None = None,
    channel_peaks: dict[str, list] | None = None,
) -> tuple[IntDecoder, dict]:
    """A shipped weights folder's decoder re-rounded for `precision` from its own integer
    weights and calibration peaks (config.json; per channel: `channel_peaks`, e.g.
    `calibrate_channels`): an exact function of them, no float model needed
    (`fit_precision`); and the record for config.json."""
    folder = Path(folder)
    doc = json.loads((folder / CONFIG_FILE).read_text())
    dec, record = fit_precision(IntDecoder.load(folder), doc["calibration"], precision, fracs,
                                margin, channel_peaks=channel_peaks)  # fmt: skip
    record["requantized_from"] = {"folder": folder.name,
                                  "weights_sha256": zoo.weights_sha256(folder, FORMAT)}  # fmt: skip
    return dec, record


def write_requantized(
    folder: str | Path,
    out_dir: str | Path,
    precision: str = "float32",
    fracs: dict[str, list[int]] | None = None,
    margin: float | dict[str, float] | None = None,
    channel_peaks: dict[str, list] | None = None,
) -> str:
    """A new weights folder: `requantize(folder)`'s decoder.npz, the same encoder (its bytes),
    config.json with "precision" recorded (and the channel peaks used, so the folder says
    how it was made; the source's "export_check" dropped: it measured the source's
    decoder). Returns the new weights hash."""
    folder, out_dir = Path(folder), Path(out_dir)
    if out_dir.resolve() == folder.resolve():
        raise ValueError("write the requantized weights to a new folder")
    dec, record = requantize(folder, precision, fracs, margin, channel_peaks)
    if channel_peaks:
        record["channel_peaks"] = _listed(channel_peaks)
    out_dir.mkdir(parents=True, exist_ok=True)
    dec.save(out_dir)
    shutil.copyfile(folder / ENCODER_FILE, out_dir / ENCODER_FILE)
    doc = json.loads((folder / CONFIG_FILE).read_text())
    doc.pop("export_check", None)
    doc["precision"] = record
    (out_dir / CONFIG_FILE).write_text(json.dumps(doc, indent=1))
    for p in (out_dir / DECODER_FILE, out_dir / ENCODER_FILE, out_dir / CONFIG_FILE):
        p.chmod(0o644)
    return zoo.weights_sha256(out_dir, FORMAT)


def export(
    net: CodecNet,
    calib: torch.Tensor,
    out_dir: Path,
    record: dict,
    precision: str = "float64",
    fracs: dict[str, list[int]] | None = None,
) -> str:
    """Write the weights folder; return its weights hash (the zoo's: decoder + encoder).
    `precision` "float32": the synthesis gets per-channel clips from the same calibration
    crops (`fit_precision`)."""
    from safetensors.torch import save_file

    _check(precision)
    out_dir.mkdir(parents=True, exist_ok=True)
    peaks = calibrate(net, calib)
    fit: dict = {"precision": precision}
    channel_peaks = None
    if precision != "float64":
        channel_peaks = {"synth": calibrate(net, calib, per_channel=True)["synth"][:-1]}
    dec = build_decoder(net, peaks, precision, fracs, channel_peaks, record=fit)
    dec.save(out_dir)
    fit["fracs"] = decoder_fracs(dec)
    if channel_peaks:
        fit["channel_peaks"] = _listed(channel_peaks)
    record = {**record, "precision": fit}
    enc_state = {
        k: v.detach().half().contiguous()
        for k, v in net.state_dict().items()
        if k.startswith(("analysis.", "hyper_analysis.", "log_gain", "z_log_scale"))
    }
    save_file(enc_state, str(out_dir / ENCODER_FILE))
    cfg = {"config": net.cfg.to_dict(), "calibration": peaks, "gain_frac": GAIN_FRAC,
           "quality_steps": QUALITY_STEPS, **record}  # fmt: skip
    (out_dir / CONFIG_FILE).write_text(json.dumps(cfg, indent=1))
    for p in out_dir.iterdir():
        p.chmod(0o644)
    return zoo.weights_sha256(out_dir, FORMAT)
