"""`slidepress batch INPUT -o OUTDIR encode|compress ...`: a whole archive on Dask.

Parses, builds the same job as `encode` / `compress` (pipeline/batch.py), hands it to the
Dask runner (slidepress.distributed) and prints; exit 0 when every slide is done or up to
date, 2 when some had bad input, 1 on a bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ..jobs.options import BATCH, COMPRESS, ENCODE, JobSpec
from .common import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_OK,
    MppOverrideOpt,
    check_output_at,
    console,
    failure_lines,
    guarded,
    show_staging,
    warning_line,
)
from .options import build_job, with_options


class BatchGroup(TyperGroup):
    """`batch INPUT -o OUT [dask options] JOB [job options]`: click stops parsing a group's
    options at its first positional, so the group's own options are moved before INPUT; what
    follows the job name is the job's (its `--threads` are per slide, the group's `--workers`
    are Dask processes). Whether an option takes a value is asked of click's own parameter
    objects (a flag takes none), not guessed."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        takes_value = {
            name: not (p.is_flag or p.count)
            for p in self.get_params(ctx)
            if p.param_type_name == "option"
            for name in (*p.opts, *p.secondary_opts)
        }
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
                attached = "=" in a or (not a.startswith("--") and len(a) > 2)  # -oOUT
                name = a.partition("=")[0] if a.startswith("--") else a[:2]
                # an unknown option takes no value here: click names it in its error
                if not attached and takes_value.get(name, False) and i + 1 < len(args):
                    opts.append(args[i + 1])
                    i += 1
            else:
                positional.append(a)
                if len(positional) == 2 and a in self.commands:
                    break
            i += 1
        return super().parse_args(ctx, [*opts, *positional, *args[i + 1 :]])


batch_app = typer.Typer(
    cls=BatchGroup,
    help="Run encode or compress over a whole archive on Dask (a local cluster, or an existing "
    "one by address): resumable, one report for all slides.",
    no_args_is_help=True,
)


@dataclass
class BatchState:
    source: str
    output: str
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
            "slide; or a URL of any of them (s3://BUCKET/PREFIX/ ...).",
        ),
    ],
    output: Annotated[str, typer.Option("-o", "--output", help="Output folder (path or URL).")],
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
        int,
        typer.Option(
            help="Local cluster: slides run at once by each worker process (each slide with "
            "the job's --threads)."
        ),
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

    from .. import remote
    from ..distributed.manifest import discover
    from ..distributed.report import write_reports
    from ..distributed.runner import ClusterOptions, run_tasks

    opts = ClusterOptions(
        scheduler=state.scheduler, workers=state.workers,
        threads_per_worker=state.threads_per_worker, region_px=state.region_mpx * 1e6,
        band_rows=state.region_rows,
    )  # fmt: skip
    check_output_at(state.output, folder=True)
    show_staging()
    tasks = discover(state.source, state.output, state.mpp_override)
    if not remote.is_url(state.output):
        remote.local(state.output).mkdir(parents=True, exist_ok=True)
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
    if remote.is_url(state.output):  # written locally, then each uploaded whole
        with remote.work_folder() as work:
            paths = write_reports(work, result, title=f"slidepress batch {job.kind}")
            for key in ("csv", "md", "png"):
                if isinstance(paths.get(key), Path) and paths[key].is_file():
                    url = remote.join(state.output, paths[key].name)
                    remote.upload(paths[key], url)
                    paths[key] = url
    else:
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


def _job_command(spec: JobSpec, doc: str) -> Any:
    """`batch ... KIND [options]`: the options of `slidepress KIND`, from the same spec."""

    def command(ctx: typer.Context, *, options: dict[str, Any]) -> None:
        state: BatchState = ctx.obj
        job = guarded(lambda: build_job(spec, options))
        raise SystemExit(guarded(lambda: _execute(state, job)))

    command.__doc__ = doc
    return with_options(spec.for_target(BATCH))(command)


batch_app.command("encode")(
    _job_command(ENCODE, "Encode every slide into an embedding grid (the options of "
                 "'slidepress encode').")
)  # fmt: skip
batch_app.command("compress")(
    _job_command(COMPRESS, "Compress every slide into a container SLIDE.spz (the options of "
                 "'slidepress compress').")
)  # fmt: skip
