"""Encode and compress of a slide in object storage vs on local disk, in one run (issue 25):
time, bytes fetched and the S3 requests each run makes.

Starts an S3-compatible server on loopback (moto's `moto_server`, through tests/s3_server.py
with its request log on), uploads the slide, then runs the batch runner in this process on
the same slide from local disk and from `s3://` to `s3://` (a fresh staging cache for each
run, so nothing is reused), alternating, best of `--repeats`. Reports seconds, the
remote/local ratio, the bytes fetched from the store against the object's size, and the
requests the server answered during the run by S3 operation (GET, HEAD, PUT, POST, LIST;
from the server's log, so every request counts, whichever process or library made it),
beside the tile ranges the reader asked for (`remote.read_ranges`: neighbours share a GET) and the
slide's level-0 TIFF tiles, which is what scales a slide's cost to a larger one
(docs/DEPLOYMENT.md). Two uploads of the slide: plainly (its SHA-256 content key then
streams the whole object) and with a SHA-256 checksum the store keeps (S3
`ChecksumSHA256`: the content key costs one request, and only the structure and the tiles
read are fetched).

    python benchmarks/bench_object_storage.py [--slide PATH] [--repeats 3] [--json out.json]

`--batch`: `batch` of 8 slides (copies of `--slide` under distinct names) on a LocalCluster of
2 Dask workers (`distributed.runner.run_tasks`, as `slidepress batch --workers 2` runs it),
from a local folder to a local folder vs from an `s3://` prefix to an `s3://` prefix (plain
uploads, and uploads with a SHA-256 checksum), a fresh cluster and staging cache per run;
then a re-run of each (every slide skipped: what a resumed archive run costs). Reports the
seconds of the run (cluster start-up excluded, shown apart), the s3/local ratio, and the
requests the server answered, in all, per slide, and for the re-run.

    python benchmarks/bench_object_storage.py --batch [--slides 8] [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import REPO, SLIDES_DIR

sys.path.insert(0, str(REPO))  # the tests' S3 server helper, the one place one is started
from tests.s3_server import S3Server, available  # noqa: E402

OPERATIONS = ("GET", "HEAD", "PUT", "POST", "LIST", "DELETE")


def level0_tiles(slide: Path) -> tuple[int, tuple[int, int]]:
    """Tiles of the slide's level-0 TIFF page, and their size."""
    import tifffile

    with tifffile.TiffFile(slide) as tf:
        page = tf.pages[0]
        tw, th = page.tilewidth or page.imagewidth, page.tilelength or page.imagelength
        return math.ceil(page.imagewidth / tw) * math.ceil(page.imagelength / th), (tw, th)


def count_ranges() -> list[int]:
    """Wrap `remote.read_ranges` to count the ranges asked for (one GET each)."""
    from slidepress import remote

    count = [0]
    real = remote.read_ranges

    def read_ranges(url, ranges):
        count[0] += len(ranges)
        return real(url, ranges)

    remote.read_ranges = read_ranges
    return count


