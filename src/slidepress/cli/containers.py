"""Reconstructive compression on the command line: compress, decompress, export, read, codecs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..codecs import CODECS
from ..errors import UsageError
from ..jobs.options import CLI, COMPRESS, EXPORT
from .common import (
    MppCsvOpt,
    MppOverrideOpt,
    SlidesArg,
    check_output_at,
    check_png,
    console,
    guarded,
    progress_bars,
    run_and_report,
    show_staging,
    slide_items,
    written_at,
)
from .options import build_job, with_options
from .weights import weights_note

DECODE_THREADS = EXPORT["threads"]  # decompress takes export's --threads (alias --workers)


@with_options(COMPRESS.for_target(CLI))
def compress(
    slides: SlidesArg,
    output: Annotated[
        str,
        typer.Option(
            "-o",
            "--output",
            help="Container file (one slide, e.g. out.spz) or a folder: SLIDE.spz per slide "
            "and report.csv. A path or a URL (s3://...).",
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

    from .. import remote

    def prepare():
        items = slide_items(slides, mpp_override, mpp_csv)
        spz = output.lower().endswith(".spz")
        single = len(items) == 1 and spz
        job = build_job(COMPRESS, options, output=output if single else None)
        if not single:
            if spz:
                raise UsageError(
                    f"{len(items)} slides need a folder for -o, not {remote.name(output)}"
                )
            check_output_at(output, folder=True)
        elif remote.is_url(output):
            check_output_at(output, overwrite=True)  # writable; an existing one: its key
        return job, items, single

    job, items, single = guarded(prepare)
    report = None if single else remote.join(output, "report.csv")
    if remote.is_url(output):
        out_dir = remote.parent(output) if single else output
    else:
        out_dir = str(Path(output).parent) if single else output
    raise SystemExit(guarded(lambda: run_and_report(items, job, out_dir, "tiles", report)))


@with_options([DECODE_THREADS])
def decompress(
    container: Annotated[str, typer.Argument(help="Container written by 'compress' (or URL).")],
    output: Annotated[
        str, typer.Option("-o", "--output", help="Pyramidal TIFF to write (path or URL).")
    ],
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
        from .. import remote
        from ..pipeline import decompress_container

        threads = options["threads"]
        DECODE_THREADS.check(threads)
        check_output_at(output, overwrite=overwrite, inputs=(container,))
        show_staging()
        source = remote.localize(container)
        with progress_bars(unit="tiles") as start, written_at(output) as local:
            out = decompress_container(
                source, local, compression=codec_alias or compression, quality=quality,
                lossless=lossless, workers=threads, overwrite=overwrite, progress_start=start,
            )  # fmt: skip
            size = out.stat().st_size
        console.print(f"{container} -> {output} ({size / 1e6:.2f} MB)")

    guarded(body)


@with_options(EXPORT.for_target(CLI))
def export(
    container: Annotated[str, typer.Argument(help="Container written by 'compress' (or URL).")],
    output: Annotated[
        str,
        typer.Option(
            "-o", "--output", help="Pyramidal TIFF (tiff) or a new folder (dicom); path or URL."
        ),
    ],
    *,
    options: dict[str, Any],
) -> None:
    """Export to TIFF or DICOM WSI, copying the coded tiles where the format carries them.

    jpeg -> TIFF and DICOM (JPEG baseline); jpeg2000, jpegxl -> DICOM (their transfer
    syntaxes): tiles byte-identical, pixels exact. Other codecs are decoded and re-encoded,
    and the loss is reported. The options are the service's export job's (one spec).
    """

    def body() -> None:
        from .. import remote
        from ..pipeline.export import export_container

        EXPORT.check(options)
        overwrite = options["overwrite"]
        check_output_at(output, overwrite=overwrite, inputs=(container,))
        show_staging()
        source = remote.localize(container)
        with progress_bars(unit="tiles") as start, written_at(output) as local:
            r = export_container(
                source, local, format=options["format"], quality=options["quality"],
                workers=options["threads"], overwrite=overwrite, progress_start=start,
            )  # fmt: skip
        loss = ""
        if r.tiles_reencoded:
            psnr = r.reencode_psnr_db
            loss = ", exact" if psnr == float("inf") else f", {psnr:.2f} dB vs the container"
        console.print(
            f"{container} -> {output} ({r.format}: {r.codestream}; {r.tiles_copied} tiles "
            f"copied, {r.tiles_reencoded} re-encoded{loss}, {r.tiles_filled} glass tiles "
            f"filled; {r.seconds:.2f} s)"
        )

    guarded(body)


def read_region(
    container: Annotated[str, typer.Argument(help="Container written by 'compress' (or URL).")],
    x: Annotated[int, typer.Option("--x", help="Left, in container level-0 px.")],
    y: Annotated[int, typer.Option("--y", help="Top, in container level-0 px.")],
    w: Annotated[int, typer.Option("--w", help="Width in px at --level.")],
    h: Annotated[int, typer.Option("--h", help="Height in px at --level.")],
    output: Annotated[str, typer.Option("-o", "--output", help="PNG to write (path or URL).")],
    level: Annotated[int, typer.Option(help="Container pyramid level.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
) -> None:
    """Decode one region (only the tiles it touches) to a PNG."""

    def body() -> None:
        from .. import remote
        from ..bounds import MAX_REGION_PIXELS
        from ..store.container import Container
        from ..viz import save_png

        check_output_at(output, overwrite=overwrite, inputs=(container,))
        check_png(Path(output))
        if w > 0 and h > 0 and w * h > MAX_REGION_PIXELS:
            raise UsageError(
                f"region {w} x {h} px is larger than {MAX_REGION_PIXELS} px; read it in parts"
            )
        show_staging()
        with Container(remote.localize(container)) as c:
            ds = c.levels[level].downsample if 0 <= level < len(c.levels) else 1.0
            pixels = c.read_region(round(x / ds), round(y / ds), w, h, level=level)
        with written_at(output) as local:
            save_png(pixels, local)
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
