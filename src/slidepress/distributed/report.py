"""The record of a distributed batch: `report.csv` (one row per slide, the batch runner's own
`write_report`), `report.md` (totals, throughput, failures) and `throughput.png` (slides and
tiles finished over time), all written atomically into the output folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..pipeline.batch import write_report
from ..store.atomic import save_figure, write_text
from .runner import RunResult


def totals(result: RunResult) -> dict[str, Any]:
    """Counts, bytes and rates of a run (rates over the work done, skipped slides aside)."""
    outs = result.outcomes
    by = {s: sum(o.status == s for o in outs) for s in ("done", "skipped", "failed")}
    done = [o for o in outs if o.status == "done"]
    units = next((o.units for o in outs if o.units), "tiles")
    count = sum(o.count for o in done)
    b_in = sum(o.bytes_in for o in done)
    b_out = sum(o.bytes_out for o in done)
    wall = max(result.seconds, 1e-9)
    return {
        "slides": len(outs), **by, "units": units, "count": count,
        "bytes_in": b_in, "bytes_out": b_out,
        "ratio": round(b_in / b_out, 3) if b_out else None,
        "wall_s": round(result.seconds, 3), "startup_s": round(result.startup_s, 3),
        "slides_per_min": round(60 * by["done"] / wall, 3),
        "units_per_s": round(count / wall, 2),
        "task_seconds": round(sum(o.seconds for o in outs), 3),
        "workers": result.workers, "regions": result.regions, "scheduler": result.scheduler,
    }  # fmt: skip


def plot_throughput(result: RunResult, path: Path) -> Path:
    """Slides and tiles (cells) finished over the run, one step per slide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = sorted(
        (t, o.count if o.status == "done" else 0)
        for t, o in zip(result.finished_s, result.outcomes, strict=True)
    )
    ts = [0.0] + [t for t, _ in pairs]
    slides = list(range(len(ts)))
    units = [0]
    for _, c in pairs:
        units.append(units[-1] + c)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.step(ts, slides, where="post", color="tab:blue")
    ax.set_xlabel("seconds since the first task")
    ax.set_ylabel("slides finished", color="tab:blue")
    ax2 = ax.twinx()
    unit = next((o.units for o in result.outcomes if o.units), "tiles")
    ax2.step(ts, units, where="post", color="tab:orange")
    ax2.set_ylabel(f"{unit} coded", color="tab:orange")
    ax.set_title(f"{len(result.outcomes)} slides on {result.workers} Dask worker(s)")
    fig.tight_layout()
    return save_figure(fig, path)


def write_reports(out_dir: str | Path, result: RunResult, title: str = "slidepress batch") -> dict:
    """report.csv, report.md and throughput.png in `out_dir`; returns their paths and totals."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = write_report(out_dir / "report.csv", result.outcomes)
    png = plot_throughput(result, out_dir / "throughput.png")
    t = totals(result)
    u = t["units"]
    lines = [
        f"# {title}",
        "",
        f"Scheduler `{t['scheduler']}`, {t['workers']} worker(s); "
        f"cluster start {t['startup_s']:.1f} s, run {t['wall_s']:.1f} s.",
        "",
        "| slides | done | skipped | failed | " + u + " | MB in | MB out | ratio | "
        "slides/min | " + u + "/s | region tasks |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {t['slides']} | {t['done']} | {t['skipped']} | {t['failed']} | {t['count']} | "
        f"{t['bytes_in'] / 1e6:.2f} | {t['bytes_out'] / 1e6:.2f} | {t['ratio'] or '-'} | "
        f"{t['slides_per_min']:.2f} | {t['units_per_s']:.1f} | {t['regions']} |",
        "",
        "Rates count the slides done in this run (skipped ones were already done); bytes in "
        "are the source files, bytes out the outputs. Per-slide rows: `report.csv`.",
        "",
        "![throughput](throughput.png)",
        "",
    ]
    failed = [o for o in result.outcomes if o.status == "failed"]
    if failed:
        lines += ["## Failed", "", "| slide | error |", "|---|---|"]
        lines += [f"| {o.slide} | {o.error.replace('|', '/')} |" for o in failed]
        lines.append("")
    if result.dashboard:
        lines += [f"Dask dashboard during the run: {result.dashboard}", ""]
    md = write_text(out_dir / "report.md", "\n".join(lines).rstrip() + "\n")
    return {"csv": csv_path, "md": md, "png": png, "totals": t}
