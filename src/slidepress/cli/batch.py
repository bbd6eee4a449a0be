"""`slidepress batch INPUT -o OUTDIR encode|compress ...`: a whole archive on Dask.

Parses, builds the same job as `encode` / `compress` (pipeline/batch.py), hands it to the
Dask runner (slidepress.distributed) and prints; exit 0 when every slide is done or up to
date, 2 when some had bad input, 1 on a bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from ..codecs import CODECS
from .common import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_OK,
    MppOverrideOpt,
    ReaderOpt,
    console,
    failure_lines,
    guarded,
    warning_line,
)


class _BatchGroup(TyperGroup):
    """`batch INPUT -o OUT [dask options] JOB [job options]`: click stops parsing a group's
    options at its first positional, so the group's own options are moved before INPUT; what
    follows the job name is the job's (its `--workers` is not the cluster's)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        opts: list[str] = []
        positional: list[str] = []
        i = 0
        while i < len(args):
            a = args[i]
            if a == "--":
                positional += args[i + 1 :]
                i = len(args)
                break
            if a.startswith("-") and len(a) > 1:
                opts.append(a)
                if "=" not in a and a != "--help" and i + 1 < len(args):
                    opts.append(args[i + 1])
                    i += 1
            else:
                positional.append(a)
                if len(positional) == 2 and a in self.commands:
                    break
            i += 1
        return super().parse_args(ctx, [*opts, *positional, *args[i + 1 :]])


batch_app = typer.Typer(
    cls=_BatchGroup,
    help="Run encode or compress over a whole archive on Dask (a local cluster, or an existing "
    "one by address): resumable, one report for all slides.",
    no_args_is_help=True,
)
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        help="Replace outputs made from other slide content or parameters (up-to-date ones are "
        "still skipped)."
    ),
]


@dataclass
class BatchState:
    source: str
    output: Path
    scheduler: str
    workers: int | None
    threads_per_worker: int
    region_mpx: float
    region_rows: int
    mpp_override: float | None


@batch_app.callback()
def batch(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(
            metavar="INPUT",
            help="A folder (searched recursively: slide files and DICOM folders), a CSV "
            "manifest (column 'path', optional 'mpp'; other columns go to the report) or one "
            "slide.",
        ),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")],
    scheduler: Annotated[
        str,
        typer.Option(
            help="'local' (a Dask LocalCluster on this machine) or a scheduler address, "
            "tcp://HOST:8786 (a cluster from dask-jobqueue, dask-kubernetes, 'dask scheduler')."
        ),
    ] = "local",
    workers: Annotated[
        int | None,
        typer.Option(help="Local cluster: worker processes (default: cores, at most slides)."),
    ] = None,
    threads_per_worker: Annotated[
        int, typer.Option(help="Local cluster: slides run at once by each worker.")
    ] = 1,
    region_mpx: Annotated[
        float,
        typer.Option(
            help="Slides above this many level-0 megapixels are split into bands of rows, "
            "each a task, merged into the same output a whole-slide run writes (0: never split)."
        ),
    ] = 2000.0,
    region_rows: Annotated[
        int,
        typer.Option(
            help="Rows per band of a split slide: encode grid rows, compress level-0 tile rows "
            "(both rounded down to a multiple of the read block)."
        ),
    ] = 64,
    mpp_override: MppOverrideOpt = None,
) -> None:
    """Run a job over INPUT on Dask; outputs, report.csv, report.md and throughput.png in -o."""
    ctx.obj = BatchState(
        source, output, scheduler, workers, threads_per_worker, region_mpx, region_rows,
        mpp_override,
    )  # fmt: skip


def _execute(state: BatchState, job: Any) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..distributed.manifest import discover
    from ..distributed.report import write_reports
    from ..distributed.runner import ClusterOptions, run_tasks
    from ..store.atomic import check_output

    opts = ClusterOptions(
        scheduler=state.scheduler, workers=state.workers,
        threads_per_worker=state.threads_per_worker, region_px=state.region_mpx * 1e6,
        band_rows=state.region_rows,
    )  # fmt: skip
    check_output(state.output, folder=True)
    tasks = discover(state.source, state.output, state.mpp_override)
    state.output.mkdir(parents=True, exist_ok=True)
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("slides"), TimeElapsedColumn(),
    )  # fmt: skip
    with Progress(*columns, console=console, transient=True) as prog:
        bar = prog.add_task(f"{job.kind} (starting Dask)", total=len(tasks))

        def on_event(kind: str, d: dict[str, Any]) -> None:
            if kind == "cluster":
                prog.update(bar, description=job.kind)
                where = "local cluster" if state.scheduler == "local" else state.scheduler
                console.print(
                    f"Dask: {d['workers']} worker(s) on {where}, {len(tasks)} slides"
                    + (f"; dashboard {d['dashboard']}" if d["dashboard"] else "")
                )
            elif kind == "split":
                console.print(f"{d['slide']}: split into {d['regions']} region tasks")
            elif kind == "slide":
                prog.advance(bar)
                if d["status"] == "failed":
                    failure_lines(d["error"], d.get("traceback", ""))
                elif d["status"] == "skipped":
                    console.print(f"{d['slide']}: up to date, skipped")
                else:
                    console.print(f"{d['slide']} -> {d['summary']}; {d['seconds']:.1f} s")
                    for warning in d.get("warnings", ()):
                        warning_line(f"{d['slide']}: {warning}")

        result = run_tasks(tasks, job, opts, on_event)
    paths = write_reports(state.output, result, title=f"slidepress batch {job.kind}")
    t = paths["totals"]
    console.print(
        f"{t['done']} done, {t['skipped']} skipped, {t['failed']} failed in {t['wall_s']:.1f} s "
        f"({t['slides_per_min']:.1f} slides/min, {t['units_per_s']:.0f} {t['units']}/s); "
        f"report: {paths['csv']}, {paths['md']}"
    )
    if any(o.internal for o in result.outcomes):
        return EXIT_INTERNAL
    return EXIT_BAD_INPUT if t["failed"] else EXIT_OK


