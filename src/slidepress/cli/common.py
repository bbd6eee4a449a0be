"""What every command shares: one-line errors, exit codes, progress bars, input expansion."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..errors import SlidepressError, UsageError
from ..jobs.options import MPP_OVERRIDE, READER
from ..jobs.qualities import QUALITIES_HELP
from .options import annotation

T = TypeVar("T")

# Options several commands share, declared once (same flag, same help everywhere); the
# options of jobs come from their specs (slidepress.jobs.options, rendered by cli/options.py).
SlidesArg = Annotated[
    list[str],
    typer.Argument(
        help="Slide files, DICOM folders, folders of slides, @sample; or URLs (s3://, gs://, "
        "az://, https://) of slides and prefixes."
    ),
]
MppOverrideOpt = annotation(MPP_OVERRIDE)
MppCsvOpt = Annotated[
    str | None, typer.Option(help="CSV 'slide,mpp' of per-slide level-0 overrides (path or URL).")
]
ReaderOpt = annotation(READER)
QualitiesOpt = Annotated[list[str] | None, typer.Option("--qualities", "-q", help=QUALITIES_HELP)]
EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT / SIGTERM, as shells report them


class Terminated(BaseException):  # noqa: N818 - a signal, like KeyboardInterrupt
    """SIGTERM, raised in the main thread so that cleanup runs as for Ctrl-C."""


console = Console(stderr=True, highlight=False)


def error_line(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True)


def debug_requested() -> bool:
    """SLIDEPRESS_DEBUG=1: tracebacks of internal errors are printed, not only their line."""
    return os.environ.get("SLIDEPRESS_DEBUG", "") not in ("", "0")


def failure_lines(error: str, traceback: str = "") -> None:
    """A slide's failure: its one line, and with SLIDEPRESS_DEBUG the traceback it carried
    from the runner (a bug in one slide is recorded, not raised, so a batch goes on)."""
    error_line(error)
    if traceback and debug_requested():
        console.print(traceback.rstrip(), markup=False, highlight=False, soft_wrap=True)


def warning_line(message: str) -> None:
    console.print(f"[bold yellow]warning:[/] {message}", soft_wrap=True, markup=True)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    error_line(message)
    raise SystemExit(code)


def guarded(fn: Callable[[], T]) -> T:
    """Run a command: user errors -> one line + exit 2, bugs -> one line + exit 1."""
    try:
        return fn()
    except SlidepressError as e:
        fail(str(e), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        fail("interrupted; partial outputs removed", EXIT_INTERRUPTED)
    except Terminated:
        fail("terminated; partial outputs removed", EXIT_TERMINATED)
    except (SystemExit, Exception) as e:
        if isinstance(e, SystemExit):
            raise
        if debug_requested():
            raise
        fail(
            f"internal error: {type(e).__name__}: {e} (set SLIDEPRESS_DEBUG=1 for a traceback)",
            EXIT_INTERNAL,
        )


def show_staging() -> None:
    """Print remote.py's notes (a slide staged to the local cache) as they happen."""
    log = logging.getLogger("slidepress.remote")
    if not any(isinstance(h, _NoteHandler) for h in log.handlers):
        log.addHandler(_NoteHandler())
        log.setLevel(logging.INFO)


class _NoteHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        console.print(f"note: {record.getMessage()}", markup=False, highlight=False)


def check_output_at(
    output: str, *, overwrite: bool = False, folder: bool = False, inputs: tuple = ()
) -> None:
    """`store.atomic.check_output` for a path, or the same checks for a URL: writable
    (protocol, bucket, access), and an existing object replaced only with --overwrite."""
    from .. import remote
    from ..store.atomic import check_output

    if not remote.is_url(output):
        check_output(remote.local(output), overwrite=overwrite, folder=folder, inputs=inputs)
        return
    remote.check_writable(output, folder=folder)
    if any(str(i) == output for i in inputs):
        raise UsageError(f"refusing to overwrite the input {remote.public(output)}")
    if not folder and not overwrite and remote.exists(output):
        raise UsageError(f"{remote.public(output)} exists; use --overwrite to replace it")


@contextmanager
def written_at(output: str) -> Iterator[Path]:
    """A local path to write `output` at: the path itself, or for a URL a file in a work
    folder, uploaded (atomically, remote.upload) when the block ends without an error."""
    from .. import remote

    if not remote.is_url(output):
        yield remote.local(output)
        return
    with remote.work_folder() as work:
        local = work / remote.name(output)
        yield local
        remote.upload(local, output)


