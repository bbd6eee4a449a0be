"""Mosaic "slides" of real PatchCamelyon patches for slide-level NIC benchmarks.

Neural Image Compression (Tellez et al., TPAMI 2019; MIDL 2020) turns a slide into an (H, W, C)
grid of patch codes and trains a CNN on grids with slide labels only. This module builds
cohorts of such slides from real tissue: a slide is an ``n x n`` arrangement of PCam patches
(96 px at 0.97 um/px, centre-cropped to the encoder's 64 px), inside an irregular tissue mask
(a thresholded blob of smoothed noise, one 4-connected component without holes; cells outside
are glass: zero features, mask False).

- A *positive* slide holds one contiguous (4-connected) tumour region grown from a random seed
  cell inside the tissue (Eden growth weighted by smoothed noise, so the outline is irregular)
  to exactly ``round(f * tissue cells)`` cells, ``f`` log-uniform in ``tumour_fraction``
  (default 2 % .. 40 %, so each doubling of size is about equally frequent; stratified over a
  cohort, so that every size range is represented even in small cohorts). Its cells hold
  label-1 patches (metastasis in the patch centre), every other tissue cell a label-0 patch.
- A *negative* slide holds label-0 patches only. The slide label is "tumour present".

Cells hold patch *ids* (rows of a patch table, `synthetic.pcam`), so a cohort is cheap to
build and each PCam patch is encoded once (`pcam.embed_files`); `assemble` then gathers the
cached codes into grids. Because a cell is exactly one encoder patch at the encoder's
resolution and patch = stride, this equals encoding the rendered mosaic image with
`slidepress encode` (`render` + `synthetic.slides.write_pyramid_tiff` produce that image;
tests/test_mosaic.py checks the equality).

Patch pools can be split per fold (`split_pool`) so that no patch appears in slides of two
folds. `survival_outcomes` adds a toy survival endpoint whose hazard grows with the tumour
burden (tumour cells / tissue cells). This module only draws layouts (pure numpy); reading and
encoding the PCam files is `synthetic.pcam`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

GLASS = (236, 234, 240)  # background colour of rendered mosaics (RGB)
PCAM_MPP = 0.97  # PatchCamelyon resolution, um/px
CELL_PX = 64  # rendered cell side (the shipped NIC encoders' input at 0.97 um/px)


@dataclass(frozen=True)
class MosaicConfig:
    """How mosaics are drawn.

    n: grid side in cells. tissue_fraction: range of the target tissue area (fraction of the
    n x n square, uniform). tumour_fraction: range of the tumour size (fraction of the tissue
    cells, log-uniform). smooth: sigma (cells) of the noise that shapes tissue and tumour.
    """

    n: int = 24
    tissue_fraction: tuple[float, float] = (0.45, 0.75)
    tumour_fraction: tuple[float, float] = (0.02, 0.40)
    smooth: float = 2.5

    def __post_init__(self) -> None:
        lo, hi = self.tissue_fraction
        if self.n < 2 or not 0 < lo <= hi <= 1:
            raise ValueError(f"bad mosaic config: n={self.n}, tissue_fraction={lo, hi}")
        lo, hi = self.tumour_fraction
        if not 0 < lo <= hi < 1:
            raise ValueError(f"tumour_fraction must satisfy 0 < lo <= hi < 1, got {lo, hi}")


@dataclass
class Mosaic:
    """One mosaic slide: which patch sits in which cell, and the ground truth."""

    slide: str
    label: int  # 1 = tumour present
    tissue: np.ndarray  # (n, n) bool
    tumour: np.ndarray  # (n, n) bool, inside `tissue`, empty for negatives
    cells: np.ndarray  # (n, n) int64 patch id per cell (row of the patch table), -1 = glass
    fold: int = -1  # cohort fold (-1: none)
    target_fraction: float = 0.0  # drawn tumour fraction f (0 for negatives)

    @property
    def n_tissue(self) -> int:
        return int(self.tissue.sum())

    @property
    def n_tumour(self) -> int:
        return int(self.tumour.sum())

    @property
    def burden(self) -> float:
        """Tumour cells / tissue cells."""
        return self.n_tumour / max(self.n_tissue, 1)

    def metadata(self) -> dict[str, Any]:
        return {
            "mosaic": {
                "label": self.label,
                "fold": self.fold,
                "n_tissue": self.n_tissue,
                "n_tumour": self.n_tumour,
                "burden": self.burden,
            }
        }


# -- shapes --------------------------------------------------------------------------------


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    z = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return (z - z.mean()) / (z.std() + 1e-12)


def tissue_blob(
    n: int, fraction: float, rng: np.random.Generator, smooth: float = 2.5
) -> np.ndarray:
    """An irregular tissue mask: smoothed noise plus a pull towards the centre, thresholded
    at the `fraction` quantile, largest 4-connected component, holes filled. (n, n) bool."""
    yy, xx = np.mgrid[0:n, 0:n]
    c = (n - 1) / 2
    radial = ((yy - c) ** 2 + (xx - c) ** 2) / (n / 2) ** 2
    field_ = _smooth_noise((n, n), smooth, rng) - 2.5 * radial
    thr = np.quantile(field_, 1 - fraction)
    mask = field_ >= thr
    lab, k = ndimage.label(mask)
    if k > 1:
        sizes = ndimage.sum(mask, lab, index=np.arange(1, k + 1))
        mask = lab == 1 + int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)


def grow_region(
    allowed: np.ndarray, size: int, rng: np.random.Generator, smooth: float = 2.5
) -> np.ndarray:
    """A 4-connected region of exactly `size` cells inside `allowed`, grown from a random seed.

    Eden growth: each step adds one cell of the current frontier, drawn with weight
    exp(1.5 z) where z is smoothed noise, so outlines are irregular but the region stays a
    blob. Raises ValueError when the seed's component of `allowed` is smaller than `size`.
    """
    allowed = np.asarray(allowed, bool)
    h, w = allowed.shape
    if size < 1 or size > int(allowed.sum()):
        raise ValueError(f"region size {size} outside 1..{int(allowed.sum())}")
    weight = np.exp(1.5 * _smooth_noise((h, w), smooth, rng))
    ys, xs = np.nonzero(allowed)
    lab, _ = ndimage.label(allowed)
    comp_sizes = np.bincount(lab[ys, xs])
    ok = comp_sizes[lab[ys, xs]] >= size
    if not ok.any():
        raise ValueError(f"no connected part of the mask holds {size} cells")
    i = int(rng.choice(np.flatnonzero(ok)))
    region = np.zeros((h, w), bool)
    region[ys[i], xs[i]] = True
    frontier: dict[tuple[int, int], None] = {}

    def push(y: int, x: int) -> None:
        for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            yy, xx = y + dy, x + dx
            if 0 <= yy < h and 0 <= xx < w and allowed[yy, xx] and not region[yy, xx]:
                frontier[(yy, xx)] = None

    push(int(ys[i]), int(xs[i]))
    for _ in range(size - 1):
        cand = list(frontier)
        p = np.array([weight[c] for c in cand])
        y, x = cand[int(rng.choice(len(cand), p=p / p.sum()))]
        del frontier[(y, x)]
        region[y, x] = True
        push(y, x)
    return region


def is_connected(region: np.ndarray) -> bool:
    """True when `region` is non-empty and one 4-connected component."""
    _, k = ndimage.label(region)
    return k == 1


# -- mosaics -------------------------------------------------------------------------------


def _draw(pool: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    if len(pool) == 0:
        raise ValueError("empty patch pool")
    return rng.choice(pool, size=k, replace=k > len(pool))


def make_mosaic(
    slide: str,
    label: int,
    normal_ids: np.ndarray,
    tumour_ids: np.ndarray,
    rng: np.random.Generator,
    config: MosaicConfig = MosaicConfig(),
    fold: int = -1,
    tumour_fraction: float | None = None,
) -> Mosaic:
    """One mosaic. Patches are drawn from the id pools, without replacement within the slide
    when the pool is large enough. A positive's tumour fraction is `tumour_fraction` when
    given, else drawn log-uniform in ``config.tumour_fraction``."""
    n = config.n
    lo, hi = config.tissue_fraction
    tissue = tissue_blob(n, float(rng.uniform(lo, hi)), rng, config.smooth)
    tumour = np.zeros_like(tissue)
    f = 0.0
    if label:
        lo, hi = config.tumour_fraction
        u = rng.uniform()  # drawn in any case: the rest of the slide does not depend on it
        f = float(np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo))))
        if tumour_fraction is not None:
            f = float(tumour_fraction)
        size = max(1, round(f * int(tissue.sum())))
        tumour = grow_region(tissue, size, rng, config.smooth)
    cells = np.full((n, n), -1, np.int64)
    normal = tissue & ~tumour
    cells[normal] = _draw(np.asarray(normal_ids), int(normal.sum()), rng)
    if label:
        cells[tumour] = _draw(np.asarray(tumour_ids), int(tumour.sum()), rng)
    return Mosaic(slide, int(label), tissue, tumour, cells, fold, f)


def split_pool(ids: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Seeded partition of a patch-id pool into `k` disjoint parts of near-equal size."""
    perm = np.random.default_rng(seed).permutation(np.asarray(ids))
    return [np.sort(p) for p in np.array_split(perm, k)]


