"""Read a slide's blocks of cells ahead of the consumer, in worker threads.

OpenSlide, tifffile/imagecodecs and torch release the GIL, so threads overlap decoding with
the consumer's work. Each thread opens its own slide handle; at most `2 * workers + 2` blocks
are in flight, so memory stays bounded whatever the slide size.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..slide import SlideReader, open_slide
from ..tiling import TileGrid

Block = tuple[int, int, int, int]


def iter_blocks(
    path: Path,
    reader_name: str,
    grid: TileGrid,
    keep: np.ndarray,
    workers: int = 2,
    block_cells: int = 8,
) -> Iterator[tuple[Block, np.ndarray]]:
    """Yield (block, pixels) in order, read ahead by worker threads with their own handles."""
    local = threading.local()
    handles: list[SlideReader] = []
    lock = threading.Lock()

    def read(block: tuple[int, int, int, int]) -> np.ndarray:
        if not hasattr(local, "reader"):
            local.reader = open_slide(path, reader=reader_name)
            with lock:
                handles.append(local.reader)
        return grid.read_block(local.reader, *block)

    prefetch = 2 * workers + 2
    pending: list[tuple[tuple[int, int, int, int], Future]] = []
    pool = ThreadPoolExecutor(workers, thread_name_prefix="slide-read")
    try:
        for block in grid.blocks(keep, block_cells):
            pending.append((block, pool.submit(read, block)))
            if len(pending) >= prefetch:
                b, fut = pending.pop(0)
                yield b, fut.result()
        while pending:
            b, fut = pending.pop(0)
            yield b, fut.result()
    finally:  # also on error or early close: stop reading, then release the handles
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True)
        for h in handles:
            h.close()
