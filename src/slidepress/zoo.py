"""The weights zoo: every set of weights slidepress loads, by name (as CompressAI's `zoo`).

Shipped weights are folders under the package's `weights/`, declared below one line each, with
a MODEL_CARD.md; `shipped_path(name)` is the one place their path is built. The first declared
for a codec or encoder is its default (`used_by`, `default_path`); any other stays shipped so
that what was made with it still works, found by its hash (`by_sha256`: a container records the
hash of the weights it was coded with). A user's folder (a `slidepress train encoder` run, a
learned-codec export, an autoencoder bundle, a feature-similarity network) is described the
same way by `from_folder`, its format recognised by the files it holds, and `register` lists it
beside them (`slidepress weights FOLDER`). An entry knows its kind (encoder, codec, metric),
file format, size, SHA-256, loader ("module:attr", imported by `Weights.load`) and model card.

The weights hash. `sha256_files` is the one hash; `weights_sha256(path)` applies it to a file
(its bytes) or to a weights folder, whose format says which of its files count, in which
order, and whether each file's name goes in before its bytes:

    nic-encoder, featsim    model.safetensors
    learned-codec           decoder.npz, encoder.safetensors (bytes only, one after the other)
    autoencoder             model.safetensors (or a diffusers model's weight files, sorted),
                            quantizers.npz; each as name, NUL, bytes

These are the values outputs recorded before the zoo (grids' encoder `weights_hash`,
containers' `model.weights_sha256`, featsim's weights): tests/test_zoo.py pins them for the
shipped weights, so a container written before still decodes.

Imports nothing heavy and no other slidepress package: the encoders, codecs and metrics use it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .errors import UsageError
from .registry import Registry

ROOT = Path(__file__).resolve().parent / "weights"  # the shipped weights, one folder each
CARD = "MODEL_CARD.md"
KINDS = ("encoder", "codec", "metric")
DIFFUSERS_SUFFIXES = (".safetensors", ".bin", ".json")  # what a diffusers model's hash covers
_CHUNK = 8 << 20


def sha256_files(files: Sequence[str | Path], *, named: bool = False) -> str:
    """SHA-256 over the files' bytes in the order given; with `named`, each file's name and a
    NUL byte before its bytes."""
    h = hashlib.sha256()
    for f in map(Path, files):
        if named:
            h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(_CHUNK):
                h.update(block)
    return h.hexdigest()


def weights_sha256(path: str | Path, fmt: WeightsFormat | None = None) -> str:
    """The weights hash of a file (its bytes) or of a weights folder (its format's files;
    the format is recognised when not given)."""
    path = Path(path)
    if path.is_file():
        return sha256_files([path])
    fmt = fmt or detect_format(path)
    return sha256_files(fmt.files(path), named=fmt.named)


def diffusers_files(folder: str | Path) -> list[Path]:
    """The weight files of a diffusers model folder (`save_pretrained`), any depth, sorted."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in DIFFUSERS_SUFFIXES)


def _autoencoder_files(folder: Path) -> list[Path]:
    """Our AE's model.safetensors, or a diffusers model's files (model/ or a local `source`),
    then quantizers.npz."""
    meta = _read_json(folder / "pathae.json")
    if meta.get("kind") == "pathae":
        return [folder / "model.safetensors", folder / "quantizers.npz"]
    source = meta.get("source")
    src = Path(source) if source else folder / "model"
    if not src.is_dir():
        raise UsageError(f"{folder}: its model is {source!r}, not a local folder; its hash is "
                         "known once the codec loads it")  # fmt: skip
    return [*diffusers_files(src), folder / "quantizers.npz"]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class WeightsFormat:
    """A kind of weights folder: the files that make one, the files its hash covers."""

    name: str
    kind: str  # one of KINDS
    needs: tuple[str, ...]  # files a folder of this format holds (the first: its JSON)
    hashed: tuple[str, ...]  # files the hash covers, in order (unless `files_of` says)
    loader: str  # "module:attr" called with the folder
    tag: str | None = None  # the "format" its JSON declares, where it declares one
    named: bool = False  # file names go into the hash
    files_of: Callable[[Path], list[Path]] | None = None

    def matches(self, folder: Path) -> bool:
        if not all((folder / f).is_file() for f in self.needs):
            return False
        return self.tag is None or _read_json(folder / self.needs[0]).get("format") == self.tag

    def files(self, folder: str | Path) -> list[Path]:
        """The files the weights hash covers, in order."""
        folder = Path(folder)
        files = self.files_of(folder) if self.files_of else [folder / f for f in self.hashed]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UsageError(f"{folder}: not a {self.name} weights folder (no {missing[0]})")
        return files


