from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..grid import EmbeddingGrid


@dataclass(frozen=True)
class GridFormat:
    name: str
    suffixes: tuple[str, ...]
    write: Callable[..., None]
    read: Callable[[Path], EmbeddingGrid]


FORMATS: dict[str, GridFormat] = {}


def register_format(name: str, suffixes: tuple[str, ...], write: Callable, read: Callable) -> None:
    FORMATS[name] = GridFormat(name, suffixes, write, read)
