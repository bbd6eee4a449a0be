"""Random crops of real H&E for the codec families: images from folders (PCam, Kather: any
folder of images) and slides read at level 0 (and 2x / 4x below it), mixed with weights,
flipped and turned, optionally stain-jittered.

What is held out for the benchmarks (the lossless shared tiles, one slide) is simply not
passed here. `he_mix` is the mix the shipped learned codec and PathAE were trained on (kept as
it was: same files, same draws); `he_all` is every H&E pixel of the shared data that is not
held out, at several resolutions, with mild HED stain jitter (issue 23's long codec run).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..imagefolder import IMAGE_SUFFIXES, read_rgb

CROP = 96
# the shared data (../shared/data beside a checkout, or $SLIDEPRESS_SHARED_DATA): training
# runs read it from here
SHARED = Path(os.environ.get("SLIDEPRESS_SHARED_DATA", Path(__file__).resolve().parents[4]
                         / "shared" / "data"))  # fmt: skip


def load_folder_images(
    folder: Path, limit: int | None = None, seed: int = 0, exclude: frozenset[str] = frozenset()
) -> list[np.ndarray]:
    """Every image under `folder` (recursively) as RGB uint8, at least CROP px per side, but
    those named in `exclude` (as "parent/name", e.g. PCam's "1/patch0029612.jpg"); with
    `limit`, a seeded random sample of the files."""
    files = sorted(
        p
        for p in Path(folder).rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not p.name.startswith(".")
        and f"{p.parent.name}/{p.name}" not in exclude
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


def halve(a: np.ndarray) -> np.ndarray:
    """One pyramid level down: 2 x 2 means (rounded), as a slide pyramid is built; an odd
    last row / column is dropped."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    s = a[:h, :w].astype(np.uint16).reshape(h // 2, 2, w // 2, 2, -1).sum(axis=(1, 3))
    return ((s + 2) // 4).astype(np.uint8)


class CropSampler:
    """Random CROP x CROP crops, random flips / quarter turns, from weighted image pools.

    Crops that are almost all glass are re-drawn (up to a few times): the codec should spend
    its training on tissue, which is what containers store. `rng` is the only randomness
    (a trainer lists it among its generators, so a resumed run draws the same crops), but for
    the optional `jitter` (a module on float batches, e.g. `augment.HEDJitter`: it draws from
    torch's global generator, which checkpoints save too); jittered pixels are rounded back to
    8-bit values, as a codec's inputs are."""

    def __init__(
        self,
        pools: list[tuple[list[np.ndarray], float]],
        seed: int = 0,
        jitter: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.pools = [(imgs, w) for imgs, w in pools if len(imgs)]
        total = sum(w for _, w in self.pools)
        self.weights = [w / total for _, w in self.pools]
        self.rng = np.random.default_rng(seed)
        self.jitter = jitter

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
        x = torch.from_numpy(b).permute(0, 3, 1, 2).float().div_(255.0)
        if self.jitter is not None:
            with torch.no_grad():
                x = self.jitter(x).mul_(255.0).round_().div_(255.0)
        return x


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


# issue 23: what `he_all` trains on (for the run's record and the model card)
HE_ALL_DATA = (
    "PCam train (all 20,000 patches, 0.97 um/px) 45 %; CMU-1-Small-Region.svs level 0 "
    "(0.5 um/px) 25 %, 2x (1.0 um/px) 12 % and 4x (2.0 um/px) 8 % below it (2x2 means); "
    "Kather 2016 (24 images, 0.495 um/px) 10 %; 96 px crops, mostly-glass crops re-drawn, "
    "dihedral flips/turns, mild HED stain jitter (sigma 0.04, bias 0.04, p 0.5). Held out: "
    "shared/data/tiles, CropBreastSlide.tiff, the PCam probe's held-out split (pcam/valid). "
    "Validation: 64 PCam valid patches outside the probe's held-out split + CMU-1 levels 0-1"
)


def he_all(
    shared: Path,
    *,
    seed: int = 0,
    val_crops: int = 96,
    jitter: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[CropSampler, torch.Tensor]:
    """Every H&E pixel of the shared data that is not held out (`HE_ALL_DATA`): all PCam
    train patches, Kather 2016 and CMU-1-Small-Region at 0.5, 1 and 2 um/px, with mild HED
    stain jitter; and `val_crops` fixed validation crops (PCam valid outside the probe's
    held-out split, CMU-1 levels 0-1; no jitter). Never CropBreastSlide or shared/data/tiles."""
    from .augment import HEDJitter
    from .nic.probe import heldout_files

    pcam_dir = shared / "patches" / "pcam"
    heldout = frozenset(heldout_files(pcam_dir))  # pcam/valid names; train has none of them
    pcam = load_folder_images(pcam_dir / "train", exclude=heldout)
    kather = load_folder_images(shared / "patches" / "kather2016")
    l0 = load_slide_level0(shared / "slides" / "CMU-1-Small-Region.svs")
    l1 = halve(l0)
    l2 = halve(l1)
    log(f"data: {len(pcam)} PCam, {len(kather)} Kather, CMU-1 levels {l0.shape[:2]}, "
        f"{l1.shape[:2]}, {l2.shape[:2]}")  # fmt: skip
    sampler = CropSampler(
        [(pcam, 0.45), ([l0], 0.25), ([l1], 0.12), ([l2], 0.08), (kather, 0.10)],
        seed=seed,
        jitter=HEDJitter(sigma=0.04, bias=0.04, p=0.5) if jitter else None,
    )
    val_pcam = load_folder_images(pcam_dir / "valid", 64, 1, exclude=heldout)
    val = CropSampler([(val_pcam, 0.5), ([l0], 0.3), ([l1], 0.2)], seed=123).batch(val_crops)
    return sampler, val
