"""`slidepress` command line. Exit codes: 0 ok, 2 bad input or usage, 1 internal error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import __version__
from ..jobs.options import CLI, ENCODE
from .common import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    MppCsvOpt,
    MppOverrideOpt,
    ReaderOpt,
    SlidesArg,
    Terminated,
    check_output_at,
    check_png,
    console,
    error_line,
    guarded,
    run_and_report,
    show_staging,
    slide_items,
    written_at,
)
from .options import build_job, with_options

app = typer.Typer(
    name="slidepress",
    help="Compress pathology whole-slide images: NIC embedding grids and coded tile containers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"slidepress {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print version.")
    ] = False,
    limit: Annotated[
        list[str] | None,
        typer.Option(
            help="Raise a safety limit on input files, NAME=VALUE, e.g. max_pixels=1e11; "
            "repeatable. Names: max_pixels, max_side, max_levels, max_pages, max_tile_side, "
            "max_image_pixels, max_pixels_per_byte, max_entry_bytes."
        ),
    ] = None,
) -> None:
    """Slide in, compressed slide out. Use '@sample' as SLIDE for the bundled CMU-1 crop."""
    if limit:
        from .. import limits

        guarded(lambda: limits.configure(**limits.parse_assignments(limit)))


@app.command()
def info(
    slide: Annotated[
        str,
        typer.Argument(help="Slide file, DICOM folder, container (.spz) or @sample; or a URL."),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    thumbnail: Annotated[
        str | None, typer.Option(help="Also save a thumbnail PNG here (path or URL).")
    ] = None,
    reader: ReaderOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing thumbnail.")] = False,
) -> None:
    """Show a slide's size, pyramid levels, resolution and the reader that opens it."""

    def body() -> None:
        from ..pipeline.items import SlideItem
        from ..slide import open_slide, plausible_mpp
        from ..slide.spz_reader import container_summary
        from ..viz import save_png

        show_staging()
        item = SlideItem.of(slide)
        if thumbnail is not None:
            check_output_at(thumbnail, overwrite=overwrite, inputs=(item.location,))
            check_png(Path(thumbnail))
        path = item.path  # a URL: staged to the local cache
        with open_slide(path, reader=reader) as r:
            d = r.info.to_dict()
            d["path"] = item.location
            mpp_ok = bool(r.info.mpp) and all(plausible_mpp(m) for m in r.info.mpp)
            d["mpp_plausible"] = mpp_ok
            container = container_summary(r.info)
            if container is not None:
                d["container"] = container
            if thumbnail is not None:
                img, _ = r.thumbnail(1024)
                with written_at(thumbnail) as local:
                    save_png(img, local)
        if as_json:
            typer.echo(json.dumps(d, indent=2))
            return
        from rich.table import Table

        t = Table(title=f"{item.name}  ({d['reader']}, {d['vendor'] or 'unknown vendor'})")
        for col in ("level", "width", "height", "downsample", "mpp"):
            t.add_column(col, justify="right")
        m = r.info.mpp
        for i, ((w, h), ds) in enumerate(
            zip(d["level_dimensions"], d["level_downsamples"], strict=True)
        ):
            t.add_row(str(i), str(w), str(h), f"{ds:.3f}", f"{m[0] * ds:.4g}" if m else "-")
        from rich.console import Console

        out = Console(highlight=False)
        out.print(t)
        if not mpp_ok:
            from ..slide.mpp import HOW_TO_OVERRIDE

            what = "missing" if not m else f"implausible ({m[0]:.4g} um/px)"
            out.print(f"[yellow]mpp {what}[/]: to encode, {HOW_TO_OVERRIDE}")
        if container is not None:
            c = container
            out.print(
                f"codec: {c['codec']} quality {c['quality']}, tile {c['tile_size']} px, "
                f"background {c['background']}, {c['tiles_stored']} of {c['tiles_total']} tiles "
                f"stored; source: {c['source'] or 'unknown'}"
            )
        if d["objective_power"]:
            out.print(f"objective: {d['objective_power']:g}x")
        if d["associated_images"]:
            out.print(f"associated images: {', '.join(d['associated_images'])}")
        if thumbnail is not None:
            out.print(f"thumbnail: {thumbnail}")

    guarded(body)


