"""Run a batch on Dask: a `LocalCluster` of worker processes, or an existing cluster by address.

The graph is dynamic: one task per slide (`tasks.slide_task`, the pipeline's batch runner); a
slide above the region threshold comes back as a plan, and its bands are submitted as tasks of
their own plus a merge task that depends on them, so one huge slide spreads over the cluster.

Faults: a slide's bad input is a `failed` outcome (never an exception); a worker that dies
mid-task has its task re-run elsewhere by the scheduler, and since every output is written
under a temporary name and renamed (store/atomic.py), the re-run never sees or leaves a half
file; a task that kills its worker every time (a slide crashing a native library) ends as
`KilledWorker`, recorded as that slide's failure. On Ctrl-C (or SIGTERM) the futures are
cancelled, the local cluster is shut down, and temporary files of dead processes under the
output folder are removed: what is there is complete, and a re-run resumes (content-keyed
skips, region parts kept).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..pipeline.batch import Job, Outcome
from ..store.atomic import remove_stale_partials
from .manifest import Task
from .regions import SPLIT

Event = Callable[[str, dict[str, Any]], None]  # (kind, data): "cluster", "slide", "region"


@dataclass
class ClusterOptions:
    """Where and how wide to run, and when to split a slide into regions."""

    scheduler: str = "local"  # "local" (a LocalCluster) or an address, tcp://host:8786
    workers: int | None = None  # LocalCluster worker processes (default: cores, <= slides)
    threads_per_worker: int = 1  # slides at once per worker (each has its own read threads)
    region_px: float = 2e9  # level-0 pixels above which a slide is split into bands; 0: never
    band_rows: int = 64  # grid (encode) or level-0 tile (compress) rows per band

    def __post_init__(self) -> None:
        if self.scheduler != "local" and not re.match(r"^[a-z]+://", self.scheduler):
            raise UsageError(
                f"--scheduler must be 'local' or an address like tcp://HOST:8786, "
                f"got {self.scheduler!r}"
            )
        if self.workers is not None and not 1 <= self.workers <= 512:
            raise UsageError(f"--workers must be within 1-512, got {self.workers}")
        if not 1 <= self.threads_per_worker <= 64:
            raise UsageError(
                f"--threads-per-worker must be within 1-64, got {self.threads_per_worker}"
            )
        if self.region_px < 0:
            raise UsageError(f"the region threshold must be >= 0, got {self.region_px}")
        if not 1 <= self.band_rows <= 100_000:
            raise UsageError(f"region rows must be within 1-100000, got {self.band_rows}")


@dataclass
class RunResult:
    """What a distributed batch did, in task order, with when each slide finished."""

    outcomes: list[Outcome]
    finished_s: list[float]  # seconds from the start of the run to each slide's end
    seconds: float  # wall time of the run (cluster start excluded)
    startup_s: float  # connecting to or starting the cluster
    scheduler: str
    workers: int
    dashboard: str | None = None
    regions: int = 0  # region tasks run
    workers_used: dict[str, int] = field(default_factory=dict)


def _has_bokeh() -> bool:
    return find_spec("bokeh") is not None


def _dashboard(client: Any) -> str | None:
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        # without bokeh the scheduler serves only metrics and health there, no dashboard
        if not client.run_on_scheduler(_has_bokeh):
            return None
        return client.dashboard_link or None
    except Exception:  # no HTTP service, an old scheduler
        return None


# Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536 (to hand freed memory back to
# the OS). Setting it also turns off glibc's adaptive mmap threshold, so every tile-sized numpy
# buffer is a fresh mmap, page-faulted and zeroed again: compress ran ~45 % slower (1.15 ->
# 1.69 s for a 6144 px slide, plain runner, measured with and without the variable). Memory is
# bounded by the pipeline's own in-flight limits, so local workers start without it.
WORKER_ENVIRON = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def local_cluster(n_workers: int, threads_per_worker: int = 1, dashboard: bool = True) -> Any:
    """A LocalCluster of worker processes as `batch` runs them: SIGINT left to the client
    (worker_setup.py) and glibc's default allocator settings (WORKER_ENVIRON)."""
    import dask
    from distributed import LocalCluster

    with dask.config.set(WORKER_ENVIRON):  # read when the nannies are made (also restarts)
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=":0" if dashboard and find_spec("bokeh") else None,
            silence_logs=logging.ERROR,
            preload=["slidepress.distributed.worker_setup"],  # Ctrl-C: the CLI's to handle
        )


def open_client(opts: ClusterOptions, n_tasks: int) -> tuple[Any, Any]:
    """A Dask client, and the LocalCluster it owns (None for an existing cluster)."""
    from distributed import Client

    if opts.scheduler == "local":
        n = opts.workers or max(1, min(os.cpu_count() or 1, n_tasks))
        cluster = local_cluster(n, opts.threads_per_worker)
        return Client(cluster), cluster
    try:
        client = Client(opts.scheduler, timeout="20s")
    except (OSError, TimeoutError) as e:
        raise UsageError(f"cannot reach the Dask scheduler at {opts.scheduler}: {e}") from None
    return client, None


