"""`slidepress weights`: the weights zoo (shipped weights, and a user's folders) with kind, size,
SHA-256 and model card; the weights note that `encoders` and `codecs` add to their entries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .. import zoo
from .common import guarded

USE = {"encoder": "--encoder {}", "codec": "--codec {}", "metric": "{} metric"}


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def weights_note(kind: str, name: str) -> str:
    """` [weights NAME, SIZE, sha256 SHORT]` for a registry entry with shipped weights (no
    NAME where it is the entry's), else ""."""
    w = zoo.used_by(kind, name)
    if w is None:
        return ""
    named = "" if w.name == name else f"{w.name}, "
    return f" [weights {named}{_mb(w.size)}, sha256 {w.sha256[:12]}]"


def list_weights(
    folders: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Your weights folders to list with the shipped ones (a NIC run, a "
            "learned-codec export, an autoencoder bundle, a featsim network)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON list, full hashes.")] = False,
) -> None:
    """List weights: shipped and given folders, with kind, use, size, SHA-256 and model card.

    The SHA-256 is the one grids and containers record (containers refuse other weights)."""

    def body() -> None:
        entries = [*zoo.shipped(), *(zoo.from_folder(f) for f in folders or [])]
        if as_json:
            typer.echo(json.dumps([w.describe() for w in entries], indent=1))
            return
        rows = [("name", "kind", "use", "size", "sha256", "model card")] + [
            (w.name, w.kind, _use(w), _mb(w.size), w.sha256[:12], str(w.card or "-"))
            for w in entries
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for r in rows:
            typer.echo("  ".join([*(c.ljust(n) for c, n in zip(r, widths, strict=False)), r[5]]))

    guarded(body)


def _use(w: zoo.Weights) -> str:
    """How a listed folder is used; a second folder for one registry entry only decodes what
    it coded (found by the hash the output recorded)."""
    if not w.used_as:
        return f"{w.format.name} folder"
    use = USE[w.kind].format(w.used_as)
    default = zoo.used_by(w.kind, w.used_as)
    return use if default is None or default.name == w.name else f"{use} (decodes its outputs)"
