from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image

from slidepress import dihedral
from slidepress.encoders import get_encoder
from slidepress.encoders.base import Encoder
from slidepress.errors import EncoderError, UsageError
from slidepress.pipeline import EncodeOptions, encode_slide
from slidepress.pipeline.items import SlideItem
from slidepress.store import read_grid


def _encode(slide, out, **kw):
    enc = kw.pop("encoder", None) or get_encoder("mean-rgb")
    mpp = kw.pop("mpp_override", None)
    item = SlideItem(Path(slide), mpp_override=mpp) if mpp else slide
    return encode_slide(item, out, enc, EncodeOptions(**kw))


def test_mean_rgb_equals_openslide_pixels(sample_svs, tmp_path):
    res = _encode(sample_svs, tmp_path)
    g = read_grid(res.outputs[0])
    assert g.features.shape == (23, 17, 3) and g.mask.sum() == res.cells_kept > 50
    ref = openslide.OpenSlide(str(sample_svs))
    rows, cols = np.nonzero(g.mask)
    for r, c in list(zip(rows, cols, strict=True))[::7]:
        x, y = g.coords[r, c]
        px = np.asarray(ref.read_region((int(x), int(y)), 0, (128, 128)))[..., :3]
        expected = px.reshape(-1, 3).astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(g.features[r, c], expected, rtol=0, atol=1e-4)
    assert (g.features[~g.mask] == 0).all()


def test_kept_cells_lie_on_tissue(sample_svs, tmp_path):
    from slidepress.slide.tissue import saturation

    g = read_grid(_encode(sample_svs, tmp_path, tissue_threshold=0.0).outputs[0])
    frac = g.tissue_fraction
    ref = openslide.OpenSlide(str(sample_svs))

    def mean_sat(sel):
        vals = []
        for r, c in list(zip(*np.nonzero(sel), strict=True))[:40]:
            x, y = g.coords[r, c]
            px = np.asarray(ref.read_region((int(x), int(y)), 0, (128, 128)))[..., :3]
            vals.append(saturation(px).mean())
        return np.mean(vals)

    assert mean_sat(frac > 0.9) > 2.5 * mean_sat(frac < 0.05)


def test_metadata_is_self_describing(sample_svs, tmp_path):
    g = read_grid(_encode(sample_svs, tmp_path).outputs[0])
    m = g.metadata
    assert m["slide"]["sha256"] == hashlib.sha256(sample_svs.read_bytes()).hexdigest()
    assert m["slide"]["mpp_used"] == pytest.approx(0.499)
    assert m["grid"]["mpp_requested"] == 0.5
    assert m["grid"]["mpp_effective"] == pytest.approx(0.499)  # snapped: no resampling
    assert m["grid"]["patch_size"] == 128 and m["grid"]["stride"] == 128
    assert m["encoder"]["name"] == "mean-rgb" and m["encoder"]["dim"] == 3
    assert m["tissue"]["threshold_fraction"] == 0.5
    assert m["slidepress_version"] and m["created"] and m["params_hash"]
    json.dumps(m)


def test_dihedral_variants_equal_transformed_slide(sample_svs, tmp_path):
    """Each variant must equal encoding the rotated/flipped slide itself (not just rot(grid))."""
    res = _encode(sample_svs, tmp_path / "aug", augment="dihedral", tissue_threshold=0.0)
    assert len(res.outputs) == 8
    base = read_grid(res.outputs[0])
    rows, cols, _ = base.shape
    region = openslide.OpenSlide(str(sample_svs)).read_region((0, 0), 0, (cols * 128, rows * 128))
    region = np.asarray(region)[..., :3]
    for k in (1, 2, 5, 7):
        variant = read_grid(res.outputs[k])
        assert variant.metadata["augment"]["index"] == k
        np.testing.assert_allclose(variant.features, dihedral.apply(base.features, k), atol=1e-4)
        np.testing.assert_array_equal(variant.coords, dihedral.apply(base.coords, k))
        # independent check: encode the transformed image as a plain slide
        img = tmp_path / f"rot{k}.png"
        Image.fromarray(dihedral.apply(region, k)).save(img)
        direct = read_grid(
            _encode(img, tmp_path / f"d{k}", mpp_override=0.499, tissue_threshold=0.0).outputs[0]
        )
        np.testing.assert_allclose(variant.features, direct.features, atol=1e-4)


