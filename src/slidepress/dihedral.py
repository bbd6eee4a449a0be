"""The 8 symmetries of the square (dihedral group D4), applied to slides, patches and grids.

Variant k = rot90 by (k % 4) quarter turns, after a left-right mirror when k >= 4. Transforming
every patch by D_k and laying the cells out by D_k is the same as encoding the D_k-transformed
slide region that the grid covers (rows*S by cols*S target pixels, anchored at the origin).
"""

from __future__ import annotations

import numpy as np

VARIANTS = tuple(range(8))


def describe(k: int) -> dict[str, int | bool]:
    return {"index": k, "rot90": k % 4, "mirror": k >= 4}


def apply(a: np.ndarray, k: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """D_k of `a` over the two spatial `axes` (0, 1 for grids/images; 1, 2 for patch batches)."""
    if not 0 <= k < 8:
        raise ValueError(f"dihedral index must be 0..7, got {k}")
    if k >= 4:
        a = np.flip(a, axis=axes[1])
    return np.ascontiguousarray(np.rot90(a, k % 4, axes=axes))
