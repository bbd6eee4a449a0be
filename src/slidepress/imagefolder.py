"""ImageFolder patch datasets (`root/<class>/<image>`) brought to an encoder's scale.

Shared by encoder training and probe evaluation, so both see patches prepared the same way.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}


def list_image_folder(
    root: str | Path, *, limit_per_class: int | None = None, seed: int = 0
) -> tuple[list[Path], np.ndarray, list[str]]:
    """Files and labels of an ImageFolder (`root/<class>/<image>`, classes sorted by name).

    With `limit_per_class`, a seeded random subset of each class (same files for every encoder,
    so that encoders are compared on identical patches).
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root}: folder not found")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UsageError(f"{root}: no class folders (expected {root}/<class>/<images>)")
    if limit_per_class is not None and limit_per_class < 1:
        raise UsageError(f"limit per class must be >= 1, got {limit_per_class}")
    files: list[Path] = []
    labels: list[int] = []
    for k, name in enumerate(classes):
        found = sorted(
            p
            for p in (root / name).iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not found:
            raise UsageError(f"{root / name}: class folder holds no images")
        if limit_per_class is not None and len(found) > limit_per_class:
            rng = np.random.default_rng([seed, k])
            keep = np.sort(rng.choice(len(found), limit_per_class, replace=False))
            found = [found[i] for i in keep]
        files.extend(found)
        labels.extend([k] * len(found))
    return files, np.asarray(labels, dtype=np.int64), classes


def prepare_image(
    image: np.ndarray, dataset_mpp: float, encoder_mpp: float | None, patch_size: int | None
) -> tuple[np.ndarray, bool]:
    """Bring one RGB patch to the encoder's resolution and input size.

    Resample (LANCZOS, antialiased when shrinking) from `dataset_mpp` to `encoder_mpp`, then
    centre-crop to `patch_size`. A patch smaller than `patch_size` after resampling is enlarged
    to it (the field of view is then smaller than the encoder was trained on); the second
    return value says so. `None` for either encoder attribute skips that step.
    """
    from PIL import Image

    upscaled = False
    h, w = image.shape[:2]
    pil: Any = None
    if encoder_mpp is not None:
        scale = dataset_mpp / encoder_mpp
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if (nh, nw) != (h, w):
            pil = Image.fromarray(image).resize((nw, nh), Image.Resampling.LANCZOS)
            h, w = nh, nw
    if patch_size is not None:
        if min(h, w) < patch_size:
            f = patch_size / min(h, w)
            nh, nw = max(patch_size, math.ceil(h * f)), max(patch_size, math.ceil(w * f))
            src = pil if pil is not None else Image.fromarray(image)
            pil = src.resize((nw, nh), Image.Resampling.LANCZOS)
            h, w = nh, nw
            upscaled = True
        if (h, w) != (patch_size, patch_size):
            top, left = (h - patch_size) // 2, (w - patch_size) // 2
            if pil is not None:
                pil = pil.crop((left, top, left + patch_size, top + patch_size))
            else:
                image = image[top : top + patch_size, left : left + patch_size]
    out = np.asarray(pil) if pil is not None else image
    return np.ascontiguousarray(out, dtype=np.uint8), upscaled


def read_rgb(path: Path) -> np.ndarray:
    """One patch as RGB; a size over `limits.max_image_pixels` is refused before decoding."""
    from .errors import SlideError
    from .slide.image_reader import open_image

    try:
        with open_image(Path(path)) as im:
            return np.asarray(im.convert("RGB"))
    except SlideError:
        raise
    except Exception as e:
        raise UsageError(f"{path}: cannot read image ({e})") from None
