"""Read a slide's blocks of cells ahead of the consumer, in worker threads.

OpenSlide, tifffile/imagecodecs, Pillow and torch release the GIL, so threads overlap decoding
with the consumer's work. Each thread opens its own slide handle (backends are not
thread-safe). A block can also be
*processed* in the worker that read it (`process=`: e.g. cut, test and code its tiles), so the
calling thread only collects results; at most `2 * workers + 2` blocks are in flight, so memory
stays bounded whatever the slide size.

Shutting down is ordered, also on Ctrl-C: stop submitting, cancel what has not started, wait
for the blocks being read, and only then close the slide handles (OpenSlide aborts the process
or segfaults when a handle is closed while another thread is inside `openslide_read_region`).
"Wait" counts the reads itself rather than trusting the pool's list of threads: a Ctrl-C that
lands inside `Thread.start` (the new thread waiting for the GIL) leaves a reader thread the
pool never recorded, which `shutdown(wait=True)` does not join (issue 19, item 3: the SIGABRT /
SIGSEGV on Ctrl-C). A second Ctrl-C or a SIGTERM during that wait (one block read) is deferred,
not allowed to break the order.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

from ..slide import SlideReader
from ..tiling import TileGrid

Block = tuple[int, int, int, int]
T = TypeVar("T")


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the duration, then deliver them to the handlers that
    were in place (Ctrl-C: KeyboardInterrupt). Main thread only; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    raised: list[BaseException] = []  # by a signal already pending when the hold began
    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is None:  # set outside Python: could not be put back
            continue
        while signum not in previous:
            try:
                previous[signum] = signal.signal(signum, lambda s, _f: caught.append(s))
            except ValueError:  # not the main interpreter
                break
            except BaseException as e:  # noqa: BLE001 - a pending signal's handler raised
                raised.append(e)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if raised:
            raise raised[0]
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)  # runs the restored handler now


def _lower_priority(nice: int) -> None:
    """Make the calling thread yield the CPU to the others (Linux: per-thread niceness)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):  # not Linux, or not permitted: just run as is
        pass


def iter_blocks(
    opener: Callable[[], SlideReader],
    grid: TileGrid,
    keep: np.ndarray,
    workers: int = 2,
    block_cells: int = 8,
    process: Callable[[Block, np.ndarray], T] | None = None,
    nice: int = 0,
) -> Iterator[tuple[Block, Any]]:
    """Yield (block, pixels) in order — or (block, process(block, pixels)) when `process` is
    given, computed in the worker thread. `opener` gives each worker its own handle on the
    slide (e.g. `reader.reopen`: same file, backend and resolution). Close the generator (or
    exhaust it) to release the threads and handles; `with contextlib.closing(...)` makes that
    explicit on errors.

    `nice` > 0 lowers the reader threads' priority: when the consumer is a torch model using
    every core, readers then run in its gaps instead of preempting one of its threads (an
    OpenMP region waits for its slowest thread: nic-multitask on 2 cores 350 -> ~410 tiles/s)."""
    local = threading.local()
    handles: list[SlideReader] = []
    idle = threading.Condition()  # guards `stopping`, `active` and `handles`
    stopping = False
    active = 0  # calls of `work` running, in any thread: recorded by the pool or not

    def work(block: Block) -> Any:
        nonlocal active
        with idle:
            if stopping:  # shut down meanwhile: neither open nor read
                return None
            active += 1
        try:
            if not hasattr(local, "reader"):
                if nice:
                    _lower_priority(nice)
                local.reader = opener()
                with idle:
                    handles.append(local.reader)
            pixels = grid.read_block(local.reader, *block)
            return process(block, pixels) if process is not None else pixels
        finally:
            with idle:
                active -= 1
                idle.notify_all()

    prefetch = 2 * workers + 2
    pending: deque[tuple[Block, Future]] = deque()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="slide-read")
    try:
        for block in grid.blocks(keep, block_cells):
            pending.append((block, pool.submit(work, block)))
            if len(pending) >= prefetch:
                b, fut = pending.popleft()
                yield b, fut.result()
        while pending:
            b, fut = pending.popleft()
            yield b, fut.result()
    finally:  # also on error, Ctrl-C or early close
        with deferred_interrupts():
            with idle:
                stopping = True
            for _, fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            with idle:  # also a reader thread the pool did not record (see module docstring)
                idle.wait_for(lambda: active == 0)
                to_close = list(handles)
            for h in to_close:
                h.close()
