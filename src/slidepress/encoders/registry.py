"""Encoder names -> factories. `name` for built-ins, `prefix:ARGUMENT` for loaders of files.

A new encoder is one module that calls `register_encoder` (or `register_loader` for a family
addressed by a path, like `torchscript:PATH`).
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import EncoderError
from .base import Encoder

ENCODERS: dict[str, Callable[..., Encoder]] = {}  # factory(**options)
LOADERS: dict[str, Callable[..., Encoder]] = {}  # factory(argument, **options)


def register_encoder(name: str) -> Callable:
    def deco(factory: Callable[[], Encoder]) -> Callable[[], Encoder]:
        ENCODERS[name] = factory
        return factory

    return deco


def register_loader(prefix: str) -> Callable:
    def deco(factory: Callable[[str], Encoder]) -> Callable[[str], Encoder]:
        LOADERS[prefix] = factory
        return factory

    return deco


def available() -> list[str]:
    return sorted(ENCODERS) + [f"{p}:..." for p in sorted(LOADERS)]


def get_encoder(spec: str, device: str | None = None) -> Encoder:
    """Build an encoder from `name` or `prefix:argument`; `device` applies to torch encoders."""
    if spec in ENCODERS:
        return ENCODERS[spec](device=device)
    prefix, sep, arg = spec.partition(":")
    if sep and prefix in LOADERS:
        if not arg:
            raise EncoderError(f"encoder {spec!r}: missing argument after '{prefix}:'")
        return LOADERS[prefix](arg, device=device)
    raise EncoderError(f"unknown encoder {spec!r}; available: {', '.join(available())}")
