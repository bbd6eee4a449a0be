"""Embedding grids + slide labels, and the crops the slide-level models train on.

Tellez et al. (TPAMI 2019, sec. 3): the CNN sees R x R crops of the (H, W, C) grid, sampled
at random during training, favouring cells deep inside the tissue (probability proportional
to the distance to background), each in one of the 8 dihedral variants. At test time T crops
spread over the tissue x the variants are predicted and averaged. Grids smaller than R are
zero-padded (zero = background, as in the grids themselves).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .. import dihedral
from ..errors import UsageError
from ..store.formats import grid_suffixes


@dataclass
class Labels:
    """Slide-level targets from a CSV: `slide` + `label` | `value` | `time`,`event` [+ `fold`]."""

    task: str
    slides: list[str]
    targets: np.ndarray  # classify: int (N,); regress: float (N,); survival: float (N, 2)
    classes: list[str] = field(default_factory=list)
    folds: np.ndarray | None = None  # int (N,) or None

    def subset(self, idx: np.ndarray) -> Labels:
        folds = None if self.folds is None else self.folds[idx]
        return Labels(
            self.task, [self.slides[i] for i in idx], self.targets[idx], self.classes, folds
        )


# Spellings of "no value" (pandas' default NA strings, compared lower-case): a label like this
# is a missing label, never a class of its own.
MISSING_LABELS = frozenset(
    s.lower()
    for s in ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
              "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")
)  # fmt: skip


@dataclass
class LabelTable:
    """The rows of a labels CSV as a task reads them (`Task.parse_targets`): stripped cells,
    numbers, and errors that name the file, line and slide."""

    path: Path
    rows: list[dict[str, str | None]]
    lines: list[int]  # the CSV line each row ends on
    slides: list[str] = field(default_factory=list)

    def cell(self, i: int, c: str) -> str:
        """The stripped text of column `c` in row `i`; a short row's absent cell is empty."""
        return (self.rows[i].get(c) or "").strip()

    def where(self, i: int) -> str:
        return f"{self.path}: line {self.lines[i]} (slide {self.slides[i]})"

    def error(self, message: str) -> UsageError:
        return UsageError(f"{self.path}: {message}")

    def text(self, c: str, missing: str) -> list[str]:
        """Column `c` as text; a missing value (empty, NA, ...) is an error ending in `missing`."""
        out = [self.cell(i, c) for i in range(len(self.rows))]
        for i, v in enumerate(out):
            if v.lower() in MISSING_LABELS:
                raise UsageError(f"{self.where(i)}: {c} is missing ({v!r}); {missing}")
        return out

    def numbers(self, c: str) -> np.ndarray:
        """Column `c` as finite floats (N,)."""
        return np.array([self._number(i, c) for i in range(len(self.rows))], np.float64)

    def _number(self, i: int, c: str) -> float:
        text = self.cell(i, c)
        if text.lower() in MISSING_LABELS:
            raise UsageError(
                f"{self.where(i)}: {c} is missing ({text!r}); fill it in or drop the row"
            )
        try:
            v = float(text)
        except ValueError:
            raise UsageError(f"{self.where(i)}: {c}={text!r} is not a number") from None
        if not math.isfinite(v):
            raise UsageError(f"{self.where(i)}: {c}={text!r} is not finite")
        return v


def read_labels(path: str | Path, task: str) -> Labels:
    """Slide names and targets of `task` (its columns, see `slidemodel.TASKS`), plus the
    optional `fold` column; UsageError naming the line of anything unusable."""
    from . import build_task

    path = Path(path)
    kind = build_task(task)  # an unknown task fails before the file is read
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows, lines = [], []
            for r in reader:
                rows.append(r)
                lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"{path}: cannot read labels CSV ({e})") from None
    if not rows:
        raise UsageError(f"{path}: no rows")
    cols = set(rows[0])
    missing = [c for c in ("slide", *kind.columns) if c not in cols]
    if missing:
        raise UsageError(f"{path}: task {task} needs column(s) {', '.join(missing)}")
    table = LabelTable(path, rows, lines)
    for i in range(len(rows)):
        if not table.cell(i, "slide"):
            raise UsageError(f"{path}: line {lines[i]}: empty slide name; name every slide")
    slides = table.slides = [table.cell(i, "slide") for i in range(len(rows))]
    dup = sorted({s for s in slides if slides.count(s) > 1})
    if dup:
        raise UsageError(f"{path}: slide(s) listed twice: {', '.join(dup[:5])}")
    targets, classes = kind.parse_targets(table)
    folds = None
    if "fold" in cols and all(table.cell(i, "fold") for i in range(len(rows))):
        folds = table.numbers("fold").astype(np.int64)
    return Labels(task, slides, targets, classes, folds)


@dataclass
class GridItem:
    slide: str
    features: np.ndarray  # (H, W, C) float32
    mask: np.ndarray  # (H, W) bool
    path: Path
    metadata: dict
    coords: np.ndarray | None = None  # (H, W, 2) level-0 (x, y) of each cell

    @property
    def depth(self) -> np.ndarray:
        """Distance of each tissue cell to background (cells), the crop-centre weight."""
        padded = np.pad(self.mask, 1)
        return ndimage.distance_transform_edt(padded)[1:-1, 1:-1].astype(np.float32)

    @property
    def cell_level0(self) -> float:
        """Side of one cell in level-0 slide pixels (from the stored coordinates)."""
        c = self.coords
        if c is None or c.shape[0] * c.shape[1] < 2:
            return 1.0
        return float(c[0, 1, 0] - c[0, 0, 0]) if c.shape[1] > 1 else float(c[1, 0, 1] - c[0, 0, 1])


