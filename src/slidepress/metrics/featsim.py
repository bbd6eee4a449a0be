"""Feature similarity (Fischer et al., J Pathol Inform 2025): how close a decoded tile stays to
its original in the eyes of a CNN trained on pathology, at six depths.

Definition. Both tiles (uint8 RGB) go through the same ResNet18 (RGB / 255, normalised with the
weights' mean and std, full tile, no resizing: the network is fully convolutional). At each
depth d of DEPTHS (the stem after conv1 + BN + ReLU at stride 2; the outputs of layer1..layer4
at strides 4-32; the global average of layer4, i.e. the classifier's input) the feature map is
flattened to one vector per tile (C x H' x W' values, ReLU outputs, so >= 0) and

    sim_d = <f_d(orig), f_d(decoded)> / (|f_d(orig)| |f_d(decoded)|)     (float64, clipped to 1)

(1 when both vectors are zero, 0 when only one is). A tile's `mean` is the plain average of its
six values; a set's number is the mean over tiles. Identical tiles score exactly 1.

The shipped weights (`weights/featsim-resnet18`, see its MODEL_CARD.md) are a half-width
ResNet18 trained here on PCam; `FeatureSimilarity.load(path)` also takes a user's torchvision or
timm `resnet18` state dict (`.pth`/`.pt`/`.safetensors`, any width, `fc` ignored), e.g. ImageNet
weights downloaded elsewhere. Numbers from different weights are not comparable.

Deterministic: eval mode, fixed weights; an original and its decoded tile go through batches of
the same shape. torch is imported on first use. `metrics/similarity.py` scores it next to PSNR,
MS-SSIM and embedding similarity for compress, the codec benchmark and `eval downstream`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .. import zoo
from ..errors import EncoderError

DEPTHS = ("stem", "layer1", "layer2", "layer3", "layer4", "pooled")
FORMAT = zoo.FORMATS["featsim"].tag  # "slidepress-featsim/1", in config.json
IMAGENET_NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
WEIGHTS_DIR = zoo.shipped_path("featsim-resnet18")
BATCH = 16  # tiles per forward: ~50 MB of float maps per 256 px tile at half width

Tiles = Sequence[np.ndarray] | np.ndarray


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b` (float64): 1 for two zero
    rows, 0 for one; clipped to [-1, 1] against rounding."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    dot = np.einsum("ij,ij->i", a, b)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    out = np.where(na * nb > 0, dot / np.where(na * nb > 0, na * nb, 1.0), 0.0)
    out[(na == 0) & (nb == 0)] = 1.0
    same = np.all(a == b, axis=1)  # exactly 1, not 1 - 1 ulp
    out[same] = 1.0
    return np.clip(out, -1.0, 1.0)


def check_pairs(orig: Tiles, decoded: Tiles) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs of (H, W, 3) uint8 tiles of equal shape; tiles of a set may differ in size."""
    if len(orig) != len(decoded):
        raise ValueError(f"{len(orig)} original tiles but {len(decoded)} decoded ones")
    pairs = []
    for i, (a, b) in enumerate(zip(orig, decoded, strict=True)):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype != np.uint8 or b.dtype != np.uint8:
            raise ValueError(f"tile {i}: uint8 tiles needed, got {a.dtype} and {b.dtype}")
        if a.ndim != 3 or a.shape[2] != 3 or a.shape != b.shape:
            raise ValueError(f"tile {i}: (H, W, 3) tiles of equal shape needed, got "
                             f"{a.shape} and {b.shape}")  # fmt: skip
        pairs.append((a, b))
    return pairs


def shape_batches(shapes: Sequence[tuple[int, ...]], size: int) -> list[np.ndarray]:
    """Indices grouped by shape (in order of first appearance), `size` at most per group."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(shapes):
        groups.setdefault(tuple(s), []).append(i)
    return [
        np.asarray(idx[j : j + size]) for idx in groups.values() for j in range(0, len(idx), size)
    ]


@dataclass
class FeatureScores:
    """Per-tile cosine similarities, (N, 6) in DEPTHS order."""

    per_depth: np.ndarray
    depths: tuple[str, ...] = DEPTHS

    @property
    def mean(self) -> np.ndarray:
        """(N,): each tile's average over the six depths."""
        return self.per_depth.mean(axis=1) if len(self.per_depth) else np.zeros(0)

    def summary(self, prefix: str = "featsim") -> dict[str, float]:
        """Means over tiles: `{prefix}_{depth}` for each depth and `{prefix}_mean`."""
        if not len(self.per_depth):
            return {f"{prefix}_{d}": float("nan") for d in (*self.depths, "mean")}
        out = {
            f"{prefix}_{d}": float(v)
            for d, v in zip(self.depths, self.per_depth.mean(0), strict=True)
        }
        out[f"{prefix}_mean"] = float(self.mean.mean())
        return out


@dataclass
class Reference:
    """The original tiles' features, computed once and scored against many decodings."""

    shapes: list[tuple[int, ...]]
    batches: list[np.ndarray]
    features: list[list[np.ndarray]] = field(repr=False)  # per batch: six (B, D) float32


