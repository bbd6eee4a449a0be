"""Embedding similarity: how far compression moves a tile's embeddings from a registry encoder
(e.g. `nic-multitask`), i.e. how much it moves the NIC grid that `slidepress encode` writes.

Definition. Each tile (original and decoded alike) is brought to the encoder's input the way
the pipeline cuts a slide: resampled (LANCZOS, as `tiling` and `imagefolder.prepare_image`) from
`tile_mpp` to the encoder's mpp when both are known (else its pixels are taken to be at the
encoder's resolution), then cut into non-overlapping `patch_size` patches from its top-left
corner, partial ones dropped, like the cells of an encode grid. A tile smaller than one patch
is one patch (the encoder resizes it, as it would). Encoders without a patch size take the
whole tile. The tile's similarity is the mean over its patches of the cosine similarity of the
original's and the decoded patch's embeddings (float64; 1 for identical tiles).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .featsim import Tiles, check_pairs, cosine_rows, shape_batches

BATCH = 256  # patches per encoder call


def tile_patches(
    tile: np.ndarray, patch_size: int | None, scale: float | None = None
) -> list[np.ndarray]:
    """The patches an encoder sees of one (H, W, 3) tile; `scale` = tile mpp / encoder mpp."""
    if scale is not None and scale != 1.0:
        from PIL import Image

        h, w = tile.shape[:2]
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if (nh, nw) != (h, w):
            tile = np.asarray(Image.fromarray(tile).resize((nw, nh), Image.Resampling.LANCZOS))
    h, w = tile.shape[:2]
    if patch_size is None or h < patch_size or w < patch_size:
        return [np.ascontiguousarray(tile)]
    p = patch_size
    return [
        tile[y : y + p, x : x + p] for y in range(0, h - p + 1, p) for x in range(0, w - p + 1, p)
    ]


def resolve_encoder(encoder: Any) -> Any:
    """An Encoder as given, or built from its registry name."""
    if isinstance(encoder, str):
        from ..encoders import get_encoder

        return get_encoder(encoder)
    return encoder


def patch_embeddings(
    encoder: Any, tiles: Tiles, *, tile_mpp: float | None = None, batch_size: int = BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """(owner, embeddings): each patch's tile index (P,) and its flattened embedding (P, C)
    as float64, patches cut by `tile_patches`; reusable as the reference of many decodings."""
    scale = tile_mpp / encoder.mpp if tile_mpp and encoder.mpp else None
    patches: list[np.ndarray] = []
    owner: list[int] = []
    for i, t in enumerate(tiles):
        cut = tile_patches(np.asarray(t), encoder.patch_size, scale)
        patches += cut
        owner += [i] * len(cut)
    rows: list[np.ndarray] = [np.empty(0)] * len(patches)
    for idx in shape_batches([p.shape for p in patches], batch_size):
        emb = np.asarray(encoder.encode(np.stack([patches[i] for i in idx])), np.float64)
        for j, i in enumerate(idx):
            rows[i] = emb[j].reshape(-1)
    emb = np.stack(rows) if rows else np.zeros((0, 0))
    return np.asarray(owner, np.int64), emb


def tile_means(owner: np.ndarray, sims: np.ndarray, n: int) -> np.ndarray:
    """(n,) mean of the patch values `sims` of each tile."""
    return np.bincount(owner, weights=sims, minlength=n) / np.maximum(
        np.bincount(owner, minlength=n), 1
    )


def embedding_similarity(
    encoder: Any,
    orig: Tiles,
    decoded: Tiles,
    *,
    tile_mpp: float | None = None,
    batch_size: int = BATCH,
) -> np.ndarray:
    """(N,) mean cosine similarity of the encoder's patch embeddings of `orig` vs `decoded`
    ((N, H, W, 3) uint8 or lists of tiles). `encoder`: a registry name (`get_encoder`) or an
    Encoder; `tile_mpp`: the tiles' um/px (None: taken as the encoder's)."""
    encoder = resolve_encoder(encoder)
    pairs = check_pairs(orig, decoded)
    if not pairs:
        return np.zeros(0)
    kw = {"tile_mpp": tile_mpp, "batch_size": batch_size}
    owner, ea = patch_embeddings(encoder, [a for a, _ in pairs], **kw)
    _, eb = patch_embeddings(encoder, [b for _, b in pairs], **kw)
    return tile_means(owner, cosine_rows(ea, eb), len(pairs))
