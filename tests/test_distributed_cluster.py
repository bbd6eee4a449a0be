"""`slidepress batch --scheduler tcp://...` on a real external cluster (`dask scheduler` and two
`dask worker` processes started here, the venv's executables): the same outputs as a local
run, and a worker killed mid-run still leaves complete, valid outputs and no partial files."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from .conftest import needs_shared

pytestmark = [pytest.mark.slow, needs_shared]
BIN = Path(sys.executable).parent
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(*args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "slidepress", "batch", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV)  # fmt: skip


def _rows(report: Path) -> dict[str, dict]:
    with open(report, newline="") as f:
        return {r["slide"]: r for r in csv.DictReader(f)}


class Cluster:
    def __init__(self, tmp: Path):
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.log = tmp / "dask-logs"
        self.log.mkdir()
        self.procs: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        out = open(self.log / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen([str(BIN / "dask"), *args], stdout=out, stderr=out, env=ENV)
        self.procs.append(p)
        return p

    def start(self) -> None:
        from distributed import Client

        self._start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                    "--no-dashboard")  # fmt: skip
        for i in range(2):  # no nanny: the worker process is the one we kill
            self.workers.append(
                self._start(
                    f"worker{i}",
                    "worker",
                    self.address,
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--no-dashboard",
                    "--name",
                    f"w{i}",
                )  # fmt: skip
            )
        deadline = time.time() + 90
        while True:
            try:
                with Client(self.address, timeout="5s") as c:
                    c.wait_for_workers(2, timeout=60)
                    return
            except OSError:
                if time.time() > deadline:
                    raise

    def worker_pids_busy(self) -> list[int]:
        """Worker processes that are running a task now."""
        from distributed import Client

        with Client(self.address, timeout="5s") as c:
            busy = {a for a, keys in c.processing().items() if keys}
            info = c.scheduler_info()["workers"]
        pids = {f"w{i}": w.pid for i, w in enumerate(self.workers)}
        return [pids[str(info[a]["name"])] for a in busy if a in info]

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def archive(tmp_path: Path, shared_slides: Path) -> Path:
    root = tmp_path / "archive"
    root.mkdir()
    for i in range(3):  # distinct names, same content: six slides' worth of work
        (root / f"cmu{i}.svs").symlink_to(shared_slides / "CMU-1-Small-Region.svs")
        (root / f"pyr{i}.tiff").symlink_to(shared_slides / "CMU-1-Small-Region_pyramid_jpeg90.tiff")
    (root / "broken.svs").symlink_to(shared_slides / "broken.svs")
    return root


def test_external_cluster_same_outputs_as_local(cluster: Cluster, archive: Path, tmp_path: Path):
    from slidepress.store import read_grid

    local, remote = tmp_path / "local", tmp_path / "remote"
    args = ["encode", "--workers", "1"]
    p1 = _batch(str(archive), "-o", str(local), "--workers", "2", *args)
    _, err1 = p1.communicate(timeout=300)
    p2 = _batch(str(archive), "-o", str(remote), "--scheduler", cluster.address, *args)
    _, err2 = p2.communicate(timeout=300)
    assert p1.returncode == p2.returncode == 2, (err1, err2)  # broken.svs
    assert "2 worker(s) on " + cluster.address in err2
    a, b = _rows(local / "report.csv"), _rows(remote / "report.csv")
    assert {k: r["status"] for k, r in a.items()} == {k: r["status"] for k, r in b.items()}
    assert b["broken.svs"]["status"] == "failed"
    grids = sorted(p.name for p in local.glob("*.zarr"))
    assert len(grids) == 6 and grids == sorted(p.name for p in remote.glob("*.zarr"))
    for name in grids:
        ga, gb = read_grid(local / name), read_grid(remote / name)
        for k in ("features", "mask", "coords", "tissue_fraction", "tissue_mask"):
            assert np.array_equal(getattr(ga, k), getattr(gb, k)), (name, k)


def test_killed_worker_still_gives_complete_valid_outputs(
    cluster: Cluster, archive: Path, tmp_path: Path
):
    from slidepress.store.container import Container

    (archive / "broken.svs").unlink()
    out = tmp_path / "out"
    p = _batch(str(archive), "-o", str(out), "--scheduler", cluster.address,
               "compress", "--codec", "jpeg", "--workers", "1")  # fmt: skip
    killed = None
    deadline = time.time() + 120
    while killed is None and time.time() < deadline and p.poll() is None:
        busy = cluster.worker_pids_busy()
        # kill once a slide is under way (its container partly written)
        if busy and any(".partial-" in f.name for f in out.glob(".*")):
            killed = busy[0]
            os.kill(killed, signal.SIGKILL)
            next(w for w in cluster.workers if w.pid == killed).wait()  # reaped: no zombie
        time.sleep(0.05)
    _, err = p.communicate(timeout=300)
    assert killed is not None, f"no worker was caught mid-task: {err}"
    assert p.returncode == 0, err
    rows = _rows(out / "report.csv")
    assert len(rows) == 6 and all(r["status"] == "done" for r in rows.values()), rows
    for name in rows:
        spz = out / f"{Path(name).stem}.spz"
        with Container(spz) as c:
            assert c.verify() == [], spz  # every tile's checksum holds
            assert c.manifest["tiles"]["stored"] > 0
    assert not [f for f in out.rglob("*") if ".partial-" in f.name]  # swept by the retry
    assert sorted(f.name for f in out.glob("*.spz")) == sorted(
        f"{Path(n).stem}.spz" for n in rows
    )  # no duplicates
