"""encode_slide: slide -> tissue mask -> tile stream -> encoder -> embedding grid file(s).

Reading runs in worker threads (see stream.py) while the calling thread encodes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import dihedral
from ..bounds import MAX_BATCH, MAX_PATCH, check_range, check_workers
from ..encoders import Encoder
from ..errors import FormatError, OutputExistsError, SlideError, TissueError, UsageError
from ..progress import Advance, ProgressStart
from ..slide import SlideReader
from ..slide.tissue import TissueMask, detect_tissue
from ..store import EmbeddingGrid, format_for, read_grid, write_grid
from ..store.atomic import check_output, output_lock
from ..tiling import GridSpec, TileGrid, check_target_mpp, plan_grid
from ..viz import pca_rgb, save_png, tissue_overlay
from .items import SlideItem
from .provenance import content_sha256, slide_record, stamp
from .stream import iter_blocks

GRID_RULE = (
    "cols = floor((floor(W0 / f) - P) / S) + 1, rows likewise, f = level-0 px per output px; "
    "cell (r, c) top-left at level-0 (round(c*S*f), round(r*S*f))"
)
READER_NICE = 19  # reader threads' niceness next to a CPU torch encoder


@dataclass
class EncodeOptions:
    patch_size: int | None = None  # None: the encoder's own, else 128
    stride: int | None = None  # None: = patch size
    mpp: float | None = None  # None: the encoder's own, else 0.5
    tissue_threshold: float = 0.5
    augment: str = "none"  # none | dihedral
    fmt: str = "zarr"
    float16: bool = False
    overwrite: bool = False
    reader: str | None = None
    workers: int = 2
    batch_size: int = 64
    block_cells: int = 8  # read blocks of up to 8 x 8 cells per call
    previews: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.tissue_threshold <= 1.0:
            raise UsageError(f"tissue threshold must be within 0-1, got {self.tissue_threshold}")
        if self.augment not in ("none", "dihedral"):
            raise UsageError(f"augment must be 'none' or 'dihedral', got {self.augment!r}")
        check_workers(self.workers)
        check_range("patch size", self.patch_size, 1, MAX_PATCH)
        check_range("stride", self.stride, 1, MAX_PATCH)
        check_range("batch size", self.batch_size, 1, MAX_BATCH)
        check_range("block cells", self.block_cells, 1, 64)
        format_for(f"x.{self.fmt}")  # unknown format -> FormatError now, not after encoding
        check_target_mpp(self.mpp)

    def grid_spec(self, encoder: Encoder) -> GridSpec:
        p = self.patch_size or encoder.patch_size or 128
        return GridSpec(patch_size=p, stride=self.stride or p, mpp=self.mpp or encoder.mpp or 0.5)


@dataclass
class EncodeResult:
    slide: str
    outputs: list[Path]
    previews: list[Path] = field(default_factory=list)
    skipped: bool = False
    grid_shape: tuple[int, int, int] | None = None
    cells_kept: int = 0


def output_paths(slide: Path | SlideItem, out_dir: Path, opts: EncodeOptions) -> list[Path]:
    stem = SlideItem.of(slide).stem
    if opts.augment == "dihedral":
        return [out_dir / f"{stem}.d{k}.{opts.fmt}" for k in dihedral.VARIANTS]
    return [out_dir / f"{stem}.{opts.fmt}"]


def preview_paths(outputs: list[Path]) -> list[Path]:
    stem = outputs[0].name.rsplit(".", 1)[0]
    return [outputs[0].with_name(f"{stem}.tissue.png"), outputs[0].with_name(f"{stem}.pca.png")]


def _grid_hash(path: Path) -> str | None:
    try:
        return read_grid(path).metadata.get("params_hash")
    except FormatError:
        return None


def _already_done(paths: list[Path], previews: list[Path], params_hash: str) -> bool:
    """A result is complete only with all its files: every grid (same parameters) and the
    previews. Grids are written last, so a run killed midway is never taken as done."""
    if not all(p.exists() for p in previews):
        return False
    return all(p.exists() and _grid_hash(p) == params_hash for p in paths)


def _encode_cells(
    opener: Callable[[], SlideReader],
    grid: TileGrid,
    keep: np.ndarray,
    encoder: Encoder,
    variants: tuple[int, ...],
    opts: EncodeOptions,
    progress: Advance | None,
    row0: int = 0,
    nrows: int | None = None,
) -> list[np.ndarray]:
    """Feature arrays (rows, cols, C) in slide layout, one per dihedral variant; with `nrows`,
    only grid rows [row0, row0 + nrows) (a band: `keep` must be False outside it)."""
    nrows = grid.rows - row0 if nrows is None else nrows
    feats: list[np.ndarray] = []
    p = grid.spec.patch_size
    bs = opts.batch_size
    # Exactly `bs` patches per call: torch keeps a buffer per input shape, so varying batch
    # sizes cost ~400 MB of RSS on the 50k benchmark.
    buf = np.empty((bs, p, p, 3), np.uint8)
    rows = np.empty(bs, np.int64)
    cols = np.empty(bs, np.int64)
    n = 0

    def flush(m: int) -> None:
        patches, rr, cc = buf[:m], rows[:m], cols[:m]
        for i, k in enumerate(variants):
            out = encoder.encode(dihedral.apply(patches, k, axes=(1, 2)) if k else patches)
            if len(feats) <= i:
                feats.append(np.zeros((nrows, grid.cols, out.shape[1]), np.float32))
            feats[i][rr - row0, cc] = out
        if progress:
            progress(m)

    # torch keeps every core; the readers fill its gaps (see stream.iter_blocks)
    nice = READER_NICE if _uses_cpu_torch(encoder) else 0
    blocks = iter_blocks(opener, grid, keep, opts.workers, opts.block_cells, nice=nice)
    with closing(blocks):
        for (r0, r1, c0, c1), pixels in blocks:
            patches = grid.cut_patches(pixels, r0, r1, c0, c1)
            ii, jj = np.nonzero(keep[r0:r1, c0:c1])
            start = 0
            while start < len(ii):
                take = min(bs - n, len(ii) - start)
                sel_i, sel_j = ii[start : start + take], jj[start : start + take]
                buf[n : n + take] = patches[sel_i, sel_j]
                rows[n : n + take] = sel_i + r0
                cols[n : n + take] = sel_j + c0
                n += take
                start += take
                if n == bs:
                    flush(n)
                    n = 0
    if n:
        flush(n)
    return feats


def _uses_cpu_torch(encoder: Encoder) -> bool:
    return getattr(encoder, "device", "cpu") == "cpu" and hasattr(encoder, "module")


@dataclass
class EncodePlan:
    """Everything about one slide's encoding that is settled before any cell is encoded: the
    grid, the cells kept, the content key. Whole-slide runs and region runs (a Dask task per
    band of rows, merged later: `pipeline/encode_bands.py`) share it, so their grids are
    the same."""

    item: SlideItem
    opener: Callable[[], SlideReader]  # reader.reopen of the closed planning handle
    grid: TileGrid
    keep: np.ndarray
    fractions: np.ndarray
    tissue: TissueMask | None  # None when skipped
    record: dict[str, Any]
    params_hash: str
    sha256: str
    outputs: list[Path]
    previews: list[Path]
    variants: tuple[int, ...]
    skipped: bool = False

    @property
    def cells_kept(self) -> int:
        return int(self.keep.sum())


def plan_encode(
    slide: str | Path | SlideItem,
    out_dir: str | Path,
    encoder: Encoder,
    opts: EncodeOptions,
    *,
    sha256: str | None = None,
) -> EncodePlan:
    """Open the slide, plan its grid, compute the content key and the tissue cells; `skipped`
    when complete outputs for this key exist. `sha256`: the slide's hash when already known
    (region tasks get it from the planning task instead of re-reading the file)."""
    item = SlideItem.of(slide)
    path = item.path
    out_dir = check_output(out_dir, folder=True)
    spec = opts.grid_spec(encoder)
    with item.open(opts.reader) as reader:
        slide_mpp = reader.require_mpp()
        grid = plan_grid(reader, slide_mpp, spec)
        if grid.rows == 0 or grid.cols == 0:
            raise SlideError(
                f"{path.name}: smaller than one {spec.patch_size} px patch at {spec.mpp} um/px"
            )
        sha = sha256 or content_sha256(path)
        variants = dihedral.VARIANTS if opts.augment == "dihedral" else (0,)
        params = {
            "slide_sha256": sha,
            "grid": asdict(spec),
            "level_rule": grid.rule_description(),
            "mpp_used": slide_mpp,
            "encoder": encoder.describe(),
            "tissue_threshold": opts.tissue_threshold,
            "augment": opts.augment,
            "float16": opts.float16,
        }
        params_hash = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
        outputs = output_paths(item, out_dir, opts)
        previews = preview_paths(outputs) if opts.previews else []
        if not opts.overwrite and _already_done(outputs, previews, params_hash):
            return EncodePlan(
                item, reader.reopen, grid, np.zeros((0, 0), bool), np.zeros((0, 0)), None,
                {}, params_hash, sha, outputs, previews, variants, skipped=True,
            )  # fmt: skip
        # grids of the same slide and parameters are an interrupted run's: redo them
        clash = [p for p in outputs if p.exists() and _grid_hash(p) != params_hash]
        if clash and not opts.overwrite:
            raise OutputExistsError(
                f"{clash[0]} exists (other slide content or parameters); use --overwrite"
            )

        tissue = detect_tissue(reader, slide_mpp)
        fractions = tissue.fraction_in_boxes(grid.boxes()).reshape(grid.rows, grid.cols)
        keep = fractions >= opts.tissue_threshold
        if opts.tissue_threshold > 0:
            keep &= fractions > 0
        if not keep.any():
            raise TissueError(
                f"{path.name}: no tissue found (no cell with tissue fraction >= "
                f"{opts.tissue_threshold}); check the slide or lower --tissue-threshold"
            )
        record = slide_record(path, reader, sha)
    return EncodePlan(
        item, reader.reopen, grid, keep, fractions, tissue, record, params_hash, sha, outputs,
        previews, variants,
    )  # fmt: skip


def encode_rows(
    plan: EncodePlan,
    encoder: Encoder,
    opts: EncodeOptions,
    rows: tuple[int, int] | None = None,
    progress: Advance | None = None,
) -> list[np.ndarray]:
    """Features per variant of the kept cells: (rows, cols, C) for the whole grid, or
    (r1 - r0, cols, C) for the band of grid rows `rows` = (r0, r1); cells not kept are zero.
    Bands starting at multiples of `opts.block_cells` read the same blocks as a whole-slide
    run, so their pixels (and features) are the same."""
    if rows is None:
        return _encode_cells(plan.opener, plan.grid, plan.keep, encoder, plan.variants, opts,
                             progress)  # fmt: skip
    r0, r1 = rows
    keep = np.zeros_like(plan.keep)
    keep[r0:r1] = plan.keep[r0:r1]
    return _encode_cells(
        plan.opener, plan.grid, keep, encoder, plan.variants, opts, progress, r0, r1 - r0
    )


def write_encoded(
    plan: EncodePlan, feats: list[np.ndarray], encoder: Encoder, opts: EncodeOptions
) -> EncodeResult:
    """Previews, then the grid file(s) (atomically; their presence marks the result done)."""
    grid, keep, tissue = plan.grid, plan.keep, plan.tissue
    assert tissue is not None, "a skipped plan has nothing to write"
    n_kept = plan.cells_kept
    origins = grid.origins()
    base_meta = _metadata(plan.record, opts, grid, encoder, tissue, n_kept)
    base_meta["params_hash"] = plan.params_hash
    outputs, previews = plan.outputs, plan.previews
    outputs[0].parent.mkdir(parents=True, exist_ok=True)
    if previews:  # before the grids: the grids' presence marks the result complete
        save_png(tissue_overlay(tissue.thumbnail, tissue.mask), previews[0])
        save_png(pca_rgb(feats[0], keep), previews[1])
    for i, k in enumerate(plan.variants):
        meta = dict(base_meta, augment=dihedral.describe(k) | {"mode": opts.augment})
        g = EmbeddingGrid(
            features=dihedral.apply(feats[i], k),
            mask=dihedral.apply(keep, k),
            coords=dihedral.apply(origins, k),
            tissue_fraction=dihedral.apply(plan.fractions.astype(np.float32), k),
            tissue_mask=dihedral.apply(tissue.mask, k),
            metadata=meta,
        )
        write_grid(g, outputs[i], float16=opts.float16)
    return EncodeResult(
        str(plan.item.path),
        outputs,
        previews=previews,
        grid_shape=(grid.rows, grid.cols, feats[0].shape[2]),
        cells_kept=n_kept,
    )


def encode_slide(
    slide: str | Path | SlideItem,
    out_dir: str | Path,
    encoder: Encoder,
    opts: EncodeOptions,
    *,
    progress_start: ProgressStart | None = None,
) -> EncodeResult:
    """Encode one slide (a path, or a SlideItem with its own mpp override) into grid file(s)
    in `out_dir`; raises SlidepressError on bad input. One run at a time writes a slide's
    outputs (`output_lock`): a second one on the same folder is refused at once."""
    item = SlideItem.of(slide)
    out_dir = check_output(out_dir, folder=True)
    with output_lock(output_paths(item, out_dir, opts)[0]):
        plan = plan_encode(item, out_dir, encoder, opts)
        if plan.skipped:
            return EncodeResult(str(item.path), plan.outputs, previews=plan.previews, skipped=True)
        advance = progress_start(item.path.name, plan.cells_kept) if progress_start else None
        feats = encode_rows(plan, encoder, opts, None, advance)
        return write_encoded(plan, feats, encoder, opts)


def _metadata(
    record: dict[str, Any],
    opts: EncodeOptions,
    grid: TileGrid,
    encoder: Encoder,
    tissue: TissueMask,
    n_kept: int,
) -> dict[str, Any]:
    spec = grid.spec
    return {
        "format_version": 1,
        **stamp(),
        "slide": record,
        "grid": {
            "patch_size": spec.patch_size,
            "stride": spec.stride,
            "mpp_requested": spec.mpp,
            "mpp_effective": grid.effective_mpp,
            "level": grid.level,
            "level_downsample": grid.level_downsample,
            "level0_px_per_px": grid.scale,
            "resampled": grid.resample,
            "level_rule": grid.rule_description(),
            "patch_size_level0": spec.patch_size * grid.scale,
            "cell_pitch_um": spec.stride * grid.effective_mpp,
            "rows": grid.rows,
            "cols": grid.cols,
            "rule": GRID_RULE,
        },
        "encoder": encoder.describe(),
        "tissue": {
            **tissue.describe(),
            "threshold_fraction": opts.tissue_threshold,
            "cells_kept": n_kept,
        },
    }