def _failure(task: Task, error: BaseException) -> Outcome:
    """A task that failed at the Dask level (its worker died every time, a missing import on
    the workers): recorded as that slide's failure, as a bug (exit 1)."""
    name = type(error).__name__
    msg = f"{task.name}: internal error: {name}: {error}".splitlines()[0]
    return Outcome(task.name, task.item["path"], "failed", error=msg, internal=True)


def run_tasks(
    tasks: Sequence[Task],
    job: Job,
    opts: ClusterOptions,
    on_event: Event | None = None,
    client: Any = None,
) -> RunResult:
    """Run `job` over `tasks` on the cluster; outcomes come back in task order. Errors of the
    job itself (an encoder that cannot load on the workers) raise before any slide runs.
    `client`: a `distributed.Client` of the caller's (kept open; `opts.scheduler` unused)."""
    from distributed import as_completed

    from . import tasks as T

    emit = on_event or (lambda kind, data: None)
    t_start = time.perf_counter()
    own = client is None
    if own:
        client, cluster = open_client(opts, len(tasks))
    else:
        cluster = None
    futures: list[Any] = []
    try:
        startup = time.perf_counter() - t_start
        n_workers = len(client.scheduler_info().get("workers", {}))
        dashboard = _dashboard(client)
        emit("cluster", {"workers": n_workers, "dashboard": dashboard, "startup_s": startup})
        job_d = job.to_dict()
        client.submit(T.check_job, job_d, pure=False).result()
        t0 = time.perf_counter()
        outcomes: list[Outcome | None] = [None] * len(tasks)
        finished = [0.0] * len(tasks)
        used: dict[str, int] = {}
        n_regions = 0
        ac = as_completed()
        meta: dict[Any, tuple[str, int]] = {}

        def submit(kind: str, idx: int, fn: Any, *args: Any) -> Any:
            f = client.submit(fn, *args, pure=False)
            futures.append(f)
            meta[f] = (kind, idx)
            ac.add(f)
            return f

        for i, t in enumerate(tasks):
            submit("slide", i, T.slide_task, t.item, job_d, t.out_dir, opts.region_px,
                   opts.band_rows)  # fmt: skip
        for f in ac:
            kind, i = meta.pop(f)
            task = tasks[i]
            try:
                res = f.result()
            except Exception as e:  # KilledWorker, an import error on the workers ...
                res = {"outcome": _failure(task, e).to_dict(), "split": None, "worker": ""}
            if res.get("worker"):
                used[res["worker"]] = used.get(res["worker"], 0) + 1
            if kind == "region":
                emit("region", res["outcome"])
                continue
            outcome = Outcome.from_dict(res["outcome"])
            split = res.get("split")
            if kind == "slide" and outcome.status == SPLIT and split:
                bands = [
                    submit("region", i, T.region_task, task.item, job_d, task.out_dir, split, b)
                    for b in split["bands"]
                ]
                n_regions += len(bands)
                m = client.submit(T.merge_task, task.item, job_d, task.out_dir, split, bands,
                                  outcome.seconds, pure=False)  # fmt: skip
                futures.append(m)
                meta[m] = ("merge", i)
                ac.add(m)
                emit("split", {"slide": outcome.slide, "regions": len(bands)})
                continue
            outcomes[i] = outcome
            finished[i] = time.perf_counter() - t0
            emit("slide", outcome.to_dict())
        seconds = time.perf_counter() - t0
    except BaseException:
        for f in futures:
            f.cancel()
        if own:
            _close(client, cluster)
        sweep_partials(_local_folders(tasks))
        raise
    if own:
        _close(client, cluster)
    sweep_partials(_local_folders(tasks))  # of workers killed mid-write
    return RunResult(
        outcomes=[o for o in outcomes if o is not None], finished_s=finished, seconds=seconds,
        startup_s=startup, scheduler=opts.scheduler, workers=n_workers, dashboard=dashboard,
        regions=n_regions, workers_used=used,
    )  # fmt: skip


def _local_folders(tasks: Sequence[Task]) -> set[Path]:
    """Output folders on disk (a store's never holds a partial: remote.upload)."""
    from .. import remote

    return {Path(t.out_dir) for t in tasks if not remote.is_url(t.out_dir)}


def _close(client: Any, cluster: Any) -> None:
    try:
        client.close()
    finally:
        if cluster is not None:
            cluster.close()


_PARTIAL_NAME = re.compile(
    r"^\.(?P<stem>.+)\.partial-[A-Za-z0-9_.]+-\d+-[0-9a-f]{8}(?P<suffix>.*)$"
)


def sweep_partials(folders: set[Path] | Sequence[Path]) -> list[Path]:
    """Remove temporary outputs of dead processes on this host under `folders` (a worker
    killed mid-write, an interrupted local cluster): `store.atomic.remove_stale_partials` for
    each target they belong to."""
    removed: list[Path] = []
    seen: set[Path] = set()
    for folder in folders:
        if not folder.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in [*dirnames, *filenames]:
                m = _PARTIAL_NAME.match(name)
                if not m:
                    continue
                target = Path(dirpath) / f"{m['stem']}{m['suffix']}"
                if target not in seen:
                    seen.add(target)
                    removed += remove_stale_partials(target)
            dirnames[:] = [d for d in dirnames if not _PARTIAL_NAME.match(d)]
    return removed
