"""PatchCamelyon patches for the mosaic slides: which files a cohort may use, and their codes.

A `PatchTable` lists the files of a PCam split (`<split>/{0,1}/*.jpg`, label 0 normal, 1
tumour), minus the files an encoder saw in training (`encoder_pcam_files` reproduces that
selection from the encoder's run config), so no mosaic shows a patch its encoder was fitted
on. `cached_embeddings` encodes each file once and keeps the codes on disk keyed by the
encoder and the file list; `synthetic.mosaic.assemble` turns them into grids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .mosaic import CELL_PX, PCAM_MPP


@dataclass
class PatchTable:
    """The patches a cohort may use: files, their labels (0 normal, 1 tumour) and, once
    encoded, their codes (one row per file)."""

    files: list[Path]
    labels: np.ndarray
    codes: np.ndarray | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def ids(self, label: int) -> np.ndarray:
        return np.flatnonzero(self.labels == label)


def pcam_table(
    split_dir: str | Path, exclude: set[Path] | None = None, limit_per_class: int | None = None
) -> PatchTable:
    """The PCam split folder (`<split>/{0,1}/*.jpg`) as a patch table, minus `exclude`
    (e.g. the patches an encoder was trained on), optionally a seeded subset per class."""
    from ..imagefolder import list_image_folder

    files, labels, classes = list_image_folder(split_dir)
    if classes != ["0", "1"]:
        raise ValueError(f"{split_dir}: expected class folders 0 and 1, found {classes}")
    excl = {Path(p).resolve() for p in (exclude or set())}
    keep = [i for i, f in enumerate(files) if Path(f).resolve() not in excl]
    files = [files[i] for i in keep]
    labels = labels[keep]
    if limit_per_class is not None:
        rng = np.random.default_rng(0)
        sel = np.sort(
            np.concatenate(
                [rng.permutation(np.flatnonzero(labels == k))[:limit_per_class] for k in (0, 1)]
            )
        )
        files, labels = [files[i] for i in sel], labels[sel]
    src = {
        "folder": str(split_dir),
        "n_excluded": len(excl),
        "n_normal": int((labels == 0).sum()),
        "n_tumour": int((labels == 1).sum()),
    }
    return PatchTable(files, labels, None, src)


def encoder_pcam_files(config: dict[str, Any], pcam_root: str | Path) -> dict[str, set[Path]]:
    """The PCam files a slidepress NIC encoder saw in training, per split ("train", "valid"),
    from its run config (`config.json`): `train encoder` takes `limit_per_class` images per
    class with `list_image_folder(..., seed=settings.seed)`, and the same call reproduces the
    selection. Empty sets when the config has no PCam task."""
    from ..imagefolder import list_image_folder

    out: dict[str, set[Path]] = {"train": set(), "valid": set()}
    task = (config.get("data") or {}).get("tasks", {}).get("pcam")
    if not task:
        return out
    seed = int((config.get("settings") or {}).get("seed", 0))
    for split, key in (("train", "train"), ("valid", "val")):
        rec = task.get(key)
        folder = Path(pcam_root) / split
        if not rec or not folder.is_dir():
            continue
        counts = list(rec.get("classes", {}).values())
        limit = max(counts) if counts else None
        files, _, _ = list_image_folder(folder, limit_per_class=limit, seed=seed)
        if len(files) != rec.get("n", len(files)):
            raise ValueError(f"cannot reproduce the encoder's {split} selection from {folder}")
        out[split] = {Path(f).resolve() for f in files}
    return out


def load_patches(
    files: Sequence[Path],
    encoder_mpp: float | None,
    patch_size: int | None,
    dataset_mpp: float = PCAM_MPP,
) -> np.ndarray:
    """(N, P, P, 3) uint8: each image brought to the encoder's resolution and centre-cropped
    to its patch size (`imagefolder.prepare_image`); encoders without a patch size (mean-rgb)
    get the same `CELL_PX` crop as the NIC encoders."""
    from ..imagefolder import prepare_image, read_rgb

    size = patch_size or CELL_PX
    out = np.empty((len(files), size, size, 3), np.uint8)
    for j, f in enumerate(files):
        out[j] = prepare_image(read_rgb(Path(f)), dataset_mpp, encoder_mpp, size)[0]
    return out


def embed_files(
    files: Sequence[Path],
    encoder: Any,
    *,
    batch: int = 256,
    dataset_mpp: float = PCAM_MPP,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(N, C) float32 codes of image files, read and encoded `batch` at a time."""
    feats = np.empty((len(files), encoder.dim), np.float32)
    for s in range(0, len(files), batch):
        chunk = files[s : s + batch]
        x = load_patches(chunk, encoder.mpp, encoder.patch_size, dataset_mpp)
        feats[s : s + len(chunk)] = encoder.encode(x)
        if progress:
            progress(len(chunk))
    return feats


def cached_embeddings(
    files: Sequence[Path],
    encoder: Any,
    cache_dir: str | Path,
    *,
    dataset_mpp: float = PCAM_MPP,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, bool]:
    """`embed_files` through a cache keyed by the encoder's description and the file list
    (names and sizes). Returns (codes, came_from_cache)."""
    key = {
        "encoder": encoder.describe(),
        "dataset_mpp": dataset_mpp,
        "files": [[str(f), Path(f).stat().st_size] for f in files],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = str(encoder.name).replace(":", "_").replace("/", "_")
    path = Path(cache_dir) / f"codes_{name}_{digest}.npy"
    if path.exists():
        feats = np.load(path)
        if feats.shape == (len(files), encoder.dim):
            return feats, True
    feats = embed_files(files, encoder, dataset_mpp=dataset_mpp, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, feats)
    tmp.replace(path)
    return feats, False