@app.command()
@with_options(ENCODE.for_target(CLI))
def encode(
    slides: SlidesArg,
    output: Annotated[str, typer.Option("-o", "--output", help="Output folder (path or URL).")],
    mpp_override: MppOverrideOpt = None,
    mpp_csv: MppCsvOpt = None,
    *,
    options: dict[str, Any],
) -> None:
    """Encode slides into NIC embedding grids (rows, cols, C), one file per slide.

    A bad slide is reported on one line and skipped; the others finish; the exit code is then 2.
    Each slide's outcome is also written to OUTPUT/report.csv.
    """

    def prepare():
        items = slide_items(slides, mpp_override, mpp_csv)
        job = build_job(ENCODE, options)  # checks options
        check_output_at(output, folder=True)
        job.prepare()  # loads the encoder once; a broken one stops here
        return job, items

    from ..remote import join

    job, items = guarded(prepare)
    report = join(output, "report.csv")
    code = guarded(lambda: run_and_report(items, job, output, "cells", report))
    raise SystemExit(code)


@app.command()
def convert(
    grid: Annotated[str, typer.Argument(help="Grid file: .zarr, .npz, .mha or .h5 (or URL).")],
    output: Annotated[
        str, typer.Option("-o", "--output", help="Target file, format by suffix (or URL).")
    ],
    float16: Annotated[bool, typer.Option(help="Store features as float16.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
) -> None:
    """Convert an embedding grid between formats, losslessly."""

    def body() -> None:
        from .. import remote
        from ..store import format_for, read_grid, write_grid

        format_for(Path(remote.name(output)))
        check_output_at(output, overwrite=overwrite, inputs=(grid,))
        show_staging()
        g = read_grid(remote.localize(grid, recursive=True))
        with written_at(output) as local:
            write_grid(g, local, float16=float16)
        console.print(f"{grid} -> {output} ({'x'.join(map(str, g.shape))})")

    guarded(body)


@app.command("encoders")
def list_encoders() -> None:
    """List registered encoders and loaders (PREFIX:... takes a file or folder)."""
    from ..encoders import ENCODERS, LOADERS
    from .weights import weights_note

    for name in ENCODERS:
        typer.echo(f"{name:18s} {ENCODERS.entry(name).summary}{weights_note('encoder', name)}")
    for prefix in LOADERS:
        typer.echo(f"{prefix + ':...':18s} {LOADERS.entry(prefix).summary}")


from . import containers  # noqa: E402 (commands registered after the main ones)
from .batch import batch_app  # noqa: E402
from .bench import bench_app  # noqa: E402
from .compare import compare  # noqa: E402
from .eval import app as eval_app  # noqa: E402
from .service import admin_app, remote_app, serve, token_app  # noqa: E402
from .slidemodel import heatmap, predict, train_slide_model  # noqa: E402
from .train import train_app  # noqa: E402
from .weights import list_weights  # noqa: E402

containers.register(app)
app.command("compare")(compare)
app.add_typer(bench_app, name="bench")
app.add_typer(batch_app, name="batch")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(token_app, name="token")
app.add_typer(remote_app, name="remote")
app.add_typer(admin_app, name="admin")
app.command("serve")(serve)
train_app.command("slide-model")(train_slide_model)
app.command("predict")(predict)
app.command("heatmap")(heatmap)
app.command("weights")(list_weights)


def _terminated(signum: int, frame: object) -> None:
    raise Terminated


def run() -> None:
    """Entry point. Ctrl-C and SIGTERM unwind normally (workers joined, slides closed,
    partial outputs removed), then print one line: exit 130 / 143."""
    import signal

    signal.signal(signal.SIGTERM, _terminated)
    try:
        app()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        error_line("interrupted; partial outputs removed")
        raise SystemExit(EXIT_INTERRUPTED) from None
    except Terminated:
        error_line("terminated; partial outputs removed")
        raise SystemExit(EXIT_TERMINATED) from None
    except Exception as e:  # last resort: never a traceback for the user
        error_line(f"internal error: {type(e).__name__}: {e}")
        raise SystemExit(EXIT_INTERNAL) from None


__all__ = ["app", "run", "EXIT_BAD_INPUT"]
