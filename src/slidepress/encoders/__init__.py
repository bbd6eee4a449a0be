"""Patch encoders behind one interface; `get_encoder("name")` or `get_encoder("prefix:arg")`.

Two registries: ENCODERS (ready-made names: `mean-rgb`, the shipped `nic-*`) and LOADERS
(families addressed by a file: `torchscript:PATH`, `timm:MODEL@WEIGHTS`, `nic:DIR`). Entries are
lazy, so listing them (help, errors) imports no torch. A new encoder is one module plus one
`ENCODERS.add(...)` (or `LOADERS.add(...)`) line here.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import EncoderError
from ..registry import Registry
from .base import Encoder, file_sha256
from .nic_weights import SHIPPED, shipped_summary

ENCODERS: Registry[Callable[..., Encoder]] = Registry("encoder", EncoderError)
LOADERS: Registry[Callable[..., Encoder]] = Registry("encoder loader", EncoderError)

ENCODERS.add(
    "mean-rgb", "slidepress.encoders.mean_rgb:mean_rgb", summary="mean of the patch pixels, C=3"
)
for _name in SHIPPED:  # one folder each under weights/
    ENCODERS.add(
        _name,
        "slidepress.encoders.nic_weights:load_shipped",
        summary=shipped_summary(_name),
        folder=_name,
    )

LOADERS.add(
    "torchscript",
    "slidepress.encoders.torchscript:load_torchscript",
    summary="torchscript:PATH - a TorchScript module (N,3,P,P) -> (N,C), optional PATH.json",
)
LOADERS.add(
    "timm",
    "slidepress.encoders.timm_encoder:load_timm",
    summary="timm:MODEL@WEIGHTS - a timm architecture with a local state dict",
)
LOADERS.add(
    "nic",
    "slidepress.encoders.nic_weights:load_run",
    summary="nic:DIR - a run folder written by `slidepress train encoder`",
)


def available() -> list[str]:
    return ENCODERS.names() + [f"{p}:..." for p in LOADERS]


def check_spec(spec: str) -> None:
    """Fail fast on a name that no registry knows (before torch is imported)."""
    if spec in ENCODERS:
        return
    prefix, sep, arg = spec.partition(":")
    if sep and prefix in LOADERS:
        if not arg:
            raise EncoderError(f"encoder {spec!r}: missing argument after '{prefix}:'")
        return
    raise EncoderError(f"unknown encoder {spec!r}; choose from {', '.join(available())}")


def get_encoder(spec: str, device: str | None = None) -> Encoder:
    """Build an encoder from `name` or `prefix:argument`; `device` applies to torch encoders."""
    check_spec(spec)
    if spec in ENCODERS:
        return ENCODERS.get(spec)(device=device, **ENCODERS.entry(spec).options)
    prefix, _, arg = spec.partition(":")
    return LOADERS.get(prefix)(arg, device=device)


__all__ = [
    "ENCODERS",
    "LOADERS",
    "Encoder",
    "available",
    "check_spec",
    "file_sha256",
    "get_encoder",
]
