"""What compression does to the NIC grid of a whole slide: `slidepress compare ORIG COMPRESSED`.

Both slides are laid with the same grid (the encoder's patch size and mpp, origin at the
slide's top-left: a container's level 0 is its source's, resampled, so cells cover the same
tissue; the compressed slide is read at the original grid's exact resolution), the cells
kept are the original's tissue cells, and every kept cell is encoded from both. Per cell: the
cosine similarity of the two embeddings (what the slide-level model sees) and the squared
error of the pixels at the grid's resolution (PSNR over tissue).
`compress --embedding-similarity` scores the stored tiles; this scores the grid.

Outputs in DIR: cosine.npy ((rows, cols) float32, NaN where no cell was kept; aligned with the
grid of `encode`), heatmap.png (cosine over the original's thumbnail), compare.json (the
figures and the grid's geometry on the original's level 0: cell (r, c) covers
x = c * cell_stride_px, y = r * cell_stride_px, cell_size_px square, of slide_size; a viewer
draws the cosine array over the slide from it).

`CompareJob` is the batch runner's job kind `compare` (the service's compare jobs): each item
is a compressed slide, its original named by the job (`originals`, by the item's path).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import SlideError, TissueError, UsageError
from ..progress import ProgressStart
from ..slide import open_slide
from ..slide.tissue import detect_tissue
from ..store.atomic import atomic_path, check_output
from ..tiling import GridSpec, LevelRule, plan_grid
from .batch import Job, Outcome, output_bytes
from .items import SlideItem
from .provenance import stamp

DEFAULT_ENCODER = "nic-multitask"
WORST = 10  # cells listed in the report
HEAT_FLOOR = 0.95  # heat-map colour scale: cosine HEAT_FLOOR (blue) .. 1 (red)


@dataclass
class CompareResult:
    original: str
    compressed: str
    encoder: str
    grid: dict[str, Any]
    cells: int
    mean: float
    p5: float
    min: float
    psnr_tissue: float
    worst: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    # the compressed container's own figures (its manifest: codec, fidelity); {}: not one
    container: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{self.cells} cells: cosine mean {self.mean:.5f}, 5th percentile {self.p5:.5f}, "
            f"worst {self.min:.5f}; PSNR over tissue {self.psnr_tissue:.2f} dB"
        )


OUTPUTS = ("cosine.npy", "heatmap.png", "compare.json")
# what compare.json repeats from a compressed container's manifest (slide properties)
CONTAINER_FACTS = {
    "codec": "slidepress.codec.name", "quality": "slidepress.codec.quality",
    "psnr_db": "slidepress.fidelity.psnr_db", "ms_ssim": "slidepress.fidelity.ms_ssim",
    "tiles_stored": "slidepress.tiles.stored", "tiles_total": "slidepress.tiles.total",
}  # fmt: skip


def _container_facts(properties: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, key in CONTAINER_FACTS.items():
        if key in properties:
            try:
                out[name] = float(properties[key])
            except ValueError:
                out[name] = properties[key]
    return out


def compare_grids(
    original: str | Path,
    compressed: str | Path,
    out_dir: str | Path | None = None,
    *,
    encoder: str = DEFAULT_ENCODER,
    loaded_encoder: Any = None,
    tissue_threshold: float = 0.5,
    original_mpp: float | None = None,
    batch_size: int = 64,
    block_cells: int = 8,
    progress_start: ProgressStart | None = None,
    overwrite: bool = False,
) -> CompareResult:
    """Encode the same grid of `original` and `compressed` with `encoder`; per-cell cosine and
    tissue PSNR at the grid's resolution. Writes OUTPUTS to `out_dir` when given (existing
    ones only with `overwrite`). `loaded_encoder`: `encoder` already loaded (a batch loads it
    once); `original_mpp`: the original's level-0 um/px instead of its file's (a
    container records its own)."""
    from ..encoders import get_encoder

    original, compressed = Path(original), Path(compressed)
    if out_dir is not None:
        out_dir = check_output(out_dir, folder=True)
        earlier = [out_dir / n for n in OUTPUTS if (out_dir / n).exists()]
        if earlier and not overwrite:  # before any work: replaced only on request
            raise UsageError(f"{earlier[0]} exists; use --overwrite to replace it")
    enc = loaded_encoder if loaded_encoder is not None else get_encoder(encoder)
    spec = GridSpec(enc.patch_size or 128, enc.patch_size or 128, enc.mpp or 0.5)
    with open_slide(original, mpp_override=original_mpp) as a, open_slide(compressed) as b:
        ga = plan_grid(a, a.require_mpp(), spec)
        # the original's cells exactly (its level may have snapped within 5 % of the target):
        # the compressed slide is resampled to that resolution, snapping only to a level
        # that matches it
        same = GridSpec(spec.patch_size, spec.stride, ga.effective_mpp)
        gb = plan_grid(b, b.require_mpp(), same, LevelRule(snap_tolerance=1e-3))
        rows, cols = min(ga.rows, gb.rows), min(ga.cols, gb.cols)
        if rows == 0 or cols == 0:
            raise SlideError(f"{original.name}: smaller than one grid cell at {spec.mpp} um/px")
        tissue = detect_tissue(a, a.require_mpp())
        frac = tissue.fraction_in_boxes(ga.boxes()).reshape(ga.rows, ga.cols)[:rows, :cols]
        keep = (frac >= tissue_threshold) & (frac > 0)
        if not keep.any():
            raise TissueError(f"{original.name}: no tissue cell to compare")
        ga = _crop(ga, rows, cols)
        gb = _crop(gb, rows, cols)
        cos = np.full((rows, cols), np.nan, np.float32)
        sq = np.zeros((rows, cols), np.float64)  # per-cell sum of squared pixel errors
        advance = progress_start(original.name, int(keep.sum())) if progress_start else None
        pending: list[tuple[int, int, np.ndarray, np.ndarray]] = []

        def flush() -> None:
            pa = np.stack([p for _, _, p, _ in pending])
            pb = np.stack([p for _, _, _, p in pending])
            ea, eb = enc.encode(pa).astype(np.float64), enc.encode(pb).astype(np.float64)
            na, nb = np.linalg.norm(ea, axis=1), np.linalg.norm(eb, axis=1)
            c = (ea * eb).sum(1) / np.maximum(na * nb, 1e-12)
            c[(na == 0) & (nb == 0)] = 1.0
            for (r, col, _, _), v in zip(pending, c, strict=True):
                cos[r, col] = v
            if advance:
                advance(len(pending))
            pending.clear()

        for r0, r1, c0, c1 in ga.blocks(keep, block_cells):
            xa = ga.cut_patches(ga.read_block(a, r0, r1, c0, c1), r0, r1, c0, c1)
            xb = gb.cut_patches(gb.read_block(b, r0, r1, c0, c1), r0, r1, c0, c1)
            for i, j in zip(*np.nonzero(keep[r0:r1, c0:c1]), strict=True):
                pa, pb = xa[i, j], xb[i, j]
                sq[r0 + i, c0 + j] = np.sum((pa.astype(np.float64) - pb) ** 2)
                pending.append((r0 + i, c0 + j, pa.copy(), pb.copy()))
                if len(pending) == batch_size:
                    flush()
        if pending:
            flush()
        thumb, thumb_ds = a.thumbnail(1024)
        origins = ga.origins()
        container = _container_facts(b.info.properties or {})
    vals = cos[keep]
    n_px = int(keep.sum()) * spec.patch_size**2 * 3
    mse = float(sq[keep].sum()) / n_px
    psnr = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
    order = np.argsort(np.where(keep, cos, np.inf), axis=None)[: min(WORST, len(vals))]
    worst = [
        {"row": int(r), "col": int(c), "x": int(origins[r, c, 0]), "y": int(origins[r, c, 1]),
         "cosine": float(cos[r, c])}
        for r, c in zip(*np.unravel_index(order, cos.shape), strict=True)
    ]  # fmt: skip
    result = CompareResult(
        original=str(original), compressed=str(compressed), encoder=encoder,
        grid={**asdict(spec), "rows": rows, "cols": cols, "effective_mpp": ga.effective_mpp,
              # where the cells lie on the original's level 0 (origin at its top-left)
              "slide_mpp": ga.slide_mpp, "slide_size": list(ga.slide_size),
              "cell_stride_px": spec.stride * ga.scale, "cell_size_px": spec.patch_size * ga.scale},
        cells=int(keep.sum()), mean=float(vals.mean()), p5=float(np.percentile(vals, 5)),
        min=float(vals.min()), psnr_tissue=psnr, worst=worst, container=container,
    )  # fmt: skip
    if out_dir is not None:
        result.outputs = _write(out_dir, result, cos, keep, thumb, thumb_ds, ga)
    return result


def _crop(grid, rows: int, cols: int):
    from dataclasses import replace

    return replace(grid, rows=rows, cols=cols)


def _write(out_dir: Path, result: CompareResult, cos, keep, thumb, thumb_ds, grid) -> list[str]:
    from ..viz import heatmap_overlay, save_png

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    p = out_dir / "cosine.npy"
    with atomic_path(p) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, cos)
    paths.append(p)
    # the thumbnail's part that the grid covers, then each cell coloured by its cosine
    extent = grid.spec.stride * grid.scale
    w = min(thumb.shape[1], max(1, round(grid.cols * extent / thumb_ds)))
    h = min(thumb.shape[0], max(1, round(grid.rows * extent / thumb_ds)))
    heat = np.clip((np.nan_to_num(cos, nan=1.0) - HEAT_FLOOR) / (1 - HEAT_FLOOR), 0, 1)
    p = save_png(heatmap_overlay(thumb[:h, :w], 1 - heat, keep), out_dir / "heatmap.png")
    paths.append(p)
    p = out_dir / "compare.json"
    # file names, not paths: the service hands this file to users
    doc = {**stamp(), **asdict(result), "original": Path(result.original).name,
           "compressed": Path(result.compressed).name, "outputs": [x.name for x in paths],
           "heatmap_scale": f"red: cosine <= {HEAT_FLOOR}, blue: 1",
           "heat_floor": HEAT_FLOOR}  # fmt: skip
    with atomic_path(p) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=1, default=str))
    paths.append(p)
    return [str(x) for x in paths]


@dataclass
class CompareJob(Job):
    """`compare`: per item (a compressed slide, usually a container), its grid against its
    original's, into `out_dir/STEM.compare/` (OUTPUTS). The original comes from `originals`
    (item path -> original path: the service's jobs) or `original` (one for every item)."""

    kind: ClassVar[str] = "compare"
    options: dict[str, Any] = field(default_factory=dict)  # compare_grids keywords
    originals: dict[str, str] = field(default_factory=dict)
    original: str | None = None

    OPTIONS: ClassVar[frozenset[str]] = frozenset(
        {"encoder", "tissue_threshold", "batch_size", "overwrite"}
    )

    def __post_init__(self) -> None:
        from ..encoders import check_spec

        unknown = sorted(set(self.options) - self.OPTIONS)
        if unknown:
            raise UsageError(f"compare takes no option {unknown[0]!r}")
        self._encoder_name = self.options.get("encoder", DEFAULT_ENCODER)
        check_spec(self._encoder_name)  # unknown names fail now, before torch loads
        self._encoder = None

    def prepare(self) -> None:
        from .batch import _cached_encoder

        self._encoder = _cached_encoder(self._encoder_name, None)

    refuses_existing: ClassVar[bool] = True  # no content key: replaced only on request

    def outputs(self, item: SlideItem, out_dir: Path) -> list[Path]:
        folder = self.output_for(item, out_dir)
        return [folder / name for name in OUTPUTS]

    def overwrite(self) -> bool:
        return bool(self.options.get("overwrite"))

    def output_for(self, item: SlideItem, out_dir: Path) -> Path:
        return out_dir / f"{item.stem}.compare"

    def original_for(self, item: SlideItem) -> Path:
        path = self.originals.get(str(item.path)) or self.original
        if not path:
            raise UsageError(f"{item.name}: no original to compare it with")
        return Path(path)

    def run(self, item: SlideItem, out_dir: Path, progress: ProgressStart | None) -> Outcome:
        if self._encoder is None:
            self.prepare()
        opts = {k: v for k, v in self.options.items() if k != "encoder"}
        original = self.original_for(item)
        r = compare_grids(
            original, item.path, self.output_for(item, out_dir), encoder=self._encoder_name,
            loaded_encoder=self._encoder,
            original_mpp=item.mpp_override, progress_start=progress, **opts,
        )  # fmt: skip
        psnr = r.psnr_tissue if math.isfinite(r.psnr_tissue) else "inf"
        return Outcome(
            slide=item.name, path=str(item.path), status="done", units="cells", count=r.cells,
            bytes_in=output_bytes([item.path]), bytes_out=output_bytes(map(Path, r.outputs)),
            outputs=r.outputs, summary=f"vs {original.name} ({self._encoder_name}): "
            f"{r.summary()}",
            metrics={"encoder": self._encoder_name, "cosine_mean": round(r.mean, 6),
                     "cosine_p5": round(r.p5, 6), "cosine_min": round(r.min, 6),
                     "psnr_tissue": round(psnr, 3) if psnr != "inf" else psnr,
                     **{f"container_{k}": v for k, v in r.container.items()}},
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "options": dict(self.options),
                "originals": dict(self.originals), "original": self.original}  # fmt: skip
