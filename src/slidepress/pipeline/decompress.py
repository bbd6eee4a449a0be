"""decompress_container: container -> standard tiled pyramidal TIFF that OpenSlide opens.

One TIFF page per container level (reduced-resolution pages flagged with SubfileType 1),
tiles in the container's tile size, resolution tags in pixels per centimetre so OpenSlide
and tiffslide report the container's mpp. Export is JPEG (default q95, what scanners and
viewers expect) or lossless deflate (`lossless=True`: pixels equal the container's decoded
tiles exactly). Tiles are decoded in a thread pool, a bounded window at a time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..bounds import check_workers
from ..errors import UsageError
from ..progress import ProgressStart
from ..store.atomic import atomic_path, check_output
from ..store.container import Container


def _level_tiles(
    c: Container, level: int, pool: ThreadPoolExecutor, advance: Callable[[int], None] | None
) -> Iterator[np.ndarray]:
    lv = c.levels[level]
    coords = ((r, col) for r in range(lv.rows) for col in range(lv.cols))  # lazy: may be 10^6
    window = max(1, min(64, (256 << 20) // (3 * c.tile**2)))  # decoded tiles held: <= 256 MB
    while chunk := list(islice(coords, window)):
        if c.codec.batched:  # one batch per window (a neural codec decodes them together)
            yield from c.read_tiles(level, chunk)
        else:
            yield from pool.map(lambda rc: c.read_tile(level, *rc), chunk)
        if advance:
            advance(len(chunk))


def decompress_container(
    container: str | Path,
    out: str | Path,
    *,
    compression: str = "jpeg",
    quality: int = 95,
    lossless: bool = False,
    workers: int = 2,
    overwrite: bool = False,
    progress_start: ProgressStart | None = None,
) -> Path:
    """A standard tiled pyramidal TIFF of the container's decoded tiles (JPEG q`quality` 4:4:4,
    or deflate with `lossless`): what OpenSlide and tiffslide open. `slidepress export`
    copies coded tiles instead where it can (pipeline/export.py)."""
    out = Path(out)
    container = Path(container)
    check_output(out, overwrite=overwrite, inputs=[container])
    check_workers(workers)
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise UsageError(f"{out.name}: decompress writes a pyramidal TIFF; name it .tiff")
    if not lossless and compression != "jpeg":
        raise UsageError(
            f"TIFF export supports --compression jpeg (OpenSlide reads it) or --lossless, "
            f"not {compression!r}"
        )
    if not lossless and not 1 <= quality <= 100:
        raise UsageError(f"JPEG quality must be within 1-100, got {quality}")
    if lossless:
        compression, args = "zlib", {"level": 6}
    else:
        compression, args = "jpeg", {"level": int(quality)}

    with Container(container) as c:
        total = sum(lv.rows * lv.cols for lv in c.levels)
        advance = progress_start(container.name, total) if progress_start else None
        export = {"compression": compression, **args}
        with atomic_path(out) as tmp, ThreadPoolExecutor(workers) as pool:
            write_tiff_levels(
                tmp, c, lambda level: _level_tiles(c, level, pool, advance), export,
                photometric="rgb", compression=compression, compressionargs=args,
                # 4:4:4: H&E's sharp colour edges lose ~13 dB to 4:2:0 chroma at q95
                subsampling=None if lossless else (1, 1), maxworkers=workers,
            )  # fmt: skip
    return out


def write_tiff_levels(
    path: Path,
    c: Container,
    tiles: Callable[[int], Iterator[Any]],
    export: dict[str, Any],
    **coding: Any,
) -> None:
    """One tiled TIFF page per container level (resolution tags in px/cm, level 0 first with
    a JSON description of where it came from): what OpenSlide and tiffslide open as a
    pyramid. `tiles(level)` yields the level's tiles row by row (arrays, or coded bytes that
    tifffile writes as they are); `coding`: photometric, compression and its arguments."""
    import tifffile

    description = json.dumps(
        {"slidepress": __version__, "container": c.path.name, "codec": c.manifest["codec"],
         "source": c.source_name, "export": export}
    )  # fmt: skip
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for lv in c.levels:
            res = 1e4 / lv.mpp  # pixels per centimetre
            tw.write(
                tiles(lv.index),
                shape=(lv.height, lv.width, 3),
                dtype=np.uint8,
                tile=(c.tile, c.tile),
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                subfiletype=1 if lv.index else 0,
                description=description if lv.index == 0 else None,
                software=f"slidepress {__version__}",
                metadata=None,
                **coding,
            )
