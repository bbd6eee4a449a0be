"""One registry type for everything that is chosen by name: readers, encoders, codecs, grid
formats, NIC training methods, slide-level models and tasks.

Entries are usually declared *lazily* in their package's `__init__.py`, one line each:

    CODECS.add("jpeg", "slidepress.codecs.conventional:Jpeg", summary="libjpeg-turbo ...")

so `--help`, shell completion and error messages can list the names without importing the
module behind each (torch, imagecodecs, OpenSlide). The module is imported when the entry is
first used. Plugins and tests may also register an object directly with the decorator
`@CODECS.register("mine")`. An unknown name raises the registry's own project error (exit 2
from the CLI) listing the valid names. Modelled on CompressAI's `compressai/registry` (a
decorator per kind) and TRIDENT's explicit name -> class tables (one line per entry).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import SlidepressError, UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    name: str
    target: Any  # "package.module:attr" (lazy), "package.module" (the module), or the object
    suffixes: tuple[str, ...] = ()  # file suffixes the entry handles (grid formats)
    summary: str = ""  # one line for help texts, readable without importing the target
    options: Mapping[str, Any] = field(default_factory=dict)  # bound keyword arguments

    @property
    def lazy(self) -> bool:
        return isinstance(self.target, str)


class Registry(Generic[T]):
    """name -> entry, in registration order (which is also the order of automatic choice,
    e.g. for readers)."""

    def __init__(
        self, kind: str, error: type[SlidepressError] = UsageError, name_attr: str | None = None
    ):
        self.kind = kind  # "codec", "reader", ...: used in messages
        self.error = error
        self.name_attr = name_attr  # set this attribute of a loaded class to its entry's name
        self._entries: dict[str, Entry] = {}
        self._loaded: dict[str, Any] = {}

    # -- declaring ---------------------------------------------------------------------------
    def add(
        self,
        name: str,
        target: Any,
        *,
        suffixes: tuple[str, ...] = (),
        summary: str = "",
        **options: Any,
    ) -> None:
        """Declare `name`; `target` is "module:attr", "module" or the object itself."""
        self._entries[name] = Entry(name, target, tuple(suffixes), summary, options)
        self._loaded.pop(name, None)

    def register(
        self, name: str, *, suffixes: tuple[str, ...] = (), summary: str = ""
    ) -> Callable[[T], T]:
        """Decorator form of `add` for an object defined right here."""

        def deco(obj: T) -> T:
            self.add(name, obj, suffixes=suffixes, summary=summary or _first_line(obj))
            return obj

        return deco

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)
        self._loaded.pop(name, None)

    # -- looking up (no import) ----------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise self.unknown(name) from None

    def unknown(self, name: str) -> SlidepressError:
        return self.error(f"unknown {self.kind} {name!r}; choose from {', '.join(self)}")

    def for_suffix(self, suffix: str) -> str | None:
        suffix = suffix.lower()
        return next((n for n, e in self._entries.items() if suffix in e.suffixes), None)

    def suffixes(self) -> list[str]:
        return [s for e in self._entries.values() for s in e.suffixes]

    # -- loading ---------------------------------------------------------------------------------
    def get(self, name: str) -> T:
        """The entry's object (class, factory or module), importing it on first use."""
        if name in self._loaded:
            return self._loaded[name]
        e = self.entry(name)
        obj = _resolve(e.target) if e.lazy else e.target
        if self.name_attr and isinstance(obj, type):
            setattr(obj, self.name_attr, name)
        self._loaded[name] = obj
        return obj

    __getitem__ = get

    def items(self) -> list[tuple[str, T]]:
        """Every entry with its object (imports them all)."""
        return [(n, self.get(n)) for n in self]


def _resolve(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


def _first_line(obj: Any) -> str:
    doc = getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
