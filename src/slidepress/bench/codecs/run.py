"""`run_codec_benchmark`: check the options, load the tiles, measure every codec and quality on
every input, summarise, write the report folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from ...errors import UsageError
from ...progress import ProgressStart, no_progress
from ...store.atomic import write_text
from .inputs import TISSUE_THRESHOLD, load_inputs
from .measuring import make_codec, measure, single_thread_torch
from .options import ANCHOR, ANCHOR_QUALITY, DEFAULT_EMBEDDING_ENCODER, resolve_qualities
from .report import environment, render_report, write_plots, write_results_csv, write_results_json
from .similarity import load_similarity
from .summary import BD_METHODS, bd_tables, match_anchor, mean_curve


@dataclass
class BenchmarkResult:
    """Rows (one per input/codec/quality), the summaries, and where they were written."""

    rows: list[dict[str, Any]]
    inputs: list[dict[str, Any]]
    mean_curve: list[dict[str, Any]]
    bd_rates: list[dict[str, Any]]
    bd_per_input: list[dict[str, Any]]
    jpeg_q80_match: list[dict[str, Any]]
    out_dir: Path
    csv_path: Path
    json_path: Path
    report_path: Path
    plots: dict[str, Path] = field(default_factory=dict)


def _check(inputs: list[Path], out_dir: Path, tile: int, threads: int, max_tiles: int) -> None:
    if not inputs:
        raise UsageError("no inputs to benchmark")
    if not 16 <= tile <= 4096:
        raise UsageError(f"tile must be within 16-4096 px, got {tile}")
    if threads < 1:
        raise UsageError(f"threads must be >= 1, got {threads}")
    if max_tiles < 1:
        raise UsageError(f"max tiles per input must be >= 1, got {max_tiles}")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"output {out_dir} exists and is not a folder")


def run_codec_benchmark(
    inputs: list[Path],
    out_dir: Path,
    codecs: list[str],
    qualities: dict[str, list[float]] | None = None,
    tile: int = 256,
    threads: int = 1,
    max_tiles_per_input: int = 64,
    seed: int = 0,
    mpp_override: float | None = None,
    *,
    feature_similarity: bool = True,
    embedding_encoder: str | None = DEFAULT_EMBEDDING_ENCODER,
    progress: ProgressStart | None = None,
) -> BenchmarkResult:
    """Benchmark `codecs` on the tiles of `inputs`; write results.csv, results.json, RD and
    timing plots and report.md into `out_dir` (created; earlier results there replaced).

    `feature_similarity` adds the featsim columns (shipped network); `embedding_encoder` (an
    encoder name, or None / "none") the embsim column. `progress` is started once per input,
    with that input's tiles times the quality points."""
    from ...encoders import check_spec

    out_dir = Path(out_dir)
    _check(inputs, out_dir, tile, threads, max_tiles_per_input)
    codecs = list(codecs)
    sweep = resolve_qualities(codecs, qualities)
    if embedding_encoder and embedding_encoder.lower() == "none":
        embedding_encoder = None
    if embedding_encoder:
        check_spec(embedding_encoder)  # a typo fails before any tile is coded
    if find_spec("torch") is None or find_spec("pytorch_msssim") is None:
        raise UsageError("SSIM/MS-SSIM need torch and pytorch-msssim: pip install -e '.[torch]'")
    loaded = load_inputs(inputs, tile, max_tiles_per_input, seed, mpp_override)
    similarity = load_similarity(feature_similarity, embedding_encoder)
    out_dir.mkdir(parents=True, exist_ok=True)

    start = progress or no_progress
    n_points = sum(len(q) for q in sweep.values())
    rows: list[dict[str, Any]] = []
    applied: dict[str, bool] = {}
    with single_thread_torch():
        for inp in loaded:
            advance = start(inp.name[:40], len(inp.tiles) * n_points)
            for name in codecs:
                for q in sweep[name]:
                    codec, applied[name] = make_codec(name, q, threads)
                    m = measure(inp, codec, advance, similarity)
                    rows.append(
                        {"input": inp.name, "kind": inp.kind, "codec": name, "quality": q, **m,
                         "threads": threads, "threads_applied": applied[name]}
                    )  # fmt: skip

    curve = mean_curve(rows)
    bd, bd_in = bd_tables(rows, codecs)
    match = match_anchor(rows, codecs)
    config = {
        "inputs": [str(p) for p in inputs], "codecs": codecs, "qualities": sweep, "tile": tile,
        "threads": threads, "threads_applied": [c for c in codecs if applied.get(c)],
        "max_tiles_per_input": max_tiles_per_input, "seed": seed, "mpp_override": mpp_override,
        "tissue_threshold": TISSUE_THRESHOLD, "anchor": f"{ANCHOR} q{ANCHOR_QUALITY:g}",
        "bd_methods": list(BD_METHODS),
        "similarity": similarity.describe(),
    }  # fmt: skip
    env = environment(codecs)
    plots = write_plots(out_dir, curve, codecs)
    csv_path, json_path, report_path = (
        out_dir / "results.csv", out_dir / "results.json", out_dir / "report.md"
    )  # fmt: skip
    write_results_csv(csv_path, rows)
    described = [i.describe() for i in loaded]
    write_results_json(json_path, {
        "config": config, "environment": env, "inputs": described, "rows": rows,
        "mean_curve": curve, "bd_rate": bd, "bd_rate_per_input": bd_in, "jpeg_q80_match": match,
        "notes": "non-finite numbers (inf PSNR of exact tiles, n/a deltas) are written as null",
    })  # fmt: skip
    write_text(
        report_path, render_report(config, env, loaded, curve, bd, bd_in, match, plots, codecs)
    )
    return BenchmarkResult(
        rows=rows, inputs=described, mean_curve=curve, bd_rates=bd, bd_per_input=bd_in,
        jpeg_q80_match=match, out_dir=out_dir, csv_path=csv_path, json_path=json_path,
        report_path=report_path, plots=plots,
    )  # fmt: skip