def batch_bench(args: argparse.Namespace, server: S3Server, work: Path) -> list[dict]:
    """`--batch`: N copies of the slide on 2 Dask workers, local vs s3, then re-runs."""
    from slidepress.distributed.manifest import discover
    from slidepress.distributed.runner import ClusterOptions, run_tasks
    from slidepress.pipeline.batch import CompressJob, EncodeJob

    s3 = server.client()
    body = args.slide.read_bytes()
    folder = work / "slides"
    folder.mkdir()
    suffix = args.slide.suffix
    for i in range(args.slides):
        (folder / f"s{i:02d}{suffix}").symlink_to(args.slide.resolve())
        s3.put_object(Bucket="slides", Key=f"plain/s{i:02d}{suffix}", Body=body)
        s3.put_object(Bucket="slides", Key=f"sum/s{i:02d}{suffix}", Body=body,
                      ChecksumAlgorithm="SHA256")  # fmt: skip
    del body
    job = {
        "compress": CompressJob(options={"codec": "jpeg", "quality": 80, "workers": 1}),
        "encode": EncodeJob(encoder="mean-rgb", options={"workers": 1}),
    }[args.job]
    opts = ClusterOptions(workers=2)
    best: dict[str, dict[str, float]] = {}
    seen: dict[str, dict] = {}
    for rep in range(args.repeats):
        for where in ("local", "s3 plain", "s3 checksum"):
            os.environ["SLIDEPRESS_CACHE"] = str(work / f"cache-batch-{where}-{rep}")
            if where == "local":
                src, out = folder, work / f"out-batch-{rep}"
            else:
                prefix = "plain" if where == "s3 plain" else "sum"
                src, out = f"s3://slides/{prefix}/", f"s3://out/batch-{prefix}-{rep}/"
            tasks = discover(src, out)
            assert len(tasks) == args.slides, len(tasks)
            row = best.setdefault(where, {})
            counts = {}
            for run in ("first", "rerun"):
                n_before = len(server.requests())
                res = run_tasks(tasks, job, opts)
                want = "done" if run == "first" else "skipped"
                assert [o.status for o in res.outcomes] == [want] * args.slides, [
                    (o.status, o.error) for o in res.outcomes]  # fmt: skip
                made = server.requests()[n_before:]
                assert all(status < 400 or op == "HEAD" for op, status in made), made
                row[run] = min(row.get(run, float("inf")), res.seconds)
                row["startup"] = min(row.get("startup", float("inf")), res.startup_s)
                counts[run] = Counter(op for op, _ in made)
            seen[where] = counts
    rows = []
    for where in ("s3 plain", "s3 checksum"):
        first, rerun = seen[where]["first"], seen[where]["rerun"]
        rows.append({
            "job": args.job, "slides": args.slides, "workers": 2, "source": where,
            "local_s": round(best["local"]["first"], 2), "s3_s": round(best[where]["first"], 2),
            "ratio_s3_vs_local": round(best[where]["first"] / best["local"]["first"], 2),
            "rerun_local_s": round(best["local"]["rerun"], 2),
            "rerun_s3_s": round(best[where]["rerun"], 2),
            "startup_s": round(best[where]["startup"], 2),
            "requests": {op: first.get(op, 0) for op in OPERATIONS},
            "requests_per_slide": round(sum(first.values()) / args.slides, 1),
            "rerun_requests": {op: rerun.get(op, 0) for op in OPERATIONS},
        })  # fmt: skip
    mb = args.slide.stat().st_size / 1e6
    loc = best["local"]
    print(f"batch {args.job} of {args.slides} x {args.slide.name} ({mb:.2f} MB) on 2 Dask "
          f"workers (LocalCluster); loopback moto S3; best of {args.repeats}; local: "
          f"{loc['first']:.2f} s, re-run {loc['rerun']:.2f} s, cluster start-up "
          f"{loc['startup']:.2f} s")  # fmt: skip
    print("| source | local s | s3 s | s3 / local | requests (GET/HEAD/PUT/POST/LIST/DELETE) "
          "| per slide | re-run local s | re-run s3 s | re-run requests |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        q, rq = r["requests"], r["rerun_requests"]
        print(f"| {r['source']} | {r['local_s']} | {r['s3_s']} | {r['ratio_s3_vs_local']} | "
              f"{'/'.join(str(q[o]) for o in OPERATIONS)} | {r['requests_per_slide']} | "
              f"{r['rerun_local_s']} | {r['rerun_s3_s']} | "
              f"{'/'.join(str(rq[o]) for o in OPERATIONS)} |")  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slide", type=Path, default=SLIDES_DIR / "CMU-1-Small-Region.svs")
    ap.add_argument("--repeats", type=int, default=None, help="best of (default 3; --batch 2)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--batch", action="store_true", help="batch of --slides on 2 Dask workers")
    ap.add_argument("--slides", type=int, default=8)
    ap.add_argument("--job", choices=("compress", "encode"), default="compress")
    args = ap.parse_args()
    if args.repeats is None:
        args.repeats = 2 if args.batch else 3
    if not args.slide.is_file():
        sys.exit(f"slide not found: {args.slide} (shared data absent?)")
    why = available()
    if why:
        sys.exit(why)
    work = Path(tempfile.mkdtemp(prefix="bench-object-storage-"))
    server = S3Server(log=work / "requests.log").start()
    os.environ.update({k: v for k, v in server.env.items() if not k.startswith("AWS_C")})
    os.environ.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)

    from slidepress import remote
    from slidepress.pipeline.batch import CompressJob, EncodeJob, run_slide

    s3 = server.client()
    s3.create_bucket(Bucket="slides")
    s3.create_bucket(Bucket="out")
    if args.batch:
        try:
            rows = batch_bench(args, server, work)
        finally:
            server.stop()
            shutil.rmtree(work, ignore_errors=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        return
    ranges = count_ranges()
    body = args.slide.read_bytes()
    s3.put_object(Bucket="slides", Key=f"plain/{args.slide.name}", Body=body)
    s3.put_object(Bucket="slides", Key=f"sum/{args.slide.name}", Body=body,
                  ChecksumAlgorithm="SHA256")  # fmt: skip
    del body
    size = args.slide.stat().st_size
    tiles, tile_size = level0_tiles(args.slide)
    jobs = {
        "compress": CompressJob(options={"codec": "jpeg", "quality": 80, "workers": 2}),
        "encode": EncodeJob(encoder="mean-rgb", options={"workers": 2}),
    }
    rows = []
    try:
        for kind, job in jobs.items():
            job.prepare()
            best: dict[str, float] = {}
            seen: dict[str, dict] = {}
            for rep in range(args.repeats):
                for where in ("local", "s3 plain", "s3 checksum"):
                    os.environ["SLIDEPRESS_CACHE"] = str(work / f"cache-{kind}-{where}-{rep}")
                    if where == "local":
                        src, out = str(args.slide), str(work / f"out-{kind}-{rep}")
                    else:
                        prefix = "plain" if where == "s3 plain" else "sum"
                        src = f"s3://slides/{prefix}/{args.slide.name}"
                        out = f"s3://out/{kind}-{prefix}-{rep}/"
                    before, n_before = remote.fetched_bytes(), len(server.requests())
                    r_before = ranges[0]
                    t0 = time.perf_counter()
                    o = run_slide({"path": src}, job, out)
                    dt = time.perf_counter() - t0
                    assert o.status == "done", o.error
                    best[where] = min(best.get(where, float("inf")), dt)
                    made = server.requests()[n_before:]
                    assert all(status < 400 or op == "HEAD" for op, status in made), made
                    seen[where] = {
                        "fetched": remote.fetched_bytes() - before,
                        "requests": Counter(op for op, _ in made),
                        "ranges": ranges[0] - r_before, "bytes_out": o.bytes_out,
                    }  # fmt: skip
            for where in ("s3 plain", "s3 checksum"):
                s = seen[where]
                rows.append({
                    "job": kind, "source": where, "local_s": round(best["local"], 3),
                    "s3_s": round(best[where], 3),
                    "ratio_s3_vs_local": round(best[where] / best["local"], 2),
                    "bytes_fetched": s["fetched"], "object_bytes": size,
                    "fetched_vs_object": round(s["fetched"] / size, 3),
                    "requests": {op: s["requests"].get(op, 0) for op in OPERATIONS},
                    "tile_ranges": s["ranges"], "level0_tiles": tiles,
                    "tile_size": list(tile_size), "output_bytes": s["bytes_out"],
                })  # fmt: skip
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"slide {args.slide.name}, {size / 1e6:.2f} MB, {tiles} level-0 tiles of "
          f"{tile_size[0]}x{tile_size[1]}; loopback moto S3; best of {args.repeats}")  # fmt: skip
    print("| job | source | local s | s3 s | s3 / local | fetched MB | fetched / object "
          "| GET | HEAD | PUT | POST | LIST | tile ranges | output MB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        q = r["requests"]
        print(f"| {r['job']} | {r['source']} | {r['local_s']} | {r['s3_s']} | "
              f"{r['ratio_s3_vs_local']} | {r['bytes_fetched'] / 1e6:.2f} | "
              f"{r['fetched_vs_object']} | {q['GET']} | {q['HEAD']} | {q['PUT']} | "
              f"{q['POST']} | {q['LIST']} | {r['tile_ranges']} | "
              f"{r['output_bytes'] / 1e6:.2f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