# recognised in this order: the more specific first (nic runs declare no format tag)
FORMATS: dict[str, WeightsFormat] = {f.name: f for f in (
    WeightsFormat("autoencoder", "codec", ("pathae.json", "quantizers.npz"), (),
                  "slidepress.codecs.autoencoder.loading:load_bundle", "slidepress-pathae/1",
                  named=True, files_of=_autoencoder_files),
    WeightsFormat("learned-codec", "codec",
                  ("config.json", "decoder.npz", "encoder.safetensors"),
                  ("decoder.npz", "encoder.safetensors"),
                  "slidepress.codecs.learned.codec:load_model"),
    WeightsFormat("featsim", "metric", ("config.json", "model.safetensors"),
                  ("model.safetensors",), "slidepress.metrics.featsim:FeatureSimilarity.load",
                  "slidepress-featsim/1"),
    WeightsFormat("nic-encoder", "encoder", ("config.json", "model.safetensors"),
                  ("model.safetensors",), "slidepress.encoders.nic_weights:load_nic"),
)}  # fmt: skip


def detect_format(folder: str | Path) -> WeightsFormat:
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"weights folder not found: {folder}")
    for fmt in FORMATS.values():
        if fmt.matches(folder):
            return fmt
    known = "; ".join(f"{f.name}: {' + '.join(f.needs)}" + (f" ({f.tag})" if f.tag else "")
                      for f in FORMATS.values())  # fmt: skip
    raise UsageError(f"{folder}: not a weights folder slidepress knows ({known})")


@dataclass(frozen=True)
class Weights:
    """One set of weights: a folder of a known format, and how slidepress uses it."""

    name: str
    folder: Path
    format: WeightsFormat
    used_as: str | None = None  # its name in the registry of its kind (ENCODERS, CODECS...)
    loader: str | None = None  # "module:attr" called with the folder; default the format's
    shipped: bool = False

    @property
    def kind(self) -> str:
        return self.format.kind

    @property
    def card(self) -> Path | None:
        card = self.folder / CARD
        return card if card.is_file() else None

    def files(self) -> list[Path]:
        return self.format.files(self.folder)

    @cached_property
    def size(self) -> int:
        """Bytes of the files the hash covers (the weights; not logs, cards or previews)."""
        return sum(f.stat().st_size for f in self.files())

    @cached_property
    def sha256(self) -> str:
        return weights_sha256(self.folder, self.format)

    def load(self, **kwargs: Any) -> Any:
        """The loaded weights (an encoder, a codec model, a metric network)."""
        module, _, attr = (self.loader or self.format.loader).partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj(self.folder, **kwargs)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "format": self.format.name,
                "used_as": self.used_as, "folder": str(self.folder), "size": self.size,
                "sha256": self.sha256, "card": str(self.card) if self.card else None,
                "shipped": self.shipped}  # fmt: skip


WEIGHTS: Registry[Weights] = Registry("weights", UsageError)


def _ship(name: str, fmt: str, used_as: str, loader: str | None = None) -> None:
    w = Weights(name, ROOT / name, FORMATS[fmt], used_as, loader, shipped=True)
    WEIGHTS.add(name, w, summary=f"{w.kind} {used_as}")


