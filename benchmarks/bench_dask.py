"""`slidepress batch` on Dask: throughput with 1 vs 2 workers, the Dask path's overhead against
the plain batch runner on one slide, and the scheduler's cost per task and per region.

    python benchmarks/bench_dask.py                       # 4 slides of 6144 px, ~3 min
    python benchmarks/bench_dask.py --slides 6 --size 6144 --json .bench/dask/run.json
    python benchmarks/bench_dask.py --only overhead --repeat 7   # one slide, plain vs Dask

Slides: mosaics of real H&E tiles (`tissue_slide.build_slide`, one seed per slide, cached in
.bench/). Job: `compress --codec jpeg` with one coding thread per slide (so a worker is one
core). Times exclude starting the cluster (reported apart). Writes .bench/dask/bench_dask.json
and .md; prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from common import BENCH_DIR, git_commit, log
from slidepress.distributed.manifest import discover
from slidepress.distributed.runner import ClusterOptions, run_tasks
from slidepress.pipeline.batch import CompressJob, EncodeJob, run_batch
from tissue_slide import build_slide

OUT = BENCH_DIR / "dask"


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def plain(slides: list[Path], job: Any, out: Path) -> dict[str, Any]:
    """The batch runner in this process, one slide after the other."""
    out = _fresh(out)
    t0 = time.perf_counter()
    outcomes = list(run_batch(slides, job, out))
    s = time.perf_counter() - t0
    assert all(o.status == "done" for o in outcomes), [o.error for o in outcomes]
    tiles = sum(o.count for o in outcomes)
    return {"seconds": round(s, 3), "tiles": tiles,
            "slides_per_min": round(60 * len(slides) / s, 2),
            "tiles_per_s": round(tiles / s, 1)}  # fmt: skip


def dask(
    slides: list[Path], job: Any, out: Path, workers: int, client: Any = None, **kw: Any
) -> dict[str, Any]:
    out = _fresh(out)
    tasks = [t for s in slides for t in discover(s, out)]
    r = run_tasks(tasks, job, ClusterOptions(workers=workers, **kw), client=client)
    assert all(o.status == "done" for o in r.outcomes), [o.error for o in r.outcomes]
    tiles = sum(o.count for o in r.outcomes)
    return {"workers": workers, "seconds": round(r.seconds, 3), "startup_s": round(r.startup_s, 2),
            "tiles": tiles, "slides_per_min": round(60 * len(slides) / r.seconds, 2),
            "tiles_per_s": round(tiles / r.seconds, 1), "regions": r.regions,
            "task_seconds": round(sum(o.seconds for o in r.outcomes), 3)}  # fmt: skip


def _noop(i: int) -> int:
    return i


def task_overhead(n: int = 400) -> dict[str, Any]:
    """Scheduler round trip per task (submit, run a no-op, gather) on a 2-worker local
    cluster: the fixed cost every slide or region task pays on top of its work."""
    from distributed import Client, LocalCluster, as_completed

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as c,
        Client(c) as client,
    ):
        client.submit(_noop, -1, pure=False).result()
        t0 = time.perf_counter()
        for f in as_completed([client.submit(_noop, i, pure=False) for i in range(n)]):
            f.result()
        s = time.perf_counter() - t0
    return {"tasks": n, "ms_per_task": round(1000 * s / n, 3)}


def single_slide(slide: Path, job: Any, work: Path, repeat: int) -> dict[str, Any]:
    """One slide, plain runner vs Dask on one warm worker, `repeat` times interleaved (a change
    in the machine's load hits both); the overhead is the difference of the medians."""
    from distributed import Client

    from slidepress.distributed.runner import local_cluster

    log(f"one slide: plain vs dask (1 warm worker), {repeat} interleaved repeats ...")
    with local_cluster(1, 1, dashboard=False) as c, Client(c) as client:
        plain([slide], job, work / "warm_plain")
        dask([slide], job, work / "warm", 1, client=client)
        one_plain, one_dask = [], []
        for _ in range(repeat):
            one_plain.append(plain([slide], job, work / "one_plain")["seconds"])
            one_dask.append(dask([slide], job, work / "one_dask", 1, client=client)["seconds"])
    p, d = statistics.median(one_plain), statistics.median(one_dask)
    diffs = sorted(b - a for a, b in zip(one_plain, one_dask, strict=True))
    return {"plain_s": one_plain, "dask_s": one_dask, "repeat": repeat,
            "plain_median_s": p, "dask_median_s": d,
            "overhead_pct": round(100 * (d - p) / p, 2),
            "pair_diff_median_s": round(statistics.median(diffs), 3)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=4)
    ap.add_argument("--size", type=int, default=6144)
    ap.add_argument("--repeat", type=int, default=3, help="single-slide overhead repeats")
    ap.add_argument("--json", type=Path, default=OUT / "bench_dask.json")
    ap.add_argument("--only", choices=("all", "overhead"), default="all",
                    help="overhead: only the single-slide plain vs Dask comparison")  # fmt: skip
    a = ap.parse_args()
    slides = [build_slide(a.size, seed=i)[0] for i in range(a.slides)]
    job = CompressJob(options={"codec": "jpeg", "workers": 1})
    work = OUT / "work"
    res: dict[str, Any] = {
        "slides": a.slides, "size_px": a.size, "job": job.to_dict(), "cpus": os.cpu_count(),
        "machine": platform.machine(), "commit": git_commit(),
    }  # fmt: skip

    res["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]  # others' work on the box
    if a.only == "overhead":
        res["single_slide"] = single_slide(slides[0], job, work, a.repeat)
        res["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        shutil.rmtree(work, ignore_errors=True)
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res["single_slide"], indent=1), res["loadavg_start"], res["loadavg_end"])
        return
    log("plain batch runner over all slides (after one warm-up slide) ...")
    plain(slides[:1], job, work / "warm")
    res["plain"] = plain(slides, job, work / "plain")
    for w in (1, 2):
        log(f"dask, {w} worker(s) (cold workers: imports and codec load included) ...")
        res[f"dask_{w}"] = dask(slides, job, work / f"dask{w}", w)
    res["speedup_2_vs_1"] = round(res["dask_1"]["seconds"] / res["dask_2"]["seconds"], 3)
    res["single_slide"] = single_slide(slides[0], job, work, a.repeat)

    log("task overhead (no-op tasks) ...")
    res["task_overhead"] = task_overhead()

    log("region split: one slide's encode whole vs in bands ...")
    enc = EncodeJob(encoder="mean-rgb", options={"workers": 1})
    whole = dask(slides[:1], enc, work / "enc_whole", 1, region_px=0)
    bands = dask(slides[:1], enc, work / "enc_bands", 1, region_px=1, band_rows=8)
    n = max(1, bands["regions"])
    res["regions"] = {
        "whole_s": whole["seconds"], "split_s": bands["seconds"], "regions": bands["regions"],
        "ms_per_region": round(1000 * (bands["seconds"] - whole["seconds"]) / n, 1),
    }  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)

    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(res, indent=2) + "\n")
    lines = [
        f"# bench_dask: {a.slides} slides of {a.size} px, compress jpeg, {os.cpu_count()} CPUs",
        "",
        "| run | seconds | slides/min | tiles/s |",
        "|---|---|---|---|",
    ]
    for k in ("plain", "dask_1", "dask_2"):
        r = res[k]
        lines.append(f"| {k} | {r['seconds']} | {r['slides_per_min']} | {r['tiles_per_s']} |")
    s, t, g = res["single_slide"], res["task_overhead"], res["regions"]
    lines += [
        "",
        f"- 2 vs 1 worker: {res['speedup_2_vs_1']}x; cluster start "
        f"{res['dask_1']['startup_s']} s (1 worker), {res['dask_2']['startup_s']} s (2)",
        f"- one slide, Dask vs plain runner: {s['overhead_pct']} % (median of {a.repeat}: "
        f"{statistics.median(s['dask_s']):.2f} s vs {statistics.median(s['plain_s']):.2f} s)",
        f"- scheduler round trip per task (no-op): {t['ms_per_task']} ms",
        f"- region split (encode mean-rgb, {g['regions']} bands): {g['split_s']} s vs whole "
        f"{g['whole_s']} s, {g['ms_per_region']} ms per region",
    ]
    md = "\n".join(lines) + "\n"
    a.json.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
