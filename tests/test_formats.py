from __future__ import annotations

import h5py
import numpy as np
import pytest

from slidepress.errors import FormatError
from slidepress.store import EmbeddingGrid, read_grid, write_grid

FORMATS = ["zarr", "npz", "mha", "h5"]


def _grid(c=5, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    rows, cols = 7, 11
    mask = rng.random((rows, cols)) > 0.4
    feats = (rng.standard_normal((rows, cols, c)) * 100).astype(dtype)
    feats[~mask] = 0
    coords = np.stack(np.meshgrid(np.arange(cols) * 128, np.arange(rows) * 128), -1)
    return EmbeddingGrid(
        features=feats,
        mask=mask,
        coords=coords.astype(np.int64),
        tissue_fraction=rng.random((rows, cols)).astype(np.float32),
        tissue_mask=rng.random((90, 140)) > 0.5,
        metadata={"grid": {"patch_size": 128, "cell_pitch_um": 64.0}, "slide": {"name": "s"},
                  "nested": [1, 2.5, None, "x"]},
    )  # fmt: skip


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_exact(tmp_path, fmt):
    g = _grid()
    path = write_grid(g, tmp_path / f"g.{fmt}")
    back = read_grid(path)
    assert back.equals(g)
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


@pytest.mark.parametrize("fmt", FORMATS)
def test_float16_option(tmp_path, fmt):
    g = _grid()
    back = read_grid(write_grid(g, tmp_path / f"g.{fmt}", float16=True))
    assert back.features.dtype == np.float16
    np.testing.assert_array_equal(back.features, g.features.astype(np.float16))


def test_convert_chain_is_lossless(tmp_path):
    g = _grid(c=1)
    path = write_grid(g, tmp_path / "a.zarr")
    for i, fmt in enumerate(["npz", "mha", "h5", "zarr"]):
        path = write_grid(read_grid(path), tmp_path / f"b{i}.{fmt}")
    assert read_grid(path).equals(g)


def test_h5_is_clam_trident_style(tmp_path):
    g = _grid()
    write_grid(g, tmp_path / "g.h5")
    with h5py.File(tmp_path / "g.h5") as f:
        n = int(g.mask.sum())
        assert f["features"].shape == (n, 5) and f["coords"].shape == (n, 2)
        assert f["coords"].attrs["patch_size"] == 128
        r, c = np.nonzero(g.mask)
        np.testing.assert_array_equal(f["coords"][...], g.coords[r, c])


def test_unknown_and_corrupt(tmp_path):
    with pytest.raises(FormatError, match="unknown grid format"):
        write_grid(_grid(), tmp_path / "g.xyz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(FormatError, match="not a readable npz"):
        read_grid(bad)
    with pytest.raises(FormatError, match="no such"):
        read_grid(tmp_path / "missing.zarr")


def test_overwrite_replaces_folder_atomically(tmp_path):
    write_grid(_grid(seed=1), tmp_path / "g.zarr")
    g2 = _grid(seed=2)
    write_grid(g2, tmp_path / "g.zarr")
    assert read_grid(tmp_path / "g.zarr").equals(g2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.zarr"]
