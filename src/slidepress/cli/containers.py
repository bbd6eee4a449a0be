"""Reconstructive compression on the command line: compress, decompress, export, read, codecs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..bounds import MAX_WORKERS
from ..codecs import CODECS
from ..errors import UsageError
from ..jobs.options import CLI, COMPRESS, Option
from .common import (
    MppCsvOpt,
    MppOverrideOpt,
    SlidesArg,
    check_png,
    console,
    guarded,
    progress_bars,
    run_and_report,
    slide_items,
)
from .options import build_job, with_options
from .weights import weights_note

DECODE_THREADS = Option("threads", int, 2, "Decoding threads.", min=1, max=MAX_WORKERS,
                        aliases=("--workers",))  # fmt: skip


@with_options(COMPRESS.for_target(CLI))
def compress(
    slides: SlidesArg,
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="Container file (one slide, e.g. out.spz) or a folder: SLIDE.spz per slide "
            "and report.csv.",
        ),
    ],  # fmt: skip
    mpp_override: MppOverrideOpt = None,
    mpp_csv: MppCsvOpt = None,
    *,
    options: dict[str, Any],
) -> None:
    """Compress slides into containers of coded tiles (with a pyramid).

    Only empty glass is left out (every level-0 tile is tested on its own pixels).

    Reports the PSNR over every tissue pixel of each slide, decoded back from the container.

    Re-running with the same slide and parameters skips it; other parameters need --overwrite.
    """

    def prepare():
        from ..store.atomic import check_output

        items = slide_items(slides, mpp_override, mpp_csv)
        single = len(items) == 1 and output.suffix.lower() == ".spz"
        job = build_job(COMPRESS, options, output=str(output) if single else None)
        if not single:
            if output.suffix.lower() == ".spz":
                raise UsageError(f"{len(items)} slides need a folder for -o, not {output.name}")
            check_output(output, folder=True)
        return job, items, single

    job, items, single = guarded(prepare)
    report = None if single else output / "report.csv"
    out_dir = output.parent if single else output
    raise SystemExit(guarded(lambda: run_and_report(items, job, out_dir, "tiles", report)))


@with_options([DECODE_THREADS])
def decompress(
    container: Annotated[Path, typer.Argument(help="Container written by 'compress'.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Pyramidal TIFF to write.")],
    compression: Annotated[
        str, typer.Option(help="TIFF tile compression: jpeg (what viewers expect).")
    ] = "jpeg",
    quality: Annotated[int, typer.Option(help="JPEG quality (4:4:4 chroma).")] = 95,
    lossless: Annotated[bool, typer.Option(help="Deflate instead of JPEG: exact pixels.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    codec_alias: Annotated[
        str | None, typer.Option("--codec", hidden=True, help="Old name of --compression.")
    ] = None,
    *,
    options: dict[str, Any],
) -> None:
    """Write a standard tiled pyramidal TIFF (OpenSlide/tiffslide open it, mpp included)."""

    def body() -> None:
        from ..pipeline import decompress_container

        threads = options["threads"]
        DECODE_THREADS.check(threads)
        with progress_bars(unit="tiles") as start:
            out = decompress_container(
                container, output, compression=codec_alias or compression, quality=quality,
                lossless=lossless, workers=threads, overwrite=overwrite, progress_start=start,
            )  # fmt: skip
        console.print(f"{container} -> {out} ({out.stat().st_size / 1e6:.2f} MB)")

    guarded(body)


@with_options([DECODE_THREADS])
def export(
    container: Annotated[Path, typer.Argument(help="Container written by 'compress'.")],
    output: Annotated[
        Path,
        typer.Option("-o", "--output", help="Pyramidal TIFF (tiff) or a new folder (dicom)."),
    ],
    format: Annotated[
        str, typer.Option("--format", help="tiff (OpenSlide, QuPath) or dicom (DICOM WSI).")
    ] = "tiff",
    quality: Annotated[
        int, typer.Option(help="JPEG quality of tiles the format cannot carry as coded.")
    ] = 95,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    *,
    options: dict[str, Any],
) -> None:
    """Export to TIFF or DICOM WSI, copying the coded tiles where the format carries them.

    jpeg -> TIFF and DICOM (JPEG baseline); jpeg2000, jpegxl -> DICOM (their transfer
    syntaxes): tiles byte-identical, pixels exact. Other codecs are decoded and re-encoded,
    and the loss is reported.
    """

    def body() -> None:
        from ..pipeline.export import export_container

        threads = options["threads"]
        DECODE_THREADS.check(threads)
        with progress_bars(unit="tiles") as start:
            r = export_container(
                container, output, format=format, quality=quality, workers=threads,
                overwrite=overwrite, progress_start=start,
            )  # fmt: skip
        loss = ""
        if r.tiles_reencoded:
            psnr = r.reencode_psnr_db
            loss = ", exact" if psnr == float("inf") else f", {psnr:.2f} dB vs the container"
        console.print(
            f"{container} -> {r.path} ({r.format}: {r.codestream}; {r.tiles_copied} tiles "
            f"copied, {r.tiles_reencoded} re-encoded{loss}, {r.tiles_filled} glass tiles "
            f"filled; {r.seconds:.2f} s)"
        )

    guarded(body)


def read_region(
    container: Annotated[Path, typer.Argument(help="Container written by 'compress'.")],
    x: Annotated[int, typer.Option("--x", help="Left, in container level-0 px.")],
    y: Annotated[int, typer.Option("--y", help="Top, in container level-0 px.")],
    w: Annotated[int, typer.Option("--w", help="Width in px at --level.")],
    h: Annotated[int, typer.Option("--h", help="Height in px at --level.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG to write.")],
    level: Annotated[int, typer.Option(help="Container pyramid level.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
) -> None:
    """Decode one region (only the tiles it touches) to a PNG."""

    def body() -> None:
        from ..bounds import MAX_REGION_PIXELS
        from ..store.atomic import check_output
        from ..store.container import Container
        from ..viz import save_png

        check_output(output, overwrite=overwrite, inputs=[container])
        check_png(output)
        if w > 0 and h > 0 and w * h > MAX_REGION_PIXELS:
            raise UsageError(
                f"region {w} x {h} px is larger than {MAX_REGION_PIXELS} px; read it in parts"
            )
        with Container(container) as c:
            ds = c.levels[level].downsample if 0 <= level < len(c.levels) else 1.0
            pixels = c.read_region(round(x / ds), round(y / ds), w, h, level=level)
        save_png(pixels, output)
        console.print(f"{output}: {w} x {h} px at level {level}")

    guarded(body)


def list_codecs() -> None:
    """List codecs with their quality knob range and default."""
    for name, cls in CODECS.items():
        lo, hi = cls.quality_range
        better = "higher" if cls.higher_is_better else "LOWER"
        kind = "lossless" if cls.lossless else f"quality {lo:g}-{hi:g}, {better} is better"
        note = weights_note("codec", name)
        typer.echo(f"{name:9s} {kind}; default {cls.default_quality:g}{note}")


def register(app: typer.Typer) -> None:
    app.command()(compress)
    app.command()(decompress)
    app.command()(export)
    app.command("read")(read_region)
    app.command("codecs")(list_codecs)
