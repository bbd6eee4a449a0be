"""NIC encoders from a run folder (`nic:DIR`) and the weights shipped with slidepress (`nic-*`).

A run folder holds `config.json` (method config, patch size, mpp, normalisation, training
record) and `model.safetensors` (the method's weights; fp16 ones are widened on load). Loading
is offline and needs no class path: the method registry rebuilds the networks from the config.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import zoo
from ..errors import EncoderError
from .base import Encoder

FORMAT = zoo.FORMATS["nic-encoder"]
WEIGHTS_DIR = zoo.ROOT
# the shipped NIC encoders, from the zoo (listing them imports nothing heavy)
SHIPPED = tuple(w.name for w in zoo.shipped(fmt=FORMAT.name))


def read_run_config(folder: Path) -> dict:
    cfg_path = folder / "config.json"
    if not (cfg_path.is_file() and (folder / "model.safetensors").is_file()):
        raise EncoderError(
            f"{folder}: not a NIC encoder folder (needs config.json + model.safetensors)"
        )
    try:
        meta = json.loads(cfg_path.read_text())
        meta["config"]["method"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise EncoderError(f"{cfg_path}: not a slidepress NIC config ({e})") from None
    return meta


def load_method(folder: str | Path, device: str = "cpu"):
    """The full trained method (encoder + decoder/generator/heads), weights in float32."""
    from safetensors.torch import load_file

    from .nic import NICConfig, build_method

    folder = Path(folder)
    meta = read_run_config(folder)
    try:
        method = build_method(NICConfig.from_dict(meta["config"]))
        state = load_file(str(folder / "model.safetensors"))
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        missing, unexpected = method.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(method.training_only or ("\0",))]
        if missing or unexpected:
            raise ValueError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    except Exception as e:  # corrupt or mismatched weights: one readable line
        raise EncoderError(f"{folder}: cannot load NIC weights ({e})") from None
    return method.to(device).eval(), meta


def load_nic(folder: str | Path, name: str | None = None, device: str | None = None) -> Encoder:
    from .torch_encoder import TorchEncoder, pick_device

    folder = Path(folder)
    if not folder.is_dir():
        raise EncoderError(f"NIC encoder folder not found: {folder}")
    method, meta = load_method(folder, device=pick_device(device))
    enc = meta["encoder"]
    encoder = TorchEncoder(
        method.embedder(),
        name=name or f"nic-{meta['config']['method']}:{folder.name}",
        version=str(meta.get("version", "1")),
        patch_size=enc["patch_size"],
        mpp=enc["mpp"],
        normalization=enc["normalization"],
        weights_hash=zoo.weights_sha256(folder, FORMAT),
        device=device,
    )
    encoder.nic_method = method  # the whole model, for reconstructions / generated samples
    return encoder


def shipped_summary(folder: str) -> str:
    """One line for listings, from the folder's config.json (no torch)."""
    try:
        meta = json.loads((zoo.shipped_path(folder) / "config.json").read_text())
        enc = meta["encoder"]
        return (
            f"NIC {meta['config']['method']} encoder trained here, C={enc['dim']}, "
            f"{enc['patch_size']} px at {enc['mpp']} um/px (see its MODEL_CARD.md)"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "NIC encoder trained here (see its MODEL_CARD.md)"


def load_run(arg: str, device: str | None = None) -> Encoder:
    """`nic:DIR`: a run folder written by `slidepress train encoder`."""
    return load_nic(arg, device=device)


def load_shipped(folder: str | Path, device: str | None = None) -> Encoder:
    """`nic-*`: a run folder shipped with the package (the zoo's; named as the folder)."""
    name = Path(folder).name
    return load_nic(zoo.shipped_path(name), name, device=device)