def _grid_suffix(path: Path) -> str | None:
    """The grid-format suffix `path` ends in (any format in `store.formats`), or None."""
    name = path.name.lower()
    return next((s for s in grid_suffixes() if name.endswith(s)), None)


def slide_id(path: Path) -> str:
    suffix = _grid_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.stem


def find_grids(inputs: list[str | Path]) -> list[Path]:
    """Grid files/folders named, or found inside the folders named (every suffix of every
    registered grid format, e.g. .h5 and .hdf5)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if _grid_suffix(p) and p.exists():
            out.append(p)
        elif p.is_dir():
            found = sorted(c for c in p.iterdir() if _grid_suffix(c))
            if not found:
                raise UsageError(f"{p}: holds no grids ({', '.join(grid_suffixes())})")
            out += found
        else:
            raise UsageError(f"grid not found: {p}")
    return out


def load_grid_item(path: Path) -> GridItem:
    from ..store import read_grid

    g = read_grid(path)
    feats = np.nan_to_num(g.features.astype(np.float32, copy=False))
    return GridItem(slide_id(path), feats, g.mask.astype(bool), path, g.metadata, g.coords)


def load_grids(paths: list[Path], labels: Labels | None = None) -> list[GridItem]:
    """Grids in the order of `labels.slides` (all must exist), or in the order given."""
    by_id = {}
    for p in paths:
        sid = slide_id(p)
        if sid in by_id:
            raise UsageError(f"two grids for slide {sid!r}: {by_id[sid]} and {p}")
        by_id[sid] = p
    wanted = labels.slides if labels is not None else list(by_id)
    missing = [s for s in wanted if s not in by_id]
    if missing:
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        raise UsageError(f"no grid for slide(s) {', '.join(missing[:5])}{more}")
    items = [load_grid_item(by_id[s]) for s in wanted]
    dims = {it.features.shape[2] for it in items}
    if len(dims) > 1:
        raise UsageError(f"grids have different embedding sizes {sorted(dims)}; one encoder only")
    return items


# -- crops ---------------------------------------------------------------------------------


def crop_at(item: GridItem, cy: int, cx: int, size: int, variant: int = 0) -> np.ndarray:
    """(C, size, size) crop centred on cell (cy, cx), zero outside the grid, in D_variant."""
    h, w, c = item.features.shape
    out = np.zeros((size, size, c), np.float32)
    y0, x0 = cy - size // 2, cx - size // 2
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + size, h), min(x0 + size, w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = item.features[sy0:sy1, sx0:sx1]
    if variant:
        out = dihedral.apply(out, variant)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def _centre_of(item: GridItem) -> tuple[int, int]:
    h, w = item.mask.shape
    return h // 2, w // 2


def random_crop(item: GridItem, size: int, rng: np.random.Generator) -> np.ndarray:
    """A training crop: centre drawn with probability ~ depth in tissue, random variant."""
    h, w = item.mask.shape
    if h <= size and w <= size:
        cy, cx = _centre_of(item)
    else:
        depth = item.depth.ravel()
        if depth.sum() <= 0:
            cy, cx = int(rng.integers(h)), int(rng.integers(w))
        else:
            k = int(rng.choice(depth.size, p=depth / depth.sum()))
            cy, cx = divmod(k, w)
    return crop_at(item, cy, cx, size, int(rng.integers(8)))


def spread_centres(item: GridItem, size: int, n: int) -> list[tuple[int, int]]:
    """`n` crop centres spread over the tissue: the deepest cell first, then farthest-point
    sampling (deterministic), so test-time crops cover different parts of the slide."""
    h, w = item.mask.shape
    if h <= size and w <= size:
        return [_centre_of(item)]
    ys, xs = np.nonzero(item.mask)
    if len(ys) == 0:
        return [_centre_of(item)]
    depth = item.depth[ys, xs]
    chosen = [int(np.argmax(depth))]
    dist = np.hypot(ys - ys[chosen[0]], xs - xs[chosen[0]])
    while len(chosen) < min(n, len(ys)):
        nxt = int(np.argmax(dist))
        if dist[nxt] < size / 4:  # everything already covered
            break
        chosen.append(nxt)
        dist = np.minimum(dist, np.hypot(ys - ys[nxt], xs - xs[nxt]))
    return [(int(ys[i]), int(xs[i])) for i in chosen]


def tta_crops(item: GridItem, size: int, n_crops: int, variants: int) -> np.ndarray:
    """(n_centres * variants, C, size, size): the test-time augmentation set of one slide."""
    ks = list(range(min(max(variants, 1), 8)))
    return np.stack(
        [
            crop_at(item, cy, cx, size, k)
            for cy, cx in spread_centres(item, size, n_crops)
            for k in ks
        ]
    )
