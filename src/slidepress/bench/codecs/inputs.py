"""Benchmark inputs reduced to the tiles every codec codes.

An image (PNG, JPEG, ...) is cut into non-overlapping `tile` px tiles from its top-left, partial
ones dropped (an image smaller than one tile is used whole); a slide gives tissue tiles (tissue
fraction >= 0.5) of its level-0 grid. Either is capped at `max_tiles_per_input`, drawn with a
fixed seed, so reruns and other codecs see the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import SlideError, TissueError, UsageError
from ...metrics import bits_per_pixel

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"}
TISSUE_THRESHOLD = 0.5  # as `slidepress encode`: a tile is tissue if at least half of it is


@dataclass
class BenchInput:
    """One input reduced to the tiles the benchmark codes."""

    name: str
    path: Path
    kind: str  # "image" or "slide"
    tiles: np.ndarray  # (N, h, w, 3) uint8
    source_bpp: float  # the input file's own bits per level-0 pixel
    note: str
    mpp: float | None = None  # um/px of the tiles (slides; images do not say)

    def describe(self) -> dict[str, Any]:
        n, h, w = self.tiles.shape[:3]
        return {
            "name": self.name, "path": str(self.path), "kind": self.kind, "n_tiles": n,
            "tile_h": h, "tile_w": w, "source_bpp": self.source_bpp, "note": self.note,
            "mpp": self.mpp,
        }  # fmt: skip


def _source_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _pick(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= k else np.sort(rng.choice(n, size=k, replace=False))


def _load_image(path: Path, tile: int, max_tiles: int, seed: int) -> BenchInput:
    from ...slide.image_reader import load_image_rgb

    pixels, _ = load_image_rgb(path)  # bounded by limits.max_image_pixels before decoding
    h, w = pixels.shape[:2]
    ys, xs = range(0, h - tile + 1, tile), range(0, w - tile + 1, tile)
    if not len(ys) or not len(xs):
        tiles, note = pixels[None], f"whole image {w}x{h} (smaller than one {tile} px tile)"
    else:
        origins = [(y, x) for y in ys for x in xs]
        chosen = _pick(len(origins), max_tiles, np.random.default_rng(seed))
        tiles = np.stack(
            [pixels[y : y + tile, x : x + tile] for y, x in (origins[i] for i in chosen)]
        )
        note = f"{len(chosen)} of {len(origins)} full tiles of a {w}x{h} image"
        if len(chosen) < len(origins):
            note += f" (seed {seed})"
    bpp = bits_per_pixel(_source_bytes(path), w * h)
    return BenchInput(path.name, path, "image", np.ascontiguousarray(tiles), bpp, note)


def _load_slide(
    path: Path, tile: int, max_tiles: int, seed: int, mpp_override: float | None
) -> BenchInput:
    from ...slide import open_slide
    from ...slide.tissue import detect_tissue
    from ...tiling import GridSpec, plan_grid

    with open_slide(path, mpp_override=mpp_override) as reader:
        mpp = reader.require_mpp()
        grid = plan_grid(reader, mpp, GridSpec(tile, tile, mpp))  # level 0, no resampling
        w0, h0 = reader.info.dimensions
        if grid.rows * grid.cols == 0:
            raise SlideError(f"{path.name}: {w0}x{h0} is smaller than one {tile} px tile")
        frac = detect_tissue(reader, mpp).fraction_in_boxes(grid.boxes())
        cells = np.flatnonzero(frac >= TISSUE_THRESHOLD)
        if not len(cells):
            raise TissueError(f"{path.name}: no {tile} px tile is at least half tissue")
        chosen = cells[_pick(len(cells), max_tiles, np.random.default_rng(seed))]
        tiles = np.stack(
            [
                grid.read_block(reader, r, r + 1, c, c + 1)
                for r, c in (divmod(int(i), grid.cols) for i in chosen)
            ]
        )
    note = f"{len(chosen)} of {len(cells)} tissue tiles at level 0, {mpp:.4g} um/px"
    if len(chosen) < len(cells):
        note += f" (seed {seed})"
    bpp = bits_per_pixel(_source_bytes(path), w0 * h0)  # whole file: all levels + label/macro
    return BenchInput(path.name, path, "slide", tiles, bpp, note, mpp)


def load_inputs(
    inputs: Sequence[Path],
    tile: int = 256,
    max_tiles_per_input: int = 64,
    seed: int = 0,
    mpp_override: float | None = None,
) -> list[BenchInput]:
    """Tiles of every input: images are cut into tiles, slides give tissue tiles."""
    out: list[BenchInput] = []
    seen: dict[str, int] = {}
    for p in map(Path, inputs):
        if not p.exists():
            raise UsageError(f"{p}: no such file or folder")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            inp = _load_image(p, tile, max_tiles_per_input, seed)
        else:
            inp = _load_slide(p, tile, max_tiles_per_input, seed, mpp_override)
        seen[inp.name] = seen.get(inp.name, 0) + 1
        if seen[inp.name] > 1:  # same file name in two folders
            inp.name = f"{inp.name} ({seen[inp.name]})"
        out.append(inp)
    return out
