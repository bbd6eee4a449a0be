"""Pictures people check results with: tissue overlay on the thumbnail, PCA-to-RGB of a grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from .store.atomic import atomic_path


def tissue_overlay(thumbnail: np.ndarray, mask: np.ndarray, max_side: int = 2048) -> np.ndarray:
    """Thumbnail (at most `max_side` px) with tissue tinted green and outlined in dark green."""
    scale = max(thumbnail.shape[:2]) / max_side
    if scale > 1:
        size = (round(thumbnail.shape[1] / scale), round(thumbnail.shape[0] / scale))
        thumbnail = np.asarray(Image.fromarray(thumbnail).resize(size, Image.Resampling.BOX))
    if mask.shape != thumbnail.shape[:2]:
        mask = (
            np.asarray(
                Image.fromarray(mask.astype(np.uint8) * 255).resize(
                    thumbnail.shape[1::-1], Image.Resampling.NEAREST
                )
            )
            > 0
        )
    out = thumbnail.copy()
    tinted = out[mask].astype(np.uint16) * 7 + np.array([40, 200, 60], np.uint16) * 3
    out[mask] = (tinted // 10).astype(np.uint8)
    edge = mask & ~ndimage.binary_erosion(mask, iterations=1)
    out[edge] = (0, 110, 0)
    return out


def pca_rgb(features: np.ndarray, mask: np.ndarray, min_side: int = 512) -> np.ndarray:
    """First three principal components of the kept cells as RGB; background white."""
    rows, cols, c = features.shape
    out = np.full((rows, cols, 3), 255, np.uint8)
    x = features[mask].astype(np.float64)
    if len(x) >= 2:
        x = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        proj = x @ vt[: min(3, c)].T
        if proj.shape[1] < 3:
            proj = np.pad(proj, ((0, 0), (0, 3 - proj.shape[1])))
        lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
        scaled = (proj - lo) / np.where(hi > lo, hi - lo, 1.0)
        out[mask] = (np.clip(scaled, 0, 1) * 255).astype(np.uint8)
    elif len(x) == 1:
        out[mask] = 128
    scale = max(1, int(np.ceil(min_side / max(rows, cols, 1))))
    return np.repeat(np.repeat(out, scale, axis=0), scale, axis=1)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", compress_level=3)  # previews: fast
    return path


def save_patch_rows(panels: dict[str, Any], path: str | Path) -> Path:
    """One row of patches per panel (e.g. real / reconstructed / generated), tensors in [-1, 1]
    shaped (N, 3, P, P); rows of different P are left-aligned on white."""
    rows = []
    for t in panels.values():
        a = ((t.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte()
        rows.append(np.concatenate(list(a.permute(0, 2, 3, 1).numpy()), axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return save_png(np.concatenate(rows), path)


def heatmap_overlay(
    background: np.ndarray, heat: np.ndarray, mask: np.ndarray, alpha: float = 0.55
) -> np.ndarray:
    """`heat` (rows, cols) in [0, 1] coloured (matplotlib 'jet') over `background`, which
    covers exactly the grid's extent; cells outside `mask` show the background only."""
    from matplotlib import colormaps

    h, w = background.shape[:2]
    rows, cols = heat.shape
    # nearest cell for every background pixel: cells stay square-edged, as the grid is
    ry = np.minimum((np.arange(h) * rows) // h, rows - 1)
    rx = np.minimum((np.arange(w) * cols) // w, cols - 1)
    cell_heat = heat[ry[:, None], rx[None, :]]
    cell_mask = mask[ry[:, None], rx[None, :]]
    colour = (colormaps["jet"](cell_heat)[..., :3] * 255).astype(np.float32)
    out = background.astype(np.float32)
    out[cell_mask] = (1 - alpha) * out[cell_mask] + alpha * colour[cell_mask]
    return out.round().astype(np.uint8)