@batch_app.command("encode")
def batch_encode(
    ctx: typer.Context,
    encoder: Annotated[str, typer.Option(help="Encoder name (see 'encoders').")] = "mean-rgb",
    patch_size: Annotated[int | None, typer.Option(help="Patch side in px at --mpp.")] = None,
    stride: Annotated[int | None, typer.Option(help="Cell pitch in px.")] = None,
    mpp: Annotated[float | None, typer.Option(help="Target um/px.")] = None,
    tissue_threshold: Annotated[
        float, typer.Option(help="Keep cells whose tissue fraction is >= this (0-1).")
    ] = 0.5,
    augment: Annotated[str, typer.Option(help="'none' or 'dihedral'.")] = "none",
    fmt: Annotated[str, typer.Option("--format", help="zarr | npz | mha | h5.")] = "zarr",
    float16: Annotated[bool, typer.Option(help="Store features as float16.")] = False,
    overwrite: OverwriteOpt = False,
    reader: ReaderOpt = None,
    workers: Annotated[int, typer.Option(help="Slide-reading threads per slide.")] = 2,
    batch_size: Annotated[int, typer.Option(help="Patches per encoder call.")] = 64,
    device: Annotated[str | None, typer.Option(help="torch device on the workers.")] = None,
) -> None:
    """Encode every slide into an embedding grid (the options of 'slidepress encode')."""
    state: BatchState = ctx.obj

    def prepare() -> Any:
        from ..pipeline.batch import EncodeJob

        options = dict(
            patch_size=patch_size, stride=stride, mpp=mpp, tissue_threshold=tissue_threshold,
            augment=augment, fmt=fmt, float16=float16, overwrite=overwrite, reader=reader,
            workers=workers, batch_size=batch_size,
        )  # fmt: skip
        return EncodeJob(encoder=encoder, device=device, options=options)  # checks options

    job = guarded(prepare)
    raise SystemExit(guarded(lambda: _execute(state, job)))


@batch_app.command("compress")
def batch_compress(
    ctx: typer.Context,
    codec: Annotated[str, typer.Option(help=f"{', '.join(CODECS.names())}.")] = "jpegxl",
    quality: Annotated[float | None, typer.Option(help="Codec quality knob.")] = None,
    tile: Annotated[int, typer.Option(help="Tile side in px.")] = 256,
    level: Annotated[int | None, typer.Option(help="Source pyramid level to store.")] = None,
    mpp: Annotated[float | None, typer.Option(help="Store at this um/px.")] = None,
    background: Annotated[str, typer.Option(help="skip | constant | keep.")] = "skip",
    workers: Annotated[int, typer.Option(help="Tile-coding threads per slide.")] = 2,
    ms_ssim: Annotated[bool, typer.Option(help="Also MS-SSIM (loads torch).")] = False,
    feature_similarity: Annotated[
        bool, typer.Option(help="Also feature similarity (loads torch).")
    ] = False,
    embedding_similarity: Annotated[
        str | None, typer.Option(metavar="ENCODER", help="Also this encoder's similarity.")
    ] = None,
    overwrite: OverwriteOpt = False,
    reader: ReaderOpt = None,
) -> None:
    """Compress every slide into a container SLIDE.spz (the options of 'slidepress compress')."""
    state: BatchState = ctx.obj

    def prepare() -> Any:
        from ..pipeline.batch import CompressJob

        options = dict(
            codec=codec, quality=quality, tile=tile, level=level, mpp=mpp,
            background=background, workers=workers, overwrite=overwrite, reader=reader,
            ms_ssim=ms_ssim, feature_similarity=feature_similarity,
            embedding_similarity=embedding_similarity,
        )  # fmt: skip
        return CompressJob(options=options)

    job = guarded(prepare)
    raise SystemExit(guarded(lambda: _execute(state, job)))