def make_cohort(
    n_slides: int,
    normal_ids: np.ndarray,
    tumour_ids: np.ndarray,
    *,
    seed: int,
    config: MosaicConfig = MosaicConfig(),
    positive_fraction: float = 0.5,
    folds: int = 0,
    prefix: str = "mosaic",
    stratify_size: bool = True,
) -> list[Mosaic]:
    """`n_slides` mosaics, round(positive_fraction * n) of them positive (order shuffled).

    With `stratify_size` the positives' tumour fractions are stratified on the log scale
    (one draw in each of n_pos equal slices of [log lo, log hi], slices shuffled over the
    positives), so every size range is represented as the log-uniform law says, not just in
    expectation: small cohorts then still have positives in every size bin.

    With ``folds = k > 0`` the slides get folds 0..k-1 (stratified by label) and each fold
    draws from its own disjoint part of both pools (`split_pool`), so no patch is shared
    between slides of different folds. Slide i uses the generator ``default_rng([seed, i])``:
    the cohort is a pure function of its arguments.
    """
    if n_slides < 1 or not 0 <= positive_fraction <= 1:
        raise ValueError("need n_slides >= 1 and 0 <= positive_fraction <= 1")
    n_pos = round(positive_fraction * n_slides)
    labels = np.random.default_rng([seed, 10**6]).permutation(
        np.r_[np.ones(n_pos, np.int64), np.zeros(n_slides - n_pos, np.int64)]
    )
    fold_of = np.full(n_slides, -1, np.int64)
    if folds:
        for lab in (0, 1):
            idx = np.flatnonzero(labels == lab)
            fold_of[idx] = np.arange(len(idx)) % folds
        normal_parts = split_pool(normal_ids, folds, seed)
        tumour_parts = split_pool(tumour_ids, folds, seed + 1)
    sizes: dict[int, float] = {}
    if stratify_size and n_pos:
        lo, hi = np.log(config.tumour_fraction)
        srng = np.random.default_rng([seed, 10**6 + 1])
        u = (srng.permutation(n_pos) + srng.uniform(size=n_pos)) / n_pos
        pos, fr = np.flatnonzero(labels == 1), np.exp(lo + u * (hi - lo))
        sizes = {int(i): float(f) for i, f in zip(pos, fr, strict=True)}
    width = len(str(n_slides - 1))
    out = []
    for i in range(n_slides):
        f = int(fold_of[i])
        normal = normal_parts[f] if folds else normal_ids
        tumour = tumour_parts[f] if folds else tumour_ids
        rng = np.random.default_rng([seed, i])
        name = f"{prefix}{i:0{width}d}"
        m = make_mosaic(name, int(labels[i]), normal, tumour, rng, config, f, sizes.get(i))
        out.append(m)
    return out