# The first declared for a registry name is its default (`used_by`; the codec loads it). Weights
# declared after it stay shipped so that outputs made with them still decode: a container
# finds them by the hash it recorded (`by_sha256`, store/manifest.py).
_ship("codec-he-shallow-f32", "learned-codec", "learned")  # float32-exact decoder: the default
_ship("codec-he-shallow", "learned-codec", "learned")  # the same model, float64 decoder: kept
_ship("featsim-resnet18", "featsim", "featsim")
_ship("pathae-he-f8c8", "autoencoder", "pathae")
for _name in ("nic-bigan", "nic-contrastive", "nic-multitask", "nic-simclr", "nic-supervised",
              "nic-vae"):  # fmt: skip
    _ship(_name, "nic-encoder", _name, "slidepress.encoders.nic_weights:load_shipped")


def shipped_path(name: str) -> Path:
    """The folder of shipped weights `name` (UsageError listing the names if unknown)."""
    w = WEIGHTS.get(name)
    if not w.shipped:
        raise UsageError(f"weights {name!r} are not shipped with slidepress")
    return w.folder


def shipped(kind: str | None = None, fmt: str | None = None) -> list[Weights]:
    """The shipped weights (of one kind / format), in declaration order."""
    return [w for _, w in WEIGHTS.items() if w.shipped and kind in (None, w.kind)
            and fmt in (None, w.format.name)]  # fmt: skip


def used_by(kind: str, name: str) -> Weights | None:
    """The default weights of registry entry `name` of `kind` ("encoder", "codec"...), if any:
    the first declared for it."""
    return next((w for _, w in WEIGHTS.items() if w.kind == kind and w.used_as == name), None)


def default_path(kind: str, name: str) -> Path:
    """The folder of registry entry `name`'s default weights (where its code loads them)."""
    w = used_by(kind, name)
    if w is None:
        raise UsageError(f"no shipped weights are declared for {kind} {name!r}")
    return w.folder


def by_sha256(sha256: str, kind: str | None = None, used_as: str | None = None) -> Weights | None:
    """The weights (shipped, then registered) whose hash is `sha256`, if any: how an output
    that recorded a hash finds its weights. With `used_as`, only weights that registry entry
    loads: declared for it, or a registered folder of the format of those."""
    entries = [w for _, w in WEIGHTS.items() if kind in (None, w.kind)]
    if used_as is not None:
        formats = {w.format.name for w in entries if w.used_as == used_as}
        entries = [w for w in entries if w.used_as == used_as
                   or (w.used_as is None and w.format.name in formats)]  # fmt: skip
    for w in entries:
        try:
            if w.sha256 == sha256:
                return w
        except (UsageError, OSError):  # a registered folder since moved or emptied
            continue
    return None


def from_folder(folder: str | Path, name: str | None = None) -> Weights:
    """A user's weights folder, described like the shipped ones (its format recognised)."""
    folder = Path(folder).resolve()
    return Weights(name or folder.name, folder, detect_format(folder))


def register(folder: str | Path, name: str | None = None) -> Weights:
    """Add a user's weights folder to WEIGHTS (listed with the shipped ones)."""
    w = from_folder(folder, name)
    if w.name in WEIGHTS and WEIGHTS.get(w.name).shipped:
        raise UsageError(f"{w.name!r} names shipped weights; register {folder} under another "
                         "name")  # fmt: skip
    WEIGHTS.add(w.name, w, summary=f"{w.kind} (user: {w.folder})")
    return w


__all__ = [
    "FORMATS", "KINDS", "ROOT", "WEIGHTS", "Weights", "WeightsFormat", "by_sha256",
    "default_path", "detect_format", "diffusers_files", "from_folder", "register",
    "sha256_files", "shipped", "shipped_path", "used_by", "weights_sha256",
]  # fmt: skip
