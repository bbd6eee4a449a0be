"""Bounded load test of the service on loopback: N clients upload slides and run encode jobs
while status calls are timed; counts lost/duplicated jobs and the service's peak memory.

    python benchmarks/bench_service.py                     # 50 uploads + jobs, 10 clients
    python benchmarks/bench_service.py --jobs 20 --clients 4 --kind compress

Baseline in the same run: status-call latency on the idle service (no job running), so the
loaded latencies are also reported as ratios to it. Fairness: a first user queues 8 jobs
(`--fair-queue`), then a second user submits one; the second job's wait in the queue
(`fair_wait_s`, submit to start) against one job's run time and the first queue's span.
Writes .bench/service/report.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from common import BENCH_DIR, git_commit, log, slidepress_exe
from slidepress.client import Client
from slidepress.slide import sample_slide_path


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rss:
    """Peak RSS of the web process and of it plus its worker processes, sampled at 10 Hz."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.web = self.total = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            try:
                web = self.proc.memory_info().rss
                kids = sum(c.memory_info().rss for c in self.proc.children(recursive=True))
            except psutil.Error:
                continue
            self.web, self.total = max(self.web, web), max(self.total, web + kids)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=50, help="uploads, one job each")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2, help="service worker processes")
    ap.add_argument("--kind", choices=["encode", "compress"], default="encode")
    ap.add_argument("--fair-queue", type=int, default=8, help="first user's queue (fairness)")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "service")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="slidepress-bench-service-"))
    exe = slidepress_exe()
    token, token2 = (
        subprocess.run([exe, "token", "create", name, "--data-dir", str(data)],
                       capture_output=True, text=True, check=True).stdout.strip()
        for name in ("bench", "bench2")
    )  # fmt: skip
    port = _port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [exe, "serve", "--data-dir", str(data), "--port", str(port), "--workers",
         str(args.workers), "--log-level", "warning", "--max-jobs-per-user", str(args.jobs)],
        start_new_session=True,
    )  # fmt: skip
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/api/health", timeout=1).json()["workers"] == args.workers:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        rss = Rss(server.pid)
        rss.thread.start()
        slide = sample_slide_path()
        client = Client(url, token)

        # baseline: status calls on the idle service
        probe = client.upload(slide)
        idle = []
        for _ in range(200):
            t = time.perf_counter()
            client.health()
            idle.append(time.perf_counter() - t)
        job0 = client.submit(args.kind, [probe["id"]])
        client.wait(job0["id"])
        idle_status = []
        for _ in range(200):
            t = time.perf_counter()
            client.job(job0["id"])
            idle_status.append(time.perf_counter() - t)

        # capacity: status calls as fast as the clients can send them, for 5 s, no job running
        def hammer(_: int) -> int:
            n, end = 0, time.perf_counter() + 5
            with Client(url, token) as c:
                while time.perf_counter() < end:
                    c.job(job0["id"])
                    n += 1
            return n

        with ThreadPoolExecutor(args.clients) as pool:
            capacity = sum(pool.map(hammer, range(args.clients))) / 5

        status_lat: list[float] = []
        submitted: list[str] = []
        lock = threading.Lock()
        requests = [0]

        def one(i: int) -> str:
            with Client(url, token) as c:
                up = c.upload(slide)
                job = c.submit(args.kind, [up["id"]])
                n = 2
                while True:
                    t = time.perf_counter()
                    j = c.job(job["id"])
                    dt = time.perf_counter() - t
                    n += 1
                    with lock:
                        status_lat.append(dt)
                    if j["state"] in ("succeeded", "failed", "cancelled"):
                        break
                    time.sleep(0.2)
                with lock:
                    submitted.append(job["id"])
                    requests[0] += n
                return j["state"]

        log(f"{args.jobs} uploads + {args.kind} jobs from {args.clients} clients ...")
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            states = list(pool.map(one, range(args.jobs)))
        wall = time.perf_counter() - t0

        listed = [j for j in client.jobs() if j["id"] != job0["id"]]
        ids = [j["id"] for j in listed]

        # fairness: the first user's queue, then one job of a second user
        log(f"fairness: {args.fair_queue} jobs of one user, then 1 of another ...")
        ups = [client.upload(slide)["id"] for _ in range(args.fair_queue)]
        first = [client.submit(args.kind, [u])["id"] for u in ups]
        with Client(url, token2) as other:
            mine = other.submit(args.kind, [other.upload(slide)["id"]])
            done = other.wait(mine["id"], timeout=600)
        queue = [client.wait(j, timeout=600) for j in first]
        run_s = statistics.median(j["finished_at"] - j["started_at"] for j in queue)
        fair = {
            "fair_queue": args.fair_queue,
            "fair_wait_s": round(done["started_at"] - done["created_at"], 2),
            "fair_turnaround_s": round(done["finished_at"] - done["created_at"], 2),
            "fair_job_run_s": round(run_s, 2),
            "fair_first_queue_span_s": round(max(j["finished_at"] for j in queue)
                                             - min(j["created_at"] for j in queue), 2),
            "fair_jobs_before_it": sum(j["started_at"] < done["started_at"] for j in queue),
        }  # fmt: skip
        rss.stop.set()
        report = {
            "commit": git_commit(),
            "kind": args.kind, "jobs": args.jobs, "clients": args.clients,
            "workers": args.workers, "cpus": os.cpu_count(),
            "wall_s": round(wall, 2),
            "requests": requests[0], "requests_per_s": round(requests[0] / wall, 1),
            "jobs_per_min": round(args.jobs / wall * 60, 1),
            "upload_mb_per_s": round(args.jobs * slide.stat().st_size / wall / 1e6, 2),
            "status_p50_ms": round(statistics.median(status_lat) * 1e3, 2),
            "status_p95_ms": round(pct(status_lat, 0.95) * 1e3, 2),
            "status_max_ms": round(max(status_lat) * 1e3, 2),
            "idle_status_p50_ms": round(statistics.median(idle_status) * 1e3, 2),
            "idle_status_p95_ms": round(pct(idle_status, 0.95) * 1e3, 2),
            "idle_health_p50_ms": round(statistics.median(idle) * 1e3, 2),
            "max_status_requests_per_s": round(capacity, 1),
            "succeeded": states.count("succeeded"),
            "listed_jobs": len(ids), "distinct_jobs": len(set(ids)),
            "lost_jobs": len(set(submitted) - set(ids)),
            "duplicated_jobs": len(ids) - len(set(ids)),
            "runs_per_job": sorted({j["attempts"] for j in listed}),
            "peak_rss_web_mb": round(rss.web / 2**20, 1),
            "peak_rss_total_mb": round(rss.total / 2**20, 1),
            **fair,
        }  # fmt: skip
        report["status_p50_vs_idle"] = round(
            report["status_p50_ms"] / report["idle_status_p50_ms"], 2
        )
        report["status_p95_vs_idle"] = round(
            report["status_p95_ms"] / report["idle_status_p95_ms"], 2
        )
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in report.items()]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    ok = report["lost_jobs"] == 0 and report["duplicated_jobs"] == 0
    sys.exit(0 if ok and report["succeeded"] == args.jobs else 1)


if __name__ == "__main__":
    main()
