"""What the benchmark scripts share: where data and results live, provenance, machine load, and
measuring a slidepress run in a child process of its own.

Not a benchmark (scripts are `bench_*.py`). A script runs as `python benchmarks/bench_x.py`,
so this folder is first on sys.path and `import common` needs no path edits; slidepress itself
comes from the installed (editable) package. The other shared modules here: `tissue_slide`
(the large pyramidal TIFF of real tissue the throughput benchmarks run on) and `pcam_cohorts`
(the PCam mosaic cohorts of the slide-level NIC benchmarks).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / ".bench"  # everything the benchmarks build or write (git-ignored)
SHARED = Path(os.environ.get("SLIDEPRESS_SHARED_DATA", REPO.parent / "shared" / "data"))
TILES_DIR = SHARED / "tiles"
SLIDES_DIR = SHARED / "slides"
PCAM = SHARED / "patches" / "pcam"


def log(msg: str) -> None:
    """Progress on stderr (stdout holds the report)."""
    print(msg, file=sys.stderr, flush=True)


def git_commit(src: Path | None = None) -> str | None:
    """HEAD of the checkout measured, '+dirty' when its src/ has local changes."""
    src = src or REPO / "src"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."], cwd=src, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def slidepress_exe() -> str:
    """The `slidepress` console script of this interpreter's environment."""
    cand = Path(sys.executable).parent / "slidepress"
    if cand.exists():
        return str(cand)
    found = shutil.which("slidepress")
    if not found:
        raise SystemExit("the `slidepress` console script is not installed in this environment")
    return found


# ----------------------------------------------------------------------------------------------
# Machine load: the numbers are only comparable when nothing else runs
# ----------------------------------------------------------------------------------------------


def _busy_s() -> float:
    """CPU seconds all processes on this machine have used (from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuMeter:
    """Cores' worth of CPU used by *other* processes while the block ran (noise indicator)."""

    foreign_cores: float

    def __enter__(self) -> CpuMeter:
        self.t0, self.b0, self.o0 = time.perf_counter(), _busy_s(), _own_s()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(1e-6, time.perf_counter() - self.t0)
        foreign = (_busy_s() - self.b0) - (_own_s() - self.o0)
        self.foreign_cores = round(max(0.0, foreign / wall), 2)


