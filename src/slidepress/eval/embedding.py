"""Labelled patches -> frozen-encoder features: the first step of the probe protocol.

Each patch is brought to the encoder's mpp and patch size first (`imagefolder.prepare_image`),
so the encoder sees tissue at the scale it was trained on.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..encoders import Encoder
from ..errors import EncoderError, UsageError
from ..imagefolder import list_image_folder, prepare_image, read_rgb
from ..progress import ProgressStart


class ResampleWarning(UserWarning):
    """A dataset's patches had to be enlarged to reach the encoder's input size."""


def _encode(encoder: Encoder, batch: list[np.ndarray]) -> np.ndarray:
    """Encode a list of patches, grouping equal shapes (encoders taking any size)."""
    out: list[np.ndarray | None] = [None] * len(batch)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(batch):
        groups.setdefault(a.shape, []).append(i)
    for idx in groups.values():
        feats = np.asarray(encoder.encode(np.stack([batch[i] for i in idx])))
        if feats.ndim != 2 or feats.shape[0] != len(idx):
            raise EncoderError(
                f"encoder {encoder.name}: returned shape {feats.shape} for {len(idx)} patches"
            )
        for j, i in enumerate(idx):
            out[i] = feats[j]
    return np.stack(out).astype(np.float32)  # type: ignore[arg-type]


def embed_folder(
    encoder: Encoder,
    root: str | Path,
    dataset_mpp: float,
    *,
    limit_per_class: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    progress: ProgressStart | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Embed an ImageFolder with a frozen encoder -> (features (N, C), labels (N,), classes).

    Warns once (ResampleWarning) when patches had to be enlarged to the encoder's input, since
    the encoder then sees a smaller field of view than it expects.
    """
    if not dataset_mpp > 0:
        raise UsageError(f"dataset mpp must be > 0, got {dataset_mpp}")
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    files, labels, classes = list_image_folder(root, limit_per_class=limit_per_class, seed=seed)
    advance = progress(f"{encoder.name} {Path(root).name}", len(files)) if progress else None
    feats: list[np.ndarray] = []
    n_up = 0
    first: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    for s in range(0, len(files), batch_size):
        batch = []
        for p in files[s : s + batch_size]:
            raw = read_rgb(p)
            img, up = prepare_image(raw, dataset_mpp, encoder.mpp, encoder.patch_size)
            n_up += up
            if up and first is None:
                first = (raw.shape[:2], img.shape[:2])
            batch.append(img)
        feats.append(_encode(encoder, batch))
        if advance:
            advance(len(batch))
    x = np.concatenate(feats)
    if not np.isfinite(x).all():
        raise EncoderError(f"encoder {encoder.name}: non-finite features on {root}")
    if n_up and first is not None:
        warnings.warn(
            f"{encoder.name} on {root}: {n_up}/{len(files)} patches of {first[0][1]}x"
            f"{first[0][0]} px at {dataset_mpp} um/px are smaller than the encoder's "
            f"{encoder.patch_size} px at {encoder.mpp} um/px; they were enlarged to it "
            "(smaller field of view than the encoder expects)",
            ResampleWarning,
            stacklevel=2,
        )
    return x, labels, classes
