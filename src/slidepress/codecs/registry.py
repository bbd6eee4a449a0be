"""Codec names -> classes. A new codec is one module with a `@register_codec` class."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import CodecError
from .base import Codec

CODECS: dict[str, type[Codec]] = {}


def register_codec(name: str) -> Callable[[type[Codec]], type[Codec]]:
    def deco(cls: type[Codec]) -> type[Codec]:
        cls.name = name
        CODECS[name] = cls
        return cls

    return deco


def get_codec(name: str, quality: float | None = None, **params: Any) -> Codec:
    if name not in CODECS:
        raise CodecError(f"unknown codec {name!r}; available: {', '.join(sorted(CODECS))}")
    return CODECS[name](quality, **params)
