"""`timm:MODEL@WEIGHTS`: a timm architecture with local weights (no hub access).

The classifier head is removed (num_classes=0), so the output is the pooled feature vector.
Weights go through timm's own loader via `pretrained_cfg_overlay=dict(file=...)`, which takes
.pth/.bin state dicts and .safetensors.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import EncoderError
from .base import Encoder, file_sha256
from .torch_encoder import TorchEncoder, read_sidecar


def load_timm(arg: str, device: str | None = None) -> Encoder:
    model_name, sep, weights = arg.partition("@")
    if not sep or not model_name or not weights:
        raise EncoderError(f"timm encoder needs MODEL@WEIGHTS_FILE, got {arg!r}")
    p = Path(weights)
    if not p.is_file():
        raise EncoderError(f"timm weights not found: {p}")
    import timm

    if not timm.is_model(model_name):
        raise EncoderError(f"timm has no model named {model_name!r}")
    try:
        model = timm.create_model(
            model_name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(p)}
        )
    except Exception as e:
        raise EncoderError(f"timm {model_name}: cannot load weights {p.name} ({e})") from None
    cfg = model.pretrained_cfg
    meta = read_sidecar(p)
    mean, std = meta.get("mean", cfg.get("mean")), meta.get("std", cfg.get("std"))
    size = meta.get("patch_size", cfg.get("input_size", (3, 224, 224))[-1])
    return TorchEncoder(
        model,
        name=f"timm:{model_name}",
        version=timm.__version__,
        patch_size=int(size),
        mpp=meta.get("mpp"),
        normalization={"mean": list(mean), "std": list(std)} if mean and std else None,
        weights_hash=file_sha256(p),
        device=device,
    )
