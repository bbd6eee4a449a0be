"""Synthetic digit images for the Neural Image Compression benchmark (Tellez et al., TPAMI
2019, section 4.1.1), built from scikit-learn's bundled 8x8 digits (no download).

An image is a canvas of ``n x n`` cells of 9 x 9 px (an 8 x 8 digit in the top-left corner and a
1 px blank border, so neighbouring digits never touch, like the paper's 9 x 9 MNIST digits).
A fraction ``density`` of the cells hold a digit, the rest are blank (all zero). Two rectangles
of random size and position, in cell units, are drawn on the canvas:

- a *tilted* one, rotated by 45 or 135 degrees: every digit whose cell centre lies inside it
  is of its class, and that class is the image label (10 classes);
- an *axis-aligned* distractor of a different class: digits inside it (and outside the tilted
  one) are of its class.

Digits elsewhere are of uniformly random classes. Counting digits cannot solve the task (both
rectangles are clusters of one class, with the same size distribution); only the tilted shape
tells which cluster gives the label, so a model must see the spatial layout.

Sizes: the tilted rectangle's target area fraction is log-uniform in ``[min_area, max_area]``
(default 1 % .. 30 % of the image, so each doubling of size is equally represented), its
aspect ratio log-uniform in ``[1/aspect, aspect]``; it is resampled until it fits the canvas
and covers at least ``min_cells`` cell centres. The axis-aligned rectangle's size is drawn from
the same distribution (size is no cue); its position is redrawn up to 100 times to avoid the
tilted one, after which overlap is allowed and the tilted rectangle wins the shared cells. The
reported ``area_fraction`` is that of the rasterised mask (cells whose centre is inside).

The digit images are split, stratified by class and seeded, into disjoint train / test pools:
train images (and validation images, and encoder training) use the train pool, test images
the test pool, so the test set shows unseen digit instances.

Images are grayscale uint8 (H, W), white digits on black, H = W = 9 n. `cut_cells` and
`cells_to_patches` turn them into the (N, 3, 16, 16) inputs of the NIC encoders (grey
replicated to 3 channels, scaled to [-1, 1], padded centred with the background value -1), and
`compress_images` into (n, n, C) embedding grids, embedding each distinct cell content once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

CELL = 9  # px per cell side
DIGIT = 8  # px per digit side (sklearn digits)
N_CLASSES = 10
PATCH = 16  # encoder input side: the 9 px cell padded so 4 stride-2 convs halve it cleanly


@dataclass(frozen=True)
class DigitPool:
    """A set of 8 x 8 digit images: uint8 0..255 (white on black) and their classes."""

    images: np.ndarray  # (N, 8, 8) uint8
    labels: np.ndarray  # (N,) int64
    source_index: np.ndarray  # (N,) row in sklearn's load_digits(), for provenance
    by_class: list[np.ndarray] = field(repr=False, default_factory=list)  # pool rows per class

    def __post_init__(self) -> None:
        if not self.by_class:
            rows = [np.flatnonzero(self.labels == k) for k in range(N_CLASSES)]
            object.__setattr__(self, "by_class", rows)

    def __len__(self) -> int:
        return len(self.labels)


def load_digit_pools(test_fraction: float = 0.3, seed: int = 0) -> tuple[DigitPool, DigitPool]:
    """sklearn's 1797 digits split per class (seeded) into disjoint (train, test) pools.

    The 16 grey levels (0..16) are scaled to 0..255.
    """
    from sklearn.datasets import load_digits

    if not 0 < test_fraction < 1:
        raise ValueError("test_fraction must be in (0, 1)")
    d = load_digits()
    images = np.round(d.images * (255 / 16)).astype(np.uint8)
    labels = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    train_rows, test_rows = [], []
    for k in range(N_CLASSES):
        rows = rng.permutation(np.flatnonzero(labels == k))
        n_test = max(1, round(len(rows) * test_fraction))
        test_rows.append(rows[:n_test])
        train_rows.append(rows[n_test:])
    pools = []
    for rows in (np.sort(np.concatenate(train_rows)), np.sort(np.concatenate(test_rows))):
        pools.append(DigitPool(images[rows], labels[rows], rows))
    return pools[0], pools[1]


@dataclass(frozen=True)
class SyntheticConfig:
    """How synthetic images are drawn (see the module docstring)."""

    n_cells: int = 48  # canvas side in cells (image side = 9 n px)
    density: float = 0.5  # probability that a cell holds a digit
    min_area: float = 0.01  # tilted (and axis-aligned) rectangle area, fraction of the image
    max_area: float = 0.30
    aspect: float = 3.0  # side ratios in [1/aspect, aspect], log-uniform
    min_cells: int = 4  # a rectangle covers at least this many cell centres

    def __post_init__(self) -> None:
        if self.n_cells < 4:
            raise ValueError("n_cells must be >= 4")
        if not 0 < self.density <= 1:
            raise ValueError("density must be in (0, 1]")
        if not 0 < self.min_area <= self.max_area < 0.5:
            raise ValueError("need 0 < min_area <= max_area < 0.5")
        if self.aspect < 1:
            raise ValueError("aspect must be >= 1")


@dataclass
class SyntheticImage:
    """One synthetic image and its ground truth."""

    image: np.ndarray | None  # (9n, 9n) uint8; None if not rendered (see `render`)
    label: int  # == tilted_class
    cell_classes: np.ndarray  # (n, n) int64, digit class per cell, -1 = blank
    cell_digits: np.ndarray  # (n, n) int64, row in the digit pool, -1 = blank
    tilted_mask: np.ndarray  # (n, n) bool, cells whose centre is inside the tilted rectangle
    axis_mask: np.ndarray  # (n, n) bool, the same for the axis-aligned rectangle
    tilted_class: int
    axis_class: int
    angle: int  # 45 or 135 degrees
    area_fraction: float  # tilted_mask.mean()


def rectangle_mask(
    n: int, cy: float, cx: float, height: float, width: float, angle: float = 0.0
) -> np.ndarray:
    """(n, n) bool: cells whose centre lies in the rectangle centred at (cy, cx) (cell units,
    the canvas spans [0, n]), `width` along x before it is rotated by `angle` degrees."""
    y, x = np.mgrid[0:n, 0:n] + 0.5
    t = np.deg2rad(angle)
    dy, dx = y - cy, x - cx
    u = dx * np.cos(t) + dy * np.sin(t)
    v = -dx * np.sin(t) + dy * np.cos(t)
    eps = 1e-9
    return (np.abs(u) <= width / 2 + eps) & (np.abs(v) <= height / 2 + eps)


def _rect_size(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[float, float]:
    n = cfg.n_cells
    area = np.exp(rng.uniform(np.log(cfg.min_area), np.log(cfg.max_area))) * n * n
    ratio = np.exp(rng.uniform(-np.log(cfg.aspect), np.log(cfg.aspect)))
    return float(np.sqrt(area / ratio)), float(np.sqrt(area * ratio))  # height, width


def _draw_tilted(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[np.ndarray, int]:
    n = cfg.n_cells
    for _ in range(1000):
        h, w = _rect_size(rng, cfg)
        half = (h + w) / (2 * np.sqrt(2))  # half side of the 45-degree bounding box
        if half > n / 2:
            continue
        cy, cx = rng.uniform(half, n - half, size=2)
        angle = int(rng.choice([45, 135]))
        mask = rectangle_mask(n, cy, cx, h, w, angle)
        if mask.sum() >= cfg.min_cells:
            return mask, angle
    raise RuntimeError("cannot place a tilted rectangle; check n_cells / min_area / min_cells")


def _draw_axis(rng: np.random.Generator, cfg: SyntheticConfig, avoid: np.ndarray) -> np.ndarray:
    n = cfg.n_cells
    for _ in range(1000):
        h, w = _rect_size(rng, cfg)
        if h > n or w > n:
            continue
        mask = None
        for _ in range(100):  # same size, new position: sizes stay unbiased by the rejection
            cy = rng.uniform(h / 2, n - h / 2)
            cx = rng.uniform(w / 2, n - w / 2)
            mask = rectangle_mask(n, cy, cx, h, w, 0.0)
            if not (mask & avoid).any():
                break
        if mask.sum() >= cfg.min_cells and (mask & ~avoid).sum() >= 1:
            return mask
    raise RuntimeError("cannot place an axis-aligned rectangle")


def render(cell_digits: np.ndarray, pool: DigitPool) -> np.ndarray:
    """(9n, 9n) uint8 image: pool digit `cell_digits[i, j]` in the top-left 8 x 8 of cell
    (i, j), black elsewhere (-1 = blank cell)."""
    n_r, n_c = cell_digits.shape
    canvas = np.zeros((n_r, CELL, n_c, CELL), np.uint8)
    occupied = cell_digits >= 0
    digits = np.zeros((n_r, n_c, DIGIT, DIGIT), np.uint8)
    digits[occupied] = pool.images[cell_digits[occupied]]
    canvas[:, :DIGIT, :, :DIGIT] = digits.transpose(0, 2, 1, 3)
    return canvas.reshape(n_r * CELL, n_c * CELL)


def make_image(
    pool: DigitPool,
    rng: np.random.Generator,
    cfg: SyntheticConfig | None = None,
    render_image: bool = True,
) -> SyntheticImage:
    """Draw one image (see the module docstring) with digits from `pool`.

    With ``render_image=False`` only the ground truth is kept (``image`` is None; the pixels
    are ``render(cell_digits, pool)``), which saves memory for large sets.
    """
    cfg = cfg or SyntheticConfig()
    n = cfg.n_cells
    tilted, angle = _draw_tilted(rng, cfg)
    axis = _draw_axis(rng, cfg, tilted)
    tilted_class = int(rng.integers(N_CLASSES))
    axis_class = int((tilted_class + rng.integers(1, N_CLASSES)) % N_CLASSES)  # != tilted

    classes = rng.integers(0, N_CLASSES, size=(n, n))
    classes[axis] = axis_class
    classes[tilted] = tilted_class  # drawn last: the tilted rectangle wins shared cells
    occupied = rng.random((n, n)) < cfg.density
    classes[~occupied] = -1
    digits = np.full((n, n), -1, np.int64)
    for k in range(N_CLASSES):
        where = classes == k
        rows = pool.by_class[k]
        digits[where] = rows[rng.integers(0, len(rows), size=int(where.sum()))]
    return SyntheticImage(
        image=render(digits, pool) if render_image else None,
        label=tilted_class,
        cell_classes=classes.astype(np.int64),
        cell_digits=digits,
        tilted_mask=tilted,
        axis_mask=axis,
        tilted_class=tilted_class,
        axis_class=axis_class,
        angle=angle,
        area_fraction=float(tilted.mean()),
    )


def make_images(
    pool: DigitPool,
    count: int,
    seed: int,
    cfg: SyntheticConfig | None = None,
    render_image: bool = True,
) -> list[SyntheticImage]:
    """`count` images; image i depends only on (seed, i), not on `count`."""
    return [
        make_image(pool, np.random.default_rng([seed, i]), cfg, render_image) for i in range(count)
    ]


# -- patches and grids ---------------------------------------------------------------------


def digit_cells(pool: DigitPool) -> np.ndarray:
    """(N, 9, 9) uint8: each pool digit as it appears in a cell of a rendered image."""
    cells = np.zeros((len(pool), CELL, CELL), np.uint8)
    cells[:, :DIGIT, :DIGIT] = pool.images
    return cells


def cut_cells(image: np.ndarray, cell: int = CELL) -> np.ndarray:
    """(n*n, cell, cell) uint8: the cells of a (n*cell, n*cell) image in row-major order."""
    h, w = image.shape
    if h % cell or w % cell:
        raise ValueError(f"image {image.shape} is not a whole number of {cell} px cells")
    r, c = h // cell, w // cell
    return image.reshape(r, cell, c, cell).transpose(0, 2, 1, 3).reshape(r * c, cell, cell)


def cells_to_patches(cells: np.ndarray, size: int = PATCH) -> np.ndarray:
    """(N, 3, size, size) float32 in [-1, 1]: grey replicated to 3 channels, padded centred
    (3 px before, 4 after for 9 -> 16) with the background value -1 (NIC's normalisation)."""
    n, ch, cw = cells.shape
    if ch > size or cw > size:
        raise ValueError(f"cells of {ch}x{cw} px do not fit in {size} px patches")
    out = np.full((n, size, size), -1.0, np.float32)
    top, left = (size - ch) // 2, (size - cw) // 2
    out[:, top : top + ch, left : left + cw] = cells.astype(np.float32) * (2 / 255) - 1
    return np.ascontiguousarray(np.repeat(out[:, None], 3, axis=1))


def torch_embed_fn(
    embedder, batch_size: int = 1024, device: str = "cpu"
) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a NIC embedder (normalised (N, 3, P, P) -> (N, C)) as uint8 cells -> codes."""
    import torch

    embedder = embedder.to(device).eval()

    @torch.no_grad()
    def embed(cells: np.ndarray) -> np.ndarray:
        x = cells_to_patches(cells)
        out = [
            embedder(torch.from_numpy(x[i : i + batch_size]).to(device)).float().cpu().numpy()
            for i in range(0, len(x), batch_size)
        ]
        return np.concatenate(out).astype(np.float32)

    return embed


def mean_intensity_embed(cells: np.ndarray) -> np.ndarray:
    """A floor encoder: (N, 1) mean intensity of each cell in [-1, 1]."""
    return (cells.reshape(len(cells), -1).mean(1, keepdims=True) * (2 / 255) - 1).astype(np.float32)


def compress_images(
    images: Sequence[np.ndarray],
    embed: Callable[[np.ndarray], np.ndarray],
    chunk: int = 64,
    cell: int = CELL,
) -> np.ndarray:
    """(N, n, n, C) float32 grids: every cell of every image embedded by `embed`.

    Cells are embedded as the NIC paper does, blank ones included (they all get one code).
    Identical cell contents are embedded once per chunk of images (exact for a deterministic,
    per-sample embedder such as a NIC network in eval mode; synthetic images reuse a small
    pool of digits, so this cuts the work ~100x).
    """
    if not len(images):
        raise ValueError("no images")
    grids = []
    for i in range(0, len(images), chunk):
        block = [cut_cells(im, cell) for im in images[i : i + chunk]]
        n_img, n_cell = len(block), block[0].shape[0]
        flat = np.ascontiguousarray(np.concatenate(block).reshape(n_img * n_cell, -1))
        keys = flat.view(np.dtype((np.void, flat.shape[1]))).ravel()
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        codes = embed(flat[first].reshape(-1, cell, cell))[inverse.ravel()]
        grids.append(codes.reshape(n_img, n_cell, -1))
    out = np.concatenate(grids)
    rows, cols = images[0].shape[0] // cell, images[0].shape[1] // cell
    return out.reshape(len(out), rows, cols, -1)
