"""`torchscript:PATH`: any TorchScript module exported by the user, loaded offline.

Metadata (patch_size, mpp, mean/std, name, version) comes from an optional sidecar JSON
(`PATH.json`); without it the patch is fed as given, scaled to [0, 1].
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ..errors import EncoderError
from .base import Encoder, file_sha256
from .torch_encoder import TorchEncoder, read_sidecar


def load_torchscript(path: str, device: str | None = None) -> Encoder:
    p = Path(path)
    if not p.is_file():
        raise EncoderError(f"torchscript weights not found: {p}")
    import torch

    try:
        with warnings.catch_warnings():  # torch 2.14 flags jit.load as deprecated; still works
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(p), map_location="cpu")
    except Exception as e:
        raise EncoderError(f"{p.name}: not a loadable TorchScript file ({e})") from None
    meta = read_sidecar(p)
    norm = None
    if "mean" in meta and "std" in meta:
        norm = {"mean": meta["mean"], "std": meta["std"]}
    return TorchEncoder(
        module,
        name=meta.get("name", f"torchscript:{p.name}"),
        version=str(meta.get("version", "1")),
        patch_size=meta.get("patch_size"),
        mpp=meta.get("mpp"),
        normalization=norm,
        weights_hash=file_sha256(p),
        device=device,
    )