# -- survival toy --------------------------------------------------------------------------


@dataclass(frozen=True)
class SurvivalConfig:
    """Toy survival endpoint driven by tumour burden b (tumour cells / tissue cells).

    z = (b - mean(b)) / std(b) over the cohort; event time T ~ Exponential(rate =
    base_rate * exp(beta * z)); censoring time C ~ Exponential(censor_rate); observed time
    min(T, C, follow_up), event = T is the smallest. Time units are arbitrary ("months").
    """

    beta: float = 1.0
    base_rate: float = 1 / 24
    censor_rate: float = 1 / 60
    follow_up: float = 120.0


def survival_outcomes(
    burden: np.ndarray,
    rng: np.random.Generator,
    config: SurvivalConfig = SurvivalConfig(),
    reference: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(time float32 > 0, event float32 in {0, 1}, true log-hazard) for each burden.

    `reference` = (mean, std) standardises the burden (default: this sample's own), so a test
    cohort can share the training cohort's hazard scale."""
    b = np.asarray(burden, np.float64)
    mean, std = reference if reference is not None else (b.mean(), b.std())
    z = (b - mean) / (std + 1e-12)
    log_hazard = config.beta * z
    t_event = rng.exponential(1.0 / (config.base_rate * np.exp(log_hazard)))
    t_censor = rng.exponential(1.0 / config.censor_rate, size=len(b))
    t_censor = np.minimum(t_censor, config.follow_up)
    time = np.minimum(t_event, t_censor)
    event = t_event <= t_censor
    time = np.maximum(time, 1e-3)  # strictly positive
    return time.astype(np.float32), event.astype(np.float32), log_hazard


# -- codes to grids ------------------------------------------------------------------------


def assemble(mosaic: Mosaic, codes: np.ndarray) -> np.ndarray:
    """(n, n, C) float32 grid: the code of each cell's patch, zero on glass."""
    n = mosaic.cells.shape[0]
    out = np.zeros((n, n, codes.shape[1]), np.float32)
    out[mosaic.tissue] = codes[mosaic.cells[mosaic.tissue]]
    return out


def grid_item(mosaic: Mosaic, codes: np.ndarray, metadata: dict[str, Any] | None = None):
    """A `slidemodel.data.GridItem` of the mosaic (no file behind it: path None)."""
    from ..slidemodel.data import GridItem

    n = mosaic.cells.shape[0]
    ys, xs = np.mgrid[0:n, 0:n]
    coords = np.stack([xs * CELL_PX, ys * CELL_PX], axis=2).astype(np.int64)
    meta = {**(metadata or {}), **mosaic.metadata()}
    return GridItem(
        slide=mosaic.slide,
        features=assemble(mosaic, codes),
        mask=mosaic.tissue.copy(),
        path=None,  # type: ignore[arg-type]
        metadata=meta,
        coords=coords,
    )


def embedding_grid(mosaic: Mosaic, codes: np.ndarray, metadata: dict[str, Any] | None = None):
    """A `store.EmbeddingGrid` of the mosaic, for `store.write_grid` and the CLI."""
    from ..store import EmbeddingGrid

    meta = {**(metadata or {}), **mosaic.metadata()}
    return EmbeddingGrid.from_features(assemble(mosaic, codes), mosaic.tissue, CELL_PX, meta)


# -- the mosaic as an image ----------------------------------------------------------------


def render(mosaic: Mosaic, patches: np.ndarray | Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """(n * P, n * P, 3) uint8 image of the mosaic: patch pixels in tissue cells, glass
    elsewhere. `patches` is the (N, P, P, 3) patch table, or a function from patch ids to
    their (k, P, P, 3) pixels."""
    ids = mosaic.cells[mosaic.tissue]
    pix = patches[ids] if isinstance(patches, np.ndarray) else patches(ids)
    p = pix.shape[1]
    n = mosaic.cells.shape[0]
    img = np.empty((n, n, p, p, 3), np.uint8)
    img[...] = np.asarray(GLASS, np.uint8)
    img[mosaic.tissue] = pix
    return np.ascontiguousarray(img.transpose(0, 2, 1, 3, 4).reshape(n * p, n * p, 3))
