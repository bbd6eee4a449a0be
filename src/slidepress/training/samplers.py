"""Random crops of real H&E for the codec families: images from folders (PCam, Kather: any
folder of images) and slides read at level 0, mixed with weights, flipped and turned.

What is held out for the benchmarks (the lossless shared tiles, one slide) is simply not
passed here. `he_mix` is the mix the shipped learned codec and PathAE were trained on.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..imagefolder import IMAGE_SUFFIXES, read_rgb

CROP = 96


def load_folder_images(folder: Path, limit: int | None = None, seed: int = 0) -> list[np.ndarray]:
    """Every image under `folder` (recursively) as RGB uint8, at least CROP px per side; with
    `limit`, a seeded random sample of the files."""
    files = sorted(
        p
        for p in Path(folder).rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if limit is not None and len(files) > limit:
        files = random.Random(seed).sample(files, limit)
    images = (read_rgb(f) for f in files)
    return [a for a in images if min(a.shape[:2]) >= CROP]


def load_slide_level0(path: Path, max_side: int = 8192) -> np.ndarray:
    """A slide's level 0 (or its top-left max_side square) as one RGB array."""
    from ..slide import open_slide

    with open_slide(path) as r:
        w, h = r.info.dimensions
        w, h = min(w, max_side), min(h, max_side)
        return r.read_region((0, 0), 0, (w, h))


class CropSampler:
    """Random CROP x CROP crops, random flips / quarter turns, from weighted image pools.

    Crops that are almost all glass are re-drawn (up to a few times): the codec should spend
    its training on tissue, which is what containers store. `rng` is the only randomness
    (a trainer lists it among its generators, so a resumed run draws the same crops)."""

    def __init__(self, pools: list[tuple[list[np.ndarray], float]], seed: int = 0):
        self.pools = [(imgs, w) for imgs, w in pools if imgs]
        total = sum(w for _, w in self.pools)
        self.weights = [w / total for _, w in self.pools]
        self.rng = np.random.default_rng(seed)

    def crop(self) -> np.ndarray:
        imgs = self.pools[self.rng.choice(len(self.pools), p=self.weights)][0]
        for _ in range(4):
            a = imgs[self.rng.integers(len(imgs))]
            y = self.rng.integers(0, a.shape[0] - CROP + 1)
            x = self.rng.integers(0, a.shape[1] - CROP + 1)
            c = a[y : y + CROP, x : x + CROP]
            if c.min(axis=2).mean() < 215:  # some tissue in it
                break
        c = np.rot90(c, self.rng.integers(4))
        if self.rng.integers(2):
            c = c[:, ::-1]
        return np.ascontiguousarray(c)

    def batch(self, n: int) -> torch.Tensor:
        """(n, 3, CROP, CROP) float in [0, 1]."""
        b = np.stack([self.crop() for _ in range(n)])
        return torch.from_numpy(b).permute(0, 3, 1, 2).float().div_(255.0)


def he_mix(
    shared: Path,
    *,
    pcam_limit: int,
    seed: int = 0,
    files_seed: int = 0,
    val_crops: int = 96,
    log: Callable[[str], None] = print,
) -> tuple[CropSampler, torch.Tensor]:
    """The shared data's training mix (PCam train 55 %, CMU-1 level 0 35 %, Kather 2016 10 %;
    `pcam_limit` PCam files drawn with `files_seed`) and `val_crops` fixed validation crops
    (PCam valid + CMU-1)."""
    pcam = load_folder_images(shared / "patches" / "pcam" / "train", pcam_limit, files_seed)
    kather = load_folder_images(shared / "patches" / "kather2016")
    slide = [load_slide_level0(shared / "slides" / "CMU-1-Small-Region.svs")]
    log(f"data: {len(pcam)} PCam, {len(kather)} Kather, CMU-1 level 0 {slide[0].shape}")
    sampler = CropSampler([(pcam, 0.55), (slide, 0.35), (kather, 0.10)], seed=seed)
    val_pcam = load_folder_images(shared / "patches" / "pcam" / "valid", 64, 1)
    val = CropSampler([(val_pcam, 0.5), (slide, 0.5)], seed=123).batch(val_crops)
    return sampler, val
