"""Name -> reader class. A new backend is one module that decorates its class."""

from __future__ import annotations

from collections.abc import Callable

from .base import SlideReader

READERS: dict[str, type[SlideReader]] = {}


def register_reader(name: str) -> Callable[[type[SlideReader]], type[SlideReader]]:
    def deco(cls: type[SlideReader]) -> type[SlideReader]:
        cls.name = name
        READERS[name] = cls
        return cls

    return deco
