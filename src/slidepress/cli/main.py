"""`slidepress` command line. Exit codes: 0 ok, 2 bad input or usage, 1 internal error."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from .. import __version__
from ..errors import SlidepressError, UsageError
from .common import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    Terminated,
    console,
    error_line,
    expand_slides,
    guarded,
    progress_bars,
)

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
    slide: Annotated[str, typer.Argument(help="Slide file, DICOM folder, or @sample.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    thumbnail: Annotated[Path | None, typer.Option(help="Also save a thumbnail PNG here.")] = None,
    reader: Annotated[str | None, typer.Option(help="Force a reader backend.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing thumbnail.")] = False,
) -> None:
    """Show a slide's size, pyramid levels, resolution and the reader that opens it."""

    def body() -> None:
        from ..slide import open_slide, plausible_mpp, resolve_slide_path
        from ..store.atomic import check_output
        from ..viz import save_png

        path = resolve_slide_path(slide)
        if thumbnail is not None:
            check_output(thumbnail, overwrite=overwrite, inputs=[path])
            _check_png(thumbnail)
        with open_slide(path, reader=reader) as r:
            d = r.info.to_dict()
            mpp_ok = bool(r.info.mpp) and all(plausible_mpp(m) for m in r.info.mpp)
            d["mpp_plausible"] = mpp_ok
            if thumbnail is not None:
                img, _ = r.thumbnail(1024)
                save_png(img, thumbnail)
        if as_json:
            typer.echo(json.dumps(d, indent=2))
            return
        from rich.table import Table

        t = Table(title=f"{path.name}  ({d['reader']}, {d['vendor'] or 'unknown vendor'})")
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
        if d["objective_power"]:
            out.print(f"objective: {d['objective_power']:g}x")
        if d["associated_images"]:
            out.print(f"associated images: {', '.join(d['associated_images'])}")
        if thumbnail is not None:
            out.print(f"thumbnail: {thumbnail}")

    guarded(body)


def _check_png(output: Path) -> None:
    if output.suffix.lower() != ".png":
        raise UsageError(f"{output}: the picture is written as PNG; name it .png")


