"""Shared machinery for PyTorch encoders: normalise, resize, batch forward, flatten.

torch is imported lazily so `slidepress --help` and mean-rgb runs never pay for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EncoderError
from .base import Encoder
from .memory import keep_freed_memory


def pick_device(device: str | None = None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def read_sidecar(weights: Path) -> dict[str, Any]:
    """Optional JSON next to the weights (`model.pt.json` or `model.json`) with metadata."""
    for cand in (weights.with_name(weights.name + ".json"), weights.with_suffix(".json")):
        if cand.is_file():
            try:
                return json.loads(cand.read_text())
            except json.JSONDecodeError as e:
                raise EncoderError(f"{cand.name}: invalid JSON ({e})") from None
    return {}


class TorchEncoder(Encoder):
    """Wraps an `nn.Module` whose forward maps (N, 3, P, P) float to (N, C) (or (N, C, ...))."""

    def __init__(
        self,
        module: Any,
        *,
        name: str,
        version: str,
        patch_size: int | None,
        mpp: float | None,
        normalization: dict[str, Any] | None,
        weights_hash: str | None,
        device: str | None = None,
    ):
        import torch

        self.device = pick_device(device)
        if str(self.device) == "cpu":
            keep_freed_memory()  # +50-70 % patches/s on CPU: see encoders/memory.py
        self.module = module.to(self.device).eval()
        self.name, self.version = name, version
        self.patch_size, self.mpp = patch_size, mpp
        self.normalization = normalization
        self.weights_hash = weights_hash
        norm = normalization or {"mean": [0.0] * 3, "std": [1.0] * 3}
        self._mean = torch.tensor(norm["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(norm["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self._mean, self._std = self._mean.to(self.device), self._std.to(self.device)
        probe = np.zeros((1, patch_size or 64, patch_size or 64, 3), np.uint8)
        try:
            self.dim = int(self.encode(probe).shape[1])
        except Exception as e:
            raise EncoderError(f"encoder {name}: forward on a test patch failed ({e})") from None

    def encode(self, patches: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(patches)).to(self.device)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            if self.patch_size and x.shape[-1] != self.patch_size:
                size = (self.patch_size, self.patch_size)
                x = F.interpolate(x, size=size, mode="bilinear", antialias=True)
            x = (x - self._mean) / self._std
            y = self.module(x)
            if isinstance(y, (tuple, list)):
                y = y[0]
            if y.ndim > 2:
                y = y.flatten(1)
            return y.float().cpu().numpy()
