"""Pictures for the web page of a compress job: the slide's thumbnail with its tissue mask,
and an original vs reconstruction crop side by side (decoded from the stored container)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..pipeline.items import SlideItem
from ..slide.tissue import detect_tissue
from ..store.container import Container
from ..viz import save_png, tissue_overlay

CROP = 512  # level-0 pixels shown side by side
GAP = 8


def _crop_origin(mask, downsample: float, width: int, height: int) -> tuple[int, int]:
    """Top-left of a CROP box centred on the tissue pixel nearest the tissue's centroid."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        cx, cy = width / 2, height / 2
    else:
        my, mx = ys.mean(), xs.mean()
        i = int(np.argmin((ys - my) ** 2 + (xs - mx) ** 2))
        cx, cy = (xs[i] + 0.5) * downsample, (ys[i] + 0.5) * downsample
    x = int(min(max(cx - CROP / 2, 0), max(width - CROP, 0)))
    y = int(min(max(cy - CROP / 2, 0), max(height - CROP, 0)))
    return x, y


def compress_previews(item: SlideItem, container: Path, out: Path) -> list[Path]:
    """`STEM.tissue.png` and `STEM.compare.png` (original | reconstruction) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    stem = container.stem
    with item.open() as reader, Container(container) as box:
        tissue = detect_tissue(reader, reader.require_mpp())
        lv = box.levels[0]
        w, h = min(CROP, lv.width), min(CROP, lv.height)
        scale = reader.info.dimensions[0] / lv.width  # > 1: stored at a coarser mpp
        x, y = _crop_origin(tissue.mask, tissue.downsample / scale, lv.width, lv.height)
        restored = box.read_region(x, y, w, h, 0)
        if scale == 1:
            original = reader.read_region((x, y), 0, (w, h))
        else:  # the nearest pyramid level, resampled to the container's grid
            from PIL import Image

            level = reader.best_level_for_downsample(scale)
            ds = reader.info.level_downsamples[level]
            src = reader.read_region((round(x * scale), round(y * scale)), level,
                                     (round(w * scale / ds), round(h * scale / ds)))  # fmt: skip
            original = np.asarray(Image.fromarray(src).resize((w, h), Image.LANCZOS))
    gap = np.full((h, GAP, 3), 255, np.uint8)
    pair = np.concatenate([original, gap, restored], axis=1)
    paths = [out / f"{stem}.tissue.png", out / f"{stem}.compare.png"]
    save_png(tissue_overlay(tissue.thumbnail, tissue.mask), paths[0])
    save_png(pair, paths[1])
    return paths
