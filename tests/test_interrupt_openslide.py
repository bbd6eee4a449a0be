"""Ctrl-C while OpenSlide decodes never crashes the process (issue 19, item 3).

An OpenSlide handle closed while another thread is inside `openslide_read_region` aborts the
process (`_openslide_tiffcache_destroy: assertion failed: (tc->outstanding == 0)`) or
segfaults. The hole was a reader thread that `ThreadPoolExecutor` never recorded: a Ctrl-C
landing in `Thread.start` of a block reader (while the new thread waits for the GIL) left that
thread running, unjoined by `pool.shutdown`, and `iter_blocks` closed its handle under its
read. Here: the command line on a slide read through OpenSlide, interrupted at varied delays
after reads begin and inside a reader thread's start, must exit 130 with one line and leave
nothing behind; and the two guards, each on its own: `iter_blocks` waits for every reader
thread, recorded or not, and `OpenSlideReader.close` waits for the reads in flight.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from slidepress.errors import SlideError

from .test_nothing_lost import _leftovers

SIDE = 12288  # level 0: 48 x 48 JPEG tiles of 256 px; OpenSlide reads it in ~5-10 s
MPP = 0.25
INTERRUPTED = ["error: interrupted; partial outputs removed"]

# Runs the CLI and prints one line on stdout when the first block read begins (in a reader
# thread), so the test sends its SIGINT at a known delay after reads begin.
MARK_DRIVER = """
import sys, threading
from slidepress import tiling
orig = tiling.TileGrid.read_block
once = threading.Lock()
def read_block(self, *a, **k):
    if once.acquire(blocking=False):
        print("reading", flush=True)
    return orig(self, *a, **k)
tiling.TileGrid.read_block = read_block
from slidepress.cli.main import run
sys.argv = ["slidepress", *sys.argv[1:]]
run()
"""

# Runs the CLI with a real SIGINT landing inside `Thread.start` of the N-th block-reader
# thread: started, but not yet recorded by its ThreadPoolExecutor (the race behind the crash).
START_DRIVER = """
import os, signal, sys, threading, time
which = int(sys.argv[1])
orig = threading.Thread.start
started = [0]
def start(self):
    orig(self)
    if self.name.startswith("slide-read"):
        started[0] += 1
        if started[0] == which:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # KeyboardInterrupt is raised here, inside Thread.start