def check_report_folder(folder: Path, marker: str, overwrite: bool) -> None:
    """A report folder may exist, but an earlier report in it is replaced only on request."""
    from ..store.atomic import check_output

    check_output(folder, folder=True)
    if (folder / marker).exists() and not overwrite:
        raise UsageError(f"{folder} already holds a report ({marker}); use --overwrite")


def check_png(output: Path) -> None:
    if output.suffix.lower() != ".png":
        raise UsageError(f"{output}: the picture is written as PNG; name it .png")


def slide_items(
    slides: list[str], mpp_override: float | None = None, mpp_csv: str | None = None
) -> list:
    """SlideItems for the slides named on the command line, each with its level-0 mpp
    override (one for all, or per slide from a CSV table)."""
    from ..pipeline.items import SlideItem
    from ..slide.mpp import load_mpp_csv, lookup_override

    if mpp_override is not None and mpp_csv is not None:
        raise UsageError("give either --mpp-override or --mpp-csv, not both")
    table = load_mpp_csv(mpp_csv) if mpp_csv else {}
    items = []
    for p in expand_slides(slides):
        if table:
            items.append(SlideItem(p, lookup_override(p, table), "table"))
        else:
            items.append(SlideItem(p, mpp_override))
    return items


def run_and_report(items: list, job, out_dir: str, unit: str, report: str | None) -> int:
    """Run a batch with progress bars, print one line per slide, write `report` (report.csv)
    and return the exit code: 0 all done or skipped, 2 a slide had bad input, 1 a bug."""
    from ..pipeline.batch import run_batch, write_report

    outcomes = []
    with progress_bars(unit=unit) as start:
        for o in run_batch(items, job, out_dir, progress=start):
            outcomes.append(o)
            if o.status == "failed":
                failure_lines(o.error, o.traceback)
            elif o.status == "skipped":
                console.print(f"{o.slide}: up to date, skipped ({o.outputs[0]})")
            else:
                console.print(f"{o.slide} -> {o.summary}; {o.seconds:.1f} s")
                for note in o.notes:
                    console.print(f"  {note}")
                for warning in o.warnings:
                    warning_line(f"{o.slide}: {warning}")
    # a lone slide that failed on bad input leaves nothing behind, not even a report
    if report is not None and (len(outcomes) > 1 or any(o.status != "failed" for o in outcomes)):
        from .. import remote

        if not remote.is_url(report):
            Path(report).parent.mkdir(parents=True, exist_ok=True)
        with written_at(report) as local:
            write_report(local, outcomes)
    if any(o.internal for o in outcomes):
        return EXIT_INTERNAL
    return EXIT_BAD_INPUT if any(o.status == "failed" for o in outcomes) else EXIT_OK


def expand_slides(inputs: list[str]) -> list[Path | str]:
    """Slides named on the command line; a folder stands for the slides it holds
    (`slide.discovery.slides_in`: itself when it is a DICOM WSI series, its slide files and
    DICOM sub-folders); a URL prefix likewise (`slides_at_url`)."""
    from .. import remote
    from ..slide import SAMPLE_NAME, resolve_slide_path
    from ..slide.discovery import slides_at_url, slides_in

    show_staging()
    out: list[Path | str] = []
    for item in inputs:
        if remote.is_url(item):
            if remote.isdir(item):
                found = slides_at_url(item)
                if not found:
                    raise UsageError(f"{remote.public(item)}: prefix holds no slides")
                # a prefix of .dcm files is one DICOM slide: itself
                out.extend([item.rstrip("/")] if found == [item.rstrip("/")] else found)
            else:
                remote.info(item)  # a missing object or bucket: one line now
                out.append(item)
            continue
        p = resolve_slide_path(item) if item == SAMPLE_NAME else remote.local(item)
        if p.is_dir():
            found = slides_in(p)
            if not found:
                raise UsageError(f"{p}: folder holds no slides")
            out.extend(found)
        else:
            out.append(p)
    return out


@contextmanager
def progress_bars(unit: str = "cells") -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """Yield `start(name, total) -> advance(n)`; one bar per slide, shown on stderr."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as prog:

        def start(name: str, total: int) -> Callable[[int], None]:
            task = prog.add_task(name, total=total)
            return lambda n: prog.advance(task, n)

        yield start