def test_rerun_skips_and_param_change_needs_overwrite(sample_svs, tmp_path):
    first = _encode(sample_svs, tmp_path)
    stamp = first.outputs[0].stat().st_mtime_ns
    again = _encode(sample_svs, tmp_path)
    assert again.skipped and first.outputs[0].stat().st_mtime_ns == stamp
    with pytest.raises(UsageError, match="--overwrite"):
        _encode(sample_svs, tmp_path, tissue_threshold=0.3)
    third = _encode(sample_svs, tmp_path, tissue_threshold=0.3, overwrite=True)
    assert not third.skipped
    assert read_grid(third.outputs[0]).metadata["tissue"]["threshold_fraction"] == 0.3


class _Exploding(Encoder):
    name, dim = "exploding", 3

    def __init__(self):
        self.calls = 0

    def encode(self, patches):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("boom")
        return np.zeros((len(patches), 3), np.float32)


def test_failure_leaves_no_output(sample_svs, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        encode_slide(sample_svs, out, _Exploding(), EncodeOptions(batch_size=8))
    assert not out.exists() or list(out.iterdir()) == []


def test_never_touches_input(sample_svs, tmp_path):
    before = hashlib.sha256(sample_svs.read_bytes()).hexdigest()
    _encode(sample_svs, tmp_path, augment="dihedral")
    assert hashlib.sha256(sample_svs.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("fmt", ["zarr", "npz", "h5", "mha"])
def test_encode_each_format(sample_svs, tmp_path, fmt):
    res = _encode(sample_svs, tmp_path, fmt=fmt)
    assert res.outputs[0].suffix == f".{fmt}"
    assert read_grid(res.outputs[0]).features.shape == (23, 17, 3)


def test_resampled_grid(sample_svs, tmp_path):
    g = read_grid(_encode(sample_svs, tmp_path, mpp=1.0, patch_size=64).outputs[0])
    assert g.metadata["grid"]["resampled"] is True
    assert g.metadata["grid"]["mpp_effective"] == pytest.approx(1.0)
    assert g.features.shape[:2] == ((2967 * 0.499 / 1.0 - 64) // 64 + 1, 17)


# -- torch encoders ----------------------------------------------------------------------------


def _tiny_cnn():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip


def test_torchscript_encoder(sample_svs, tmp_path):
    import torch

    model = _tiny_cnn().eval()
    path = tmp_path / "tiny.pt"
    torch.jit.script(model).save(str(path))
    (tmp_path / "tiny.pt.json").write_text(
        json.dumps({"patch_size": 64, "mpp": 1.0, "mean": [0.5] * 3, "std": [0.25] * 3})
    )
    enc = get_encoder(f"torchscript:{path}")
    assert enc.dim == 16 and enc.patch_size == 64 and enc.mpp == 1.0
    assert enc.weights_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    patches = np.random.default_rng(0).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    x = (torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(enc.encode(patches), ref, atol=1e-5)
    res = encode_slide(sample_svs, tmp_path / "o", enc, EncodeOptions())
    g = read_grid(res.outputs[0])
    assert g.metadata["grid"]["patch_size"] == 64 and g.metadata["grid"]["mpp_requested"] == 1.0
    assert g.features.shape[2] == 16 and np.abs(g.features[g.mask]).sum() > 0


def test_timm_encoder_from_local_weights(tmp_path):
    import timm
    import torch

    model = timm.create_model("test_resnet", pretrained=False, num_classes=0).eval()
    path = tmp_path / "w.pth"
    torch.save(model.state_dict(), path)
    enc = get_encoder(f"timm:test_resnet@{path}")
    size = enc.patch_size
    patches = np.random.default_rng(1).integers(0, 255, (3, size, size, 3), dtype=np.uint8)
    mean = torch.tensor(enc.normalization["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(enc.normalization["std"]).view(1, 3, 1, 1)
    x = (torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        ref = model(x).numpy()
    out = enc.encode(patches)
    assert out.shape == (3, model.num_features)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    np.testing.assert_array_equal(out, enc.encode(patches))  # deterministic


@pytest.mark.parametrize(
    "spec",
    ["nope", "torchscript:", "torchscript:/does/not/exist.pt", "timm:resnet18", "timm:x@/no.pth"],
)
def test_bad_encoder_specs(spec):
    with pytest.raises(EncoderError):
        get_encoder(spec)


def test_hostile_torchscript_file(tmp_path):
    p = tmp_path / "evil.pt"
    p.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    with pytest.raises(EncoderError, match="not a loadable TorchScript"):
        get_encoder(f"torchscript:{p}")


def test_batch_size_does_not_change_the_grid(sample_svs, tmp_path):
    a = read_grid(_encode(sample_svs, tmp_path / "a", batch_size=64).outputs[0])
    b = read_grid(_encode(sample_svs, tmp_path / "b", batch_size=7, workers=1).outputs[0])
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.mask, b.mask)