threading.Thread.start = start
from slidepress.cli.main import run
sys.argv = ["slidepress", *sys.argv[2:]]
run()
"""


@pytest.fixture(scope="module")
def big_openslide_slide(tmp_path_factory) -> Path:
    """A SIDE px square, 256 px JPEG-tiled 2x pyramidal TIFF at MPP (generic-tiff for
    OpenSlide): tiles cut from a `tissue_texture`, written tile by tile (~1-2 s)."""
    import tifffile

    from slidepress.synthetic.slides import tissue_texture

    tex = tissue_texture(2048, 2048, seed=3)
    rng = np.random.default_rng(0)
    t = 256

    def tiles(side: int):
        for _ in range((side // t) ** 2):
            y, x = rng.integers(0, tex.shape[0] - t, 2)
            yield tex[y : y + t, x : x + t]

    path = tmp_path_factory.mktemp("os_interrupt") / "big.tiff"
    with tifffile.TiffWriter(path) as tw:
        side, f = SIDE, 1
        while side >= 1024:
            res = 1e4 / (MPP * f)
            tw.write(
                tiles(side), shape=(side, side, 3), dtype=np.uint8, tile=(t, t),
                photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                resolution=(res, res), resolutionunit="CENTIMETER",
                subfiletype=1 if f > 1 else 0, metadata=None,
            )  # fmt: skip
            side, f = side // 2, f * 2
    return path


def _args(command: str, slide: Path, out: Path) -> list[str]:
    common = ["--reader", "openslide", "--mpp-override", str(MPP)]
    if command == "encode":  # --mpp 0.25: every cell read from level 0 (~5 s of reading)
        return ["encode", str(slide), *common, "--mpp", str(MPP), "-o", str(out)]
    return ["compress", str(slide), *common, "--codec", "jpeg", "-o", str(out / "b.spz")]


def _check_interrupted(rc: int, stderr: str, out: Path) -> None:
    """Exit 130 (never -6 SIGABRT, -11 SIGSEGV or 1), one line, nothing left in `out`."""
    assert rc == 130, (rc, stderr[-3000:])
    assert [ln for ln in stderr.splitlines() if ln.strip()] == INTERRUPTED, stderr[-3000:]
    visible = [p.name for p in out.rglob("*") if not p.name.startswith(".")]
    assert not _leftovers(out) and not visible, (_leftovers(out), visible)


def _interrupt_after_reads(command: str, slide: Path, out: Path, delay: float) -> None:
    out.mkdir()
    p = subprocess.Popen(
        [sys.executable, "-c", MARK_DRIVER, *_args(command, slide, out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "reading", p.communicate(timeout=60)[1][-3000:]
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        _, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    _check_interrupted(p.returncode, stderr, out)


def _interrupt_in_thread_start(command: str, slide: Path, out: Path, which: int) -> None:
    out.mkdir()
    r = subprocess.run(
        [sys.executable, "-c", START_DRIVER, str(which), *_args(command, slide, out)],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    _check_interrupted(r.returncode, r.stderr, out)


DELAYS = (0.0, 0.1, 0.3, 0.6, 1.0)  # seconds after the first block read begins


@pytest.mark.parametrize("delay", DELAYS)
@pytest.mark.parametrize("command", ["encode", "compress"])
def test_ctrl_c_during_openslide_reads(big_openslide_slide, tmp_path, command, delay):
    _interrupt_after_reads(command, big_openslide_slide, tmp_path / "out", delay)


@pytest.mark.parametrize("attempt", range(5))
@pytest.mark.parametrize("command", ["encode", "compress"])
def test_ctrl_c_in_reader_thread_start(big_openslide_slide, tmp_path, command, attempt):
    """Inside the start of the first reader thread, then (4 times) of the second one, which
    reads its block while the pool shuts down without it (before the fix: about 1 run in 4
    ended in SIGABRT or SIGSEGV)."""
    which = 1 if attempt == 0 else 2
    _interrupt_in_thread_start(command, big_openslide_slide, tmp_path / "out", which)


# -- the two guards, in process -------------------------------------------------------------------


def test_openslide_close_waits_for_reads_in_flight(sample_svs, monkeypatch):
    """close() during a read only marks the handle; the read finishes on it and then the
    handle is closed; later reads are a SlideError; close() again is a no-op."""
    from slidepress.slide import openslide_reader
    from slidepress.slide.openslide_reader import OpenSlideReader

    real, pointer = openslide_reader._low_level_read()
    if real is None:
        pytest.skip("this openslide-python lacks the low-level read")
    inside, go_on = threading.Event(), threading.Event()

    def slow_read(osr, *args):
        inside.set()
        assert go_on.wait(10)
        return real(osr, *args)

    monkeypatch.setattr(openslide_reader, "_low_level_read", lambda: (slow_read, pointer))
    reader = OpenSlideReader(sample_svs)
    handle = reader._slide._osr
    got: list = []
    t = threading.Thread(target=lambda: got.append(reader.read_region((0, 0), 0, (300, 200))))
    t.start()
    assert inside.wait(10)
    reader.close()
    assert handle._valid, "closed under a read in flight"
    with pytest.raises(SlideError, match="closed"):
        reader.read_region((0, 0), 0, (10, 10))
    go_on.set()
    t.join(10)
    assert got and got[0].shape == (200, 300, 3)
    assert not handle._valid, "not closed once the last read returned"
    reader.close()


class _Slow:
    """A fake slide reader whose reads take a while and which records closes under reads."""

    def __init__(self, log: dict):
        from slidepress.slide.base import SlideInfo

        self.log, self.reading, self.closed = log, 0, False
        self.info = SlideInfo("x", "fake", None, (4096, 4096), ((4096, 4096),), (1.0,), None)
        with log["lock"]:
            self.seconds = 0.1 if not log["opened"] else 0.5  # the second handle: slow reads
            log["opened"].append(self)

    def read_region(self, location, level, size):
        with self.log["lock"]:
            if self.closed:
                raise SlideError("read after close")
            self.reading += 1
        time.sleep(self.seconds)
        with self.log["lock"]:
            self.reading -= 1
        return np.zeros((size[1], size[0], 3), np.uint8)

    def close(self):
        with self.log["lock"]:
            if self.reading:
                self.log["closed_under_read"] += 1
            self.closed = True


def test_iter_blocks_waits_for_a_reader_thread_the_pool_lost(monkeypatch):
    """Ctrl-C inside `Thread.start` of the second reader thread: the pool never records that
    thread, yet closing the stream waits for its read before closing its handle."""
    from slidepress.pipeline.stream import iter_blocks
    from slidepress.tiling import GridSpec, plan_grid

    log: dict = {"lock": threading.Lock(), "opened": [], "closed_under_read": 0}
    grid = plan_grid(_Slow(log), 0.5, GridSpec(128, 128, 0.5))
    log["opened"].clear()
    keep = np.ones((grid.rows, grid.cols), bool)
    orig = threading.Thread.start
    count = [0]

    def start(self):
        orig(self)
        if self.name.startswith("slide-read"):
            count[0] += 1
            if count[0] == 2:
                time.sleep(0.05)  # the lost thread opens its handle and starts reading
                raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "start", start)
    blocks = iter_blocks(lambda: _Slow(log), grid, keep, workers=2, block_cells=4)
    with pytest.raises(KeyboardInterrupt), closing(blocks):
        for _ in blocks:
            pass
    monkeypatch.undo()
    deadline = time.monotonic() + 5
    while any(t.name.startswith("slide-read") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "reader threads still running"
        time.sleep(0.01)
    assert log["closed_under_read"] == 0
    assert len(log["opened"]) == 2 and all(r.closed for r in log["opened"])


def test_deferred_interrupts_hold_sigint_and_sigterm():
    """Signals during the hold reach the handlers in place only when it ends: Ctrl-C first,
    and a SIGTERM alone runs its own handler (the CLI's raises Terminated)."""
    from slidepress.pipeline.stream import deferred_interrupts

    class Term(BaseException):
        pass

    def on_term(*_):
        raise Term

    before_int, before_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, on_term)
    try:
        for sigs, expected in [((signal.SIGINT, signal.SIGTERM), KeyboardInterrupt),
                               ((signal.SIGTERM,), Term)]:  # fmt: skip
            held = []
            with pytest.raises(expected), deferred_interrupts():
                for s in sigs:
                    os.kill(os.getpid(), s)
                time.sleep(0.05)  # the handlers would run here
                held.append(True)
            assert held
            assert signal.getsignal(signal.SIGINT) is before_int
            assert signal.getsignal(signal.SIGTERM) is on_term
    finally:
        signal.signal(signal.SIGTERM, before_term)