def _read_state(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict, config) from a weights folder, a safetensors file or a torch file."""
    import torch

    config: dict[str, Any] = {}
    if path.is_dir():
        cfg = path / "config.json"
        try:
            config = json.loads(cfg.read_text())
        except (OSError, ValueError) as e:
            raise EncoderError(f"{path}: not a feature-similarity weights folder ({e})") from None
        if config.get("format") != FORMAT:
            raise EncoderError(f"{cfg}: format {config.get('format')!r}, expected {FORMAT!r}")
        path = path / "model.safetensors"
    if not path.is_file():
        raise EncoderError(f"feature-similarity weights not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or not a weights file: one readable line
        raise EncoderError(f"{path}: cannot read weights ({e})") from None
    for key in ("state_dict", "model"):  # training checkpoints wrap the state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EncoderError(f"{path}: not a state dict of tensors")
    return _strip_prefix(state, path), config


def _strip_prefix(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """Drop a wrapper prefix (`module.`, `backbone.`, ...) in front of torchvision's names."""
    prefixes = sorted(k[: -len("conv1.weight")] for k in state if k.endswith("conv1.weight"))
    for prefix in sorted(prefixes, key=len):
        if f"{prefix}layer1.0.conv1.weight" in state:
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    raise EncoderError(f"{path}: not a resnet18 state dict (no conv1 / layer1 weights)")


def _build(state: dict[str, Any], path: Path, width: int | None):
    from .featnet import ResNet18, backbone_keys

    w = int(state["conv1.weight"].shape[0])
    if tuple(state["conv1.weight"].shape) != (w, 3, 7, 7) or (width is not None and w != width):
        raise EncoderError(f"{path}: conv1 {tuple(state['conv1.weight'].shape)} is not a "
                           f"resnet18 stem{f' of width {width}' if width else ''}")  # fmt: skip
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    want = backbone_keys(w)
    missing, unexpected = sorted(want - set(backbone)), sorted(set(backbone) - want)
    if missing or unexpected:
        raise EncoderError(
            f"{path}: not a resnet18 state dict (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]})"
        )
    model = ResNet18(w, num_classes=1)
    floats = {k: v.float() if v.is_floating_point() else v for k, v in backbone.items()}
    try:
        model.load_state_dict(floats, strict=False)
    except RuntimeError as e:  # a shape that does not fit the width
        raise EncoderError(f"{path}: weights do not fit a resnet18 of width {w} ({e})") from None
    return model.eval(), w


class FeatureSimilarity:
    """A loaded network: `score(orig, decoded)` -> FeatureScores."""

    def __init__(self, model: Any, *, name: str, width: int, normalization: dict, sha: str,
                 device: str):  # fmt: skip
        import torch

        self.model, self.name, self.width, self.device = model.to(device), name, width, device
        self.normalization = normalization
        self.weights_hash = sha
        self._mean = torch.tensor(normalization["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(normalization["std"], dtype=torch.float32).view(1, 3, 1, 1)

    @classmethod
    def load(
        cls,
        weights: str | Path | None = None,
        *,
        normalization: dict[str, list[float]] | None = None,
        device: str | None = None,
    ) -> FeatureSimilarity:
        """The shipped network (`weights=None`), a folder written by scripts/train_featsim.py,
        or a local resnet18 state dict file (normalised with ImageNet's mean/std unless
        `normalization` says otherwise). Raises EncoderError for anything else."""
        from ..encoders.torch_encoder import pick_device

        path = Path(weights) if weights is not None else WEIGHTS_DIR
        state, config = _read_state(path)
        model, width = _build(state, path, config.get("width"))
        norm = normalization or config.get("normalization") or IMAGENET_NORM
        name = config.get("name") or path.name
        sha = zoo.weights_sha256(path, zoo.FORMATS["featsim"])  # a folder's model or a file
        return cls(model, name=name, width=width, normalization=norm, sha=sha,
                   device=pick_device(device))  # fmt: skip

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "width": self.width, "depths": list(DEPTHS),
                "normalization": self.normalization, "weights_hash": self.weights_hash}  # fmt: skip

    def _features(self, tiles: list[np.ndarray]) -> list[np.ndarray]:
        """Six (B, D) float32 arrays for a list of same-shaped tiles."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(np.stack(tiles))).to(self.device)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            x = (x - self._mean.to(x.device)) / self._std.to(x.device)
            return [t.flatten(1).float().cpu().numpy() for t in self.model.taps(x)]

    def reference(self, orig: Tiles, batch_size: int = BATCH) -> Reference:
        """The originals' features, for scoring several decodings of them (a benchmark)."""
        tiles = [np.asarray(t) for t in orig]
        check_pairs(tiles, tiles)
        shapes = [t.shape for t in tiles]
        batches = shape_batches(shapes, batch_size)
        feats = [self._features([tiles[i] for i in idx]) for idx in batches]
        return Reference(shapes, batches, feats)

    def score(self, orig: Tiles | Reference, decoded: Tiles, batch_size: int = BATCH
              ) -> FeatureScores:  # fmt: skip
        """Cosine similarity per tile and depth of `orig` (tiles or a `reference`) and
        `decoded`: (N, H, W, 3) uint8 arrays or lists of (H, W, 3) tiles."""
        ref = orig if isinstance(orig, Reference) else None
        if ref is None:
            pairs = check_pairs(orig, decoded)  # type: ignore[arg-type]
        else:
            dec = [np.asarray(t) for t in decoded]
            if [t.shape for t in dec] != ref.shapes:
                raise ValueError("decoded tiles differ in number or shape from the reference")
            pairs = check_pairs(dec, dec)
        out = np.empty((len(pairs), len(DEPTHS)), np.float64)
        batches = ref.batches if ref else shape_batches([a.shape for a, _ in pairs], batch_size)
        for k, idx in enumerate(batches):
            fa = ref.features[k] if ref else self._features([pairs[i][0] for i in idx])
            fb = self._features([pairs[i][1] for i in idx])
            for d, (a, b) in enumerate(zip(fa, fb, strict=True)):
                out[idx, d] = cosine_rows(a, b)
        return FeatureScores(out)


@lru_cache(maxsize=2)
def shipped(device: str | None = None) -> FeatureSimilarity:
    """The shipped network, loaded once per process (and device)."""
    return FeatureSimilarity.load(None, device=device)