class CpuProbe:
    """Single-thread JPEG decode rate of `n` fixed level-0 tiles of a tiled TIFF (best of 3): a
    yardstick of this machine's speed right now. A VM can slow down with no busy process in
    sight (host contention), so each measurement records the probe taken just before it."""

    def __init__(self, slide: Path, n: int = 200):
        import tifffile

        self.tf = tifffile.TiffFile(str(slide))
        page = self.tf.pages[0]
        ntx = -(-page.imagewidth // page.tilewidth)
        nty = -(-page.imagelength // page.tilelength)
        self.page = page
        self.items = []
        fh = self.tf.filehandle
        for k in range(n):  # a diagonal band through the middle: tissue and glass
            ty = (nty // 3 + k // 20) % nty
            tx = (ntx // 3 + k % 20 * 3) % ntx
            i = ty * ntx + tx
            fh.seek(page.dataoffsets[i])
            self.items.append((i, fh.read(page.databytecounts[i])))
        self.samples: list[float] = []

    def __call__(self, passes: int = 3) -> float:
        """Best of `passes` decodes of the tiles (robust to a short interruption)."""
        best = 0.0
        for _ in range(passes):
            t0 = time.perf_counter()
            for i, data in self.items:
                self.page.decode(data, i, jpegtables=self.page.jpegtables)
            best = max(best, len(self.items) / (time.perf_counter() - t0))
        self.samples.append(best)
        return round(best)

    def summary(self) -> dict[str, Any]:
        """The samples for the report, and their spread (a drifting machine)."""
        s = self.samples
        return {
            "what": f"single-thread JPEG decode of {len(self.items)} fixed "
            f"{self.page.tilewidth} px tiles, best of 3, tiles/s",
            "samples": [round(x) for x in s],
            "spread": round((max(s) / min(s) - 1) if s else 0.0, 3),
        }


def wait_quiet(max_wait: float, limit: float = 0.25) -> float:
    """Wait (up to max_wait s) until other processes use < `limit` cores; return their load."""
    deadline = time.perf_counter() + max_wait
    while True:
        with CpuMeter() as m:
            time.sleep(1.0)
        if m.foreign_cores < limit or time.perf_counter() >= deadline:
            if m.foreign_cores >= limit:
                log(f"  note: machine busy ({m.foreign_cores} cores used by other processes)")
            return m.foreign_cores


# ----------------------------------------------------------------------------------------------
# A slidepress run in a child process
# ----------------------------------------------------------------------------------------------

# The measured command is started through this small interpreter: a child's ru_maxrss starts at
# its parent's RSS high-water mark (fork/vfork + exec carry it over), so wait4 in a big
# benchmark process would report at least its own peak; from a fresh ~10 MB interpreter it is
# exact.
LAUNCHER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[2:])
_, status, ru = os.wait4(p.pid, 0)
rec = dict(rc=os.waitstatus_to_exitcode(status), wall_s=time.perf_counter() - t0,
           maxrss_kib=ru.ru_maxrss, utime=ru.ru_utime, stime=ru.ru_stime)
with open(sys.argv[1], "w") as f:
    json.dump(rec, f)
"""


def run_measured(
    cmd: list[str], env: dict[str, str] | None, log_path: Path, tail: int = 1500
) -> dict[str, Any]:
    """Run `cmd` through the wait4 LAUNCHER: its own wall time, peak RSS and CPU seconds;
    stdout+stderr go to log_path (its last `tail` characters are returned). Also the cores
    other processes used meanwhile. A non-zero exit of `cmd` is returned in "rc", not raised."""
    rec_path = log_path.with_suffix(".rusage.json")
    rec_path.unlink(missing_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as logf, CpuMeter() as meter:
        r = subprocess.run(
            [sys.executable, "-c", LAUNCHER, str(rec_path), *cmd],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
        )
    text = log_path.read_text(errors="replace")
    if r.returncode != 0 or not rec_path.exists():
        raise SystemExit(
            f"launcher failed (rc {r.returncode}) for {' '.join(cmd)}:\n{text[-3000:]}"
        )
    rec = json.loads(rec_path.read_text())
    return {
        "rc": rec["rc"],
        "wall_s": round(rec["wall_s"], 3),
        "peak_rss_mib": round(rec["maxrss_kib"] / 1024, 1),  # Linux: KiB
        "cpu_s": round(rec["utime"] + rec["stime"], 2),
        "cpu_user_s": round(rec["utime"], 2),
        "cpu_sys_s": round(rec["stime"], 2),
        "other_processes_cores": meter.foreign_cores,
        "output_tail": text[-tail:],
    }


def split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
    """(our args, args after `--`): the latter go to `slidepress compress` unchanged."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def slidepress_env(pythonpath: str | None) -> dict[str, str]:
    """Environment for a slidepress child: PYTHONPATH first (to measure another checkout, e.g.
    /work/base/src, with this venv), and a wide terminal so rich does not wrap the summary."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH", "")) if p)
    env["COLUMNS"] = "400"
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def slidepress_cmd(python: str | None) -> list[str]:
    """How to start slidepress: the console script next to this interpreter, or `PY -m
    slidepress` when another interpreter is given. Both honour PYTHONPATH (the editable install
    is a .pth path entry, after PYTHONPATH)."""
    if python:
        return [python, "-m", "slidepress"]
    return [slidepress_exe()]


def code_identity(python: str | None, env: dict[str, str]) -> dict[str, Any]:
    """Which slidepress the child imports (file, version) and that checkout's git commit."""
    probe = (
        "import json, slidepress; "
        "print(json.dumps([slidepress.__file__, getattr(slidepress, '__version__', None)]))"
    )
    r = subprocess.run(
        [python or sys.executable, "-c", probe], env=env, capture_output=True, text=True
    )
    if r.returncode != 0:
        raise SystemExit(f"cannot import slidepress in the child environment:\n{r.stderr[-2000:]}")
    file, version = json.loads(r.stdout.strip().splitlines()[-1])
    src = Path(file).resolve().parents[1]  # .../src
    return {"module": file, "version": version, "src": str(src), "commit": git_commit(src)}


def container_tiles(spz: Path) -> dict[str, Any]:
    """Tiles in a .spz read from the zip itself (entry names `L{level}/{row}_{col}.ext`), plus
    what its manifest says; works for any container version that keeps that layout."""
    with zipfile.ZipFile(spz) as z:
        names = z.namelist()
        manifest = json.loads(z.read("manifest.json")) if "manifest.json" in names else {}
    per_level: dict[int, int] = {}
    for n in names:
        head, _, _ = n.partition("/")
        if head.startswith("L") and head[1:].isdigit() and "/" in n:
            per_level[int(head[1:])] = per_level.get(int(head[1:]), 0) + 1
    levels = manifest.get("levels") or []
    return {
        "stored_per_level": [per_level.get(i, 0) for i in range(max(per_level, default=-1) + 1)],
        "grid_per_level": [lv.get("rows", 0) * lv.get("cols", 0) for lv in levels],
        "stored": sum(per_level.values()),
        "manifest_tiles": manifest.get("tiles"),
        "codec": manifest.get("codec"),
        "background": manifest.get("background"),
    }