@app.command()
def encode(
    slides: Annotated[
        list[str], typer.Argument(help="Slide files, DICOM folders, folders of slides, @sample.")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")],
    encoder: Annotated[
        str, typer.Option(help="mean-rgb, torchscript:PATH, timm:MODEL@WEIGHTS (see 'encoders').")
    ] = "mean-rgb",
    patch_size: Annotated[
        int | None,
        typer.Option(help="Patch side in px at --mpp (default: the encoder's, else 128)."),
    ] = None,
    stride: Annotated[
        int | None, typer.Option(help="Cell pitch in px (default: = patch size).")
    ] = None,
    mpp: Annotated[
        float | None, typer.Option(help="Target um/px (default: the encoder's, else 0.5).")
    ] = None,
    mpp_override: Annotated[
        float | None, typer.Option(help="Use this level-0 um/px instead of the file's.")
    ] = None,
    mpp_csv: Annotated[
        Path | None, typer.Option(help="CSV 'slide,mpp' of per-slide level-0 overrides.")
    ] = None,
    tissue_threshold: Annotated[
        float, typer.Option(help="Keep cells whose tissue fraction is >= this (0-1).")
    ] = 0.5,
    augment: Annotated[
        str, typer.Option(help="'none', or 'dihedral': also the 8 rotations/flips.")
    ] = "none",
    fmt: Annotated[str, typer.Option("--format", help="zarr | npz | mha | h5.")] = "zarr",
    float16: Annotated[bool, typer.Option(help="Store features as float16.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    reader: Annotated[str | None, typer.Option(help="Force a reader backend.")] = None,
    workers: Annotated[int, typer.Option(help="Slide-reading threads.")] = 2,
    batch_size: Annotated[int, typer.Option(help="Patches per encoder call.")] = 64,
    device: Annotated[
        str | None, typer.Option(help="torch device (default: cuda if available, else cpu).")
    ] = None,
) -> None:
    """Encode slides into NIC embedding grids (rows, cols, C), one file per slide.

    A bad slide is reported on one line and skipped; the others finish; the exit code is then 2.
    """
    from ..pipeline import EncodeOptions, encode_slide

    def prepare():
        if mpp_override is not None and mpp_csv is not None:
            raise UsageError("give either --mpp-override or --mpp-csv, not both")
        from ..encoders import get_encoder
        from ..slide.mpp import load_mpp_csv
        from ..store.atomic import check_output

        table = load_mpp_csv(mpp_csv) if mpp_csv else {}
        opts = EncodeOptions(
            patch_size=patch_size, stride=stride, mpp=mpp, mpp_override=mpp_override,
            tissue_threshold=tissue_threshold, augment=augment, fmt=fmt, float16=float16,
            overwrite=overwrite, reader=reader, workers=workers, batch_size=batch_size,
        )  # fmt: skip
        paths = expand_slides(slides)
        enc = get_encoder(encoder, device=device)
        opts.grid_spec(enc)  # validates patch size / stride / mpp
        check_output(output, folder=True)
        return enc, opts, table, paths

    enc, opts, table, paths = guarded(prepare)
    from ..slide.mpp import lookup_override

    def encode_all() -> int:
        code = 0
        with progress_bars() as start:
            for path in paths:
                t0 = time.perf_counter()
                if table:
                    opts.mpp_override = lookup_override(path, table)
                try:
                    res = encode_slide(path, output, enc, opts, progress_start=start)
                except SlidepressError as e:
                    error_line(str(e))
                    code = code or EXIT_BAD_INPUT
                    continue
                except Exception as e:  # a bug must not stop the other slides
                    error_line(f"{path.name}: internal error: {type(e).__name__}: {e}")
                    code = EXIT_INTERNAL
                    continue
                dt = time.perf_counter() - t0
                if res.skipped:
                    console.print(f"{path.name}: up to date, skipped ({res.outputs[0]})")
                    continue
                r, c, ch = res.grid_shape or (0, 0, 0)
                extra = f" (+{len(res.outputs) - 1} variants)" if len(res.outputs) > 1 else ""
                console.print(
                    f"{path.name} -> {res.outputs[0]}{extra}: grid {r}x{c}x{ch}, "
                    f"{res.cells_kept} tissue cells, {dt:.1f} s"
                )
        return code

    code = guarded(encode_all)  # Ctrl-C: one line, exit 130
    raise SystemExit(code)


@app.command()
def convert(
    grid: Annotated[Path, typer.Argument(help="Grid file: .zarr, .npz, .mha or .h5.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Target file; format by suffix.")],
    float16: Annotated[bool, typer.Option(help="Store features as float16.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
) -> None:
    """Convert an embedding grid between formats, losslessly."""

    def body() -> None:
        from ..store import format_for, read_grid, write_grid
        from ..store.atomic import check_output

        format_for(output)
        check_output(output, overwrite=overwrite, inputs=[grid])
        g = read_grid(grid)
        write_grid(g, output, float16=float16)
        console.print(f"{grid} -> {output} ({'x'.join(map(str, g.shape))})")

    guarded(body)


@app.command()
def compress(
    slide: Annotated[str, typer.Argument(help="Slide file, DICOM folder, or @sample.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Container file, e.g. out.spz.")],
    codec: Annotated[str, typer.Option(help="jpeg, jpegxl, webp, avif, jpeg2000, htj2k, png.")] = (
        "jpegxl"
    ),
    quality: Annotated[
        float | None, typer.Option(help="Codec quality knob (default: the codec's; see 'codecs').")
    ] = None,
    tile: Annotated[int, typer.Option(help="Tile side in px.")] = 256,
    level: Annotated[
        int | None, typer.Option(help="Source pyramid level to store (default 0).")
    ] = (None),
    mpp: Annotated[
        float | None, typer.Option(help="Store at this um/px instead of a level.")
    ] = None,
    mpp_override: Annotated[
        float | None, typer.Option(help="Use this level-0 um/px instead of the file's.")
    ] = None,
    background: Annotated[
        str, typer.Option(help="skip (read back white) | constant (one tile) | keep (store all).")
    ] = "skip",
    workers: Annotated[int, typer.Option(help="Threads reading, testing and coding tiles.")] = 2,
    ms_ssim: Annotated[
        bool, typer.Option(help="Also MS-SSIM over every stored level-0 tile (loads torch).")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    reader: Annotated[str | None, typer.Option(help="Force a reader backend.")] = None,
) -> None:
    """Compress a slide into a container of coded tiles (with a pyramid).

    Only empty glass is left out (every level-0 tile is tested on its own pixels).

    Reports the PSNR over every tissue pixel of the slide, decoded back from the container."""

    def body() -> None:
        from ..pipeline import CompressOptions, compress_slide

        opts = CompressOptions(
            codec=codec, quality=quality, tile=tile, level=level, mpp=mpp,
            mpp_override=mpp_override, background=background, workers=workers,
            overwrite=overwrite, reader=reader, ms_ssim=ms_ssim,
        )  # fmt: skip
        with progress_bars(unit="tiles") as start:
            r = compress_slide(slide, output, opts, progress_start=start)
        c = r.manifest["codec"]
        f = r.fidelity
        glass = r.manifest["background"]["glass"]
        ms = f", MS-SSIM {r.ms_ssim:.4f}" if r.ms_ssim is not None else ""
        console.print(
            f"{r.manifest['source']['name']} -> {r.path}: {c['name']} q{c['quality']:g}, "
            f"{r.tiles_stored}/{r.tiles_total} tiles stored, {r.container_bytes / 1e6:.2f} MB, "
            f"{r.bpp:.3f} bpp, {r.ratio_raw:.1f}x vs raw 24 bpp, {r.ratio_source:.2f}x vs source "
            f"file; {r.seconds:.1f} s\n"
            f"  whole slide, all {f.tissue_pixels / 1e6:.2f} Mpx of tissue: PSNR {r.psnr:.2f} dB"
            f"{ms}\n"
            f"  left out as glass: {f.tiles_dropped} of {f.tiles_dropped + f.tiles_stored} "
            f"level-0 tiles (largest deviation from glass in any: {f.max_dropped_deviation}, "
            f"threshold {glass['threshold']})"
        )

    guarded(body)


@app.command()
def decompress(
    container: Annotated[Path, typer.Argument(help="Container written by 'compress'.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Pyramidal TIFF to write.")],
    codec: Annotated[str, typer.Option(help="TIFF tile compression: jpeg.")] = "jpeg",
    quality: Annotated[int, typer.Option(help="JPEG quality (4:4:4 chroma).")] = 95,
    lossless: Annotated[bool, typer.Option(help="Deflate instead of JPEG: exact pixels.")] = False,
    workers: Annotated[int, typer.Option(help="Decoding threads.")] = 2,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
) -> None:
    """Write a standard tiled pyramidal TIFF (OpenSlide/tiffslide open it, mpp included)."""

    def body() -> None:
        from ..bounds import check_workers
        from ..pipeline import decompress_container

        check_workers(workers)
        with progress_bars(unit="tiles") as start:
            out = decompress_container(
                container, output, codec=codec, quality=quality, lossless=lossless,
                workers=workers, overwrite=overwrite, progress_start=start,
            )  # fmt: skip
        console.print(f"{container} -> {out} ({out.stat().st_size / 1e6:.2f} MB)")

    guarded(body)


@app.command("read")
def read_region_cmd(
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
        _check_png(output)
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


@app.command("codecs")
def list_codecs() -> None:
    """List codecs with their quality knob range and default."""
    from ..codecs import CODECS

    for name, cls in sorted(CODECS.items()):
        lo, hi = cls.quality_range
        better = "higher" if cls.higher_is_better else "LOWER"
        kind = "lossless" if cls.lossless else f"quality {lo:g}-{hi:g}, {better} is better"
        typer.echo(f"{name:9s} {kind}; default {cls.default_quality:g}")


@app.command("encoders")
def list_encoders() -> None:
    """List registered encoders and loaders."""
    from ..encoders import available

    for name in available():
        typer.echo(name)


from .bench import bench_app  # noqa: E402 (sub-apps after the main commands)
from .eval import app as eval_app  # noqa: E402
from .slidemodel import heatmap, predict, train_slide_model  # noqa: E402
from .train import train_app  # noqa: E402

app.add_typer(bench_app, name="bench")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
train_app.command("slide-model")(train_slide_model)
app.command("predict")(predict)
app.command("heatmap")(heatmap)


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
