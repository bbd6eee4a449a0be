"""`slidepress bench ...`: benchmarks that write a report folder (tables, plots, report.md)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..bench.codecs.options import DEFAULT_CODECS, DEFAULT_EMBEDDING_ENCODER
from ..codecs import CODECS
from .common import (
    QualitiesOpt,
    check_report_folder,
    console,
    expand_slides,
    guarded,
    progress_bars,
)

if TYPE_CHECKING:
    from ..bench.codecs import BenchmarkResult

bench_app = typer.Typer(
    help="Benchmarks: conventional codecs on real tiles (rate, quality, speed, BD-rate vs JPEG).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@bench_app.callback()
def _bench() -> None:
    """Benchmarks that write a report folder: results.csv/.json, plots, report.md."""


@bench_app.command("codecs")
def codecs_cmd(
    inputs: Annotated[
        list[str],
        typer.Argument(help="Images (PNG, JPEG...), slides, DICOM folders, folders, @sample."),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Report folder.")],
    codecs: Annotated[
        str,
        typer.Option(help=f"Comma-separated codecs to compare (from: {', '.join(CODECS)})."),
    ] = ",".join(DEFAULT_CODECS),
    qualities: QualitiesOpt = None,
    tile: Annotated[int, typer.Option(help="Tile side in px.")] = 256,
    threads: Annotated[int, typer.Option(help="Encoder threads where the codec takes it.")] = 1,
    max_tiles: Annotated[
        int, typer.Option(help="Tiles per input at most (slides: random tissue tiles).")
    ] = 64,
    seed: Annotated[int, typer.Option(help="Seed for the tile sample.")] = 0,
    mpp_override: Annotated[
        float | None, typer.Option(help="Level-0 um/px for slides whose file lacks it.")
    ] = None,
    feature_similarity: Annotated[
        bool,
        typer.Option(
            help="Feature similarity (ResNet18 features at 6 depths, shipped weights) per "
            "codec and quality, its RD plot and BD-rate."
        ),
    ] = True,
    embedding_encoder: Annotated[
        str,
        typer.Option(
            help="Encoder whose patch embeddings of original vs decoded tiles give the "
            "embedding similarity ('none' skips it; see `slidepress encoders`)."
        ),
    ] = DEFAULT_EMBEDDING_ENCODER,
    overwrite: Annotated[bool, typer.Option(help="Replace a report already in --output.")] = False,
) -> None:
    """Rate, PSNR/SSIM/MS-SSIM, feature and embedding similarity and speed of each codec and
    quality on tiles of the inputs; writes results.csv/.json, RD and timing plots, BD-rates vs
    JPEG and report.md. JPEG's sweep always includes q80, the anchor."""

    def body() -> None:
        from ..bench.codecs import parse_qualities, run_codec_benchmark
        from ..bounds import MAX_PATCH, check_range, check_workers

        check_range("--tile", tile, 16, MAX_PATCH)
        check_workers(threads, "--threads")
        check_range("--max-tiles", max_tiles, 1, 100_000)
        check_report_folder(output, "results.json", overwrite)

        names = [c.strip() for c in codecs.split(",") if c.strip()]
        paths = expand_slides(inputs)
        with progress_bars("tiles") as start:
            res = run_codec_benchmark(
                paths, output, names, parse_qualities(qualities), tile=tile, threads=threads,
                max_tiles_per_input=max_tiles, seed=seed, mpp_override=mpp_override,
                feature_similarity=feature_similarity, embedding_encoder=embedding_encoder,
                progress=start,
            )  # fmt: skip
        _print_summary(res)

    guarded(body)


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:+.1f} %"


def _bpp(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.3f}"


def _print_summary(res: BenchmarkResult) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console(highlight=False)
    if res.bd_rates:
        t = Table(title="BD-rate vs JPEG (pchip, mean over inputs; negative = fewer bits)")
        fs = any(math.isfinite(b.get("bd_rate_featsim_db_pchip", math.nan)) for b in res.bd_rates)
        cols = ("codec", "PSNR", "MS-SSIM", *(("feature sim.",) if fs else ()),
                "bpp @ JPEG q80 PSNR", "bpp @ q80 MS-SSIM")  # fmt: skip
        for col in cols:
            t.add_column(col, justify="right")
        match = {m["codec"]: m for m in res.jpeg_q80_match}
        for b in res.bd_rates:
            m = match.get(b["codec"], {})
            t.add_row(
                b["codec"],
                _pct(b["bd_rate_psnr_pchip"]),
                _pct(b["bd_rate_ms_ssim_db_pchip"]),
                *((_pct(b["bd_rate_featsim_db_pchip"]),) if fs else ()),
                _bpp(m.get("bpp_psnr", math.nan)),
                _bpp(m.get("bpp_ms_ssim_db", math.nan)),
            )
        if "jpeg" in match:
            j = match["jpeg"]
            zero = ("0",) * (3 if fs else 2)
            t.add_row("jpeg q80", *zero, _bpp(j["bpp_psnr"]), _bpp(j["bpp_ms_ssim_db"]))
        out.print(t)
    console.print(f"{len(res.rows)} rows -> {res.report_path} ({res.csv_path.name}, plots)")
