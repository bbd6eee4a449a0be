"""Coding the tiles of one pyramid level, in the worker threads of `compress_slide`.

Level 0: each tile is tested for glass on its own pixels (slide/glass.py), coded, decoded
again and compared with the original (the whole-slide fidelity); coarser levels: the tiles
over stored finer tiles are coded. Optional MS-SSIM batches run in the calling thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..codecs import Codec
from ..errors import UsageError
from ..metrics.fidelity import SlideFidelity, squared_error
from ..slide.glass import Glass, box_deviation, box_factor
from ..tiling import TileGrid

MS_SSIM_BATCH = 32


@dataclass
class CodedTile:
    """What a worker reports for one tile: coded bytes (None: left out as glass) and scores."""

    row: int
    col: int
    data: bytes | None
    deviation: int = 0
    sse: float = 0.0
    values: int = 0
    original: np.ndarray | None = None  # kept only when MS-SSIM is wanted
    decoded: np.ndarray | None = None


def children_kept(keep: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Tiles of the next (2x coarser) level that cover at least one kept tile."""
    out = np.zeros((rows, cols), bool)
    r, c = np.nonzero(keep)
    out[np.minimum(r // 2, rows - 1), np.minimum(c // 2, cols - 1)] = True
    return out


class LevelCoder:
    """Runs in the worker threads: tests, codes and checks the tiles of one block (level 0),
    or codes the tiles to store (coarser levels); tiles outside `todo` are not touched."""

    def __init__(
        self,
        grid: TileGrid,
        width: int,
        height: int,
        codec: Codec,
        todo: np.ndarray,
        level0: bool,
        glass: Glass,
        policy: str,
        ms_ssim: bool,
    ):
        self.grid, self.width, self.height = grid, width, height
        self.codec, self.todo, self.level0 = codec, todo, level0
        self.glass, self.policy = glass, policy
        self.ms_ssim = ms_ssim
        self.factor = box_factor(grid.effective_mpp)

    def __call__(self, block: tuple[int, int, int, int], pixels: np.ndarray) -> list[CodedTile]:
        r0, r1, c0, c1 = block
        t = self.grid.spec.patch_size
        tiles = self.grid.cut_patches(pixels, r0, r1, c0, c1)
        cells = [
            (r0 + i, c0 + j, np.ascontiguousarray(tiles[i, j]))
            for i in range(r1 - r0)
            for j in range(c1 - c0)
            if self.todo[r0 + i, c0 + j]  # else: glass by the survey / under no stored tile
        ]
        if not self.level0:
            blobs = self.codec.encode_batch([tile for _, _, tile in cells])
            return [CodedTile(r, c, d) for (r, c, _), d in zip(cells, blobs, strict=True)]
        # level 0: test for glass, then code and decode the rest as one batch
        out, coded = [], []
        for r, c, tile in cells:
            vh, vw = min(t, self.height - r * t), min(t, self.width - c * t)
            valid = tile[:vh, :vw] if (vh, vw) != (t, t) else tile
            boxes = box_deviation(valid, self.glass, self.factor)
            deviation = int(boxes.max())
            if self.policy != "keep" and deviation <= self.glass.threshold:
                out.append(CodedTile(r, c, None, deviation))
            else:
                coded.append((r, c, tile, valid, boxes, deviation))
        blobs = self.codec.encode_batch([x[2] for x in coded])
        # decoded again: the whole-slide fidelity, and a check of the codec's round trip
        decoded = self.codec.decode_batch(blobs, shape=(t, t, 3)) if coded else []
        for (r, c, _, valid, boxes, deviation), data, dec in zip(
            coded, blobs, decoded, strict=True
        ):
            restored = dec[: valid.shape[0], : valid.shape[1]]
            mask = boxes > self.glass.threshold
            sse, values = squared_error(valid, restored, mask, self.factor)
            if self.ms_ssim:
                out.append(CodedTile(r, c, data, deviation, sse, values, valid.copy(), restored))
            else:
                out.append(CodedTile(r, c, data, deviation, sse, values))
        return out


class MsSsimScorer:
    """Batches stored tiles through torch's MS-SSIM (imported only when asked for)."""

    def __init__(self, fidelity: SlideFidelity):
        import torch

        self.fidelity = fidelity
        self.batch: list[CodedTile] = []
        torch.set_num_threads(1)  # small convolutions: 2 threads were ~5x slower when busy

    def add(self, tile: CodedTile) -> None:
        if tile.original is None:
            return
        self.batch.append(tile)
        if len(self.batch) >= MS_SSIM_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        from ..metrics import score_tiles

        scores = score_tiles([t.original for t in self.batch], [t.decoded for t in self.batch])
        weights = np.array([t.values / 3 for t in self.batch])
        self.fidelity.add_ms_ssim(scores.ms_ssim, weights)
        self.batch = []


def check_torch() -> None:
    try:
        import pytorch_msssim  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        raise UsageError(
            "--ms-ssim needs the torch extra: pip install 'slidepress[torch]'"
        ) from None
