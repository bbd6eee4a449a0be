"""Autoencoder codecs (codecs/autoencoder): diffusers autoencoders loaded with from_pretrained
from a local folder with the hub disabled, the int8 and K-means quantizers reproduce their
stored mapping exactly, and the codecs round-trip real bytes (alone and inside compress /
decompress, with the weights hash in the container)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slidepress.codecs import get_codec
from slidepress.errors import CodecError, ContainerError

from .conftest import TILES, check_refuses_damaged, psnr


def real_tiles(n: int = 4, size: int = 128) -> list[np.ndarray]:
    """Tiles of real H&E (held out from training), or smooth synthetic ones without the data."""
    if TILES.is_dir():
        out = []
        for p in sorted(TILES.glob("*.png"))[:n]:
            a = np.asarray(Image.open(p).convert("RGB"))
            out.append(np.ascontiguousarray(a[:size, :size]))
        return out
    rng = np.random.default_rng(0)
    base = rng.normal(170, 30, (n, size // 8, size // 8, 3))
    return [np.clip(np.kron(b, np.ones((8, 8, 1))), 0, 255).astype(np.uint8) for b in base]


def crops_tensor(tiles: list[np.ndarray], size: int = 32):
    import torch

    c = [t[y : y + size, x : x + size] for t in tiles for y in range(0, t.shape[0], size)
         for x in range(0, t.shape[1], size)]  # fmt: skip
    return torch.from_numpy(np.stack(c)).permute(0, 3, 1, 2).float() / 255


# -- diffusers: from_pretrained from a local folder, hub disabled ----------------------------


def tiny_kl():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16),
        layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=32,
    )  # fmt: skip


def tiny_dc():
    from diffusers import AutoencoderDC

    return AutoencoderDC(
        in_channels=3, latent_channels=8, attention_head_dim=8,
        encoder_block_types="ResBlock", decoder_block_types="ResBlock",
        encoder_block_out_channels=(8, 16, 16), decoder_block_out_channels=(8, 16, 16),
        encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
        encoder_qkv_multiscales=((), (), ()), decoder_qkv_multiscales=((), (), ()),
        decoder_norm_types="rms_norm", decoder_act_fns="silu",
    )  # fmt: skip


@pytest.fixture(scope="module")
def hub_disabled():
    """The hub is unreachable: offline mode on, and any HTTP attempt fails loudly."""
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    mp = pytest.MonkeyPatch()
    import huggingface_hub.constants as hc

    mp.setattr(hc, "HF_HUB_OFFLINE", True)
    mp.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    yield
    mp.undo()


@pytest.mark.parametrize("build", [tiny_kl, tiny_dc])
def test_from_pretrained_local_folder_with_hub_disabled(tmp_path, build, hub_disabled):
    torch = pytest.importorskip("torch")
    from slidepress.codecs.autoencoder.loading import diffusers_class_of, load_diffusers

    torch.manual_seed(0)
    net = build().eval()
    net.save_pretrained(str(tmp_path / "ae"))
    assert diffusers_class_of(tmp_path / "ae") == type(net).__name__
    loaded = load_diffusers(tmp_path / "ae")
    assert type(loaded) is type(net)
    want, got = net.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)  # the saved weights, not a new init
    with pytest.raises(CodecError, match="from_pretrained failed|not a local folder"):
        load_diffusers("no-such-org/no-such-vae", "AutoencoderKL")


# -- quantizers: the stored mapping, reproduced exactly ----------------------------------------


def _latents(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 1, (40, 8, 6, 6)) * np.linspace(0.3, 2, 8)[None, :, None, None]
            ).astype(np.float32)  # fmt: skip


def test_int8_quantizer_reproduces_stored_mapping(tmp_path):
    from slidepress.codecs.autoencoder.quantize import Int8Quantizer, KMeansQuantizer, Quantizers

    z = _latents()
    q = Quantizers([KMeansQuantizer.fit(z, 16, 4)], Int8Quantizer.fit(z))
    q.save(tmp_path / "q.npz")
    back = Quantizers.load(tmp_path / "q.npz").int8
    np.testing.assert_array_equal(back.scale, q.int8.scale)
    np.testing.assert_array_equal(back.probs, q.int8.probs)
    # the stored scale is the largest |z| per channel / 127 on the training latents
    np.testing.assert_array_equal(
        back.scale, (np.abs(z).max(axis=(0, 2, 3)) / 127).astype(np.float32)
    )
    test = _latents(1)[0]
    s = back.quantize(test)
    want = np.clip(np.rint(test / back.scale[:, None, None]), -127, 127).astype(np.int8)
    np.testing.assert_array_equal(s, want)
    np.testing.assert_array_equal(
        back.dequantize(s), s.astype(np.float32) * back.scale[:, None, None]
    )
    data = back.encode(s)
    np.testing.assert_array_equal(back.decode(data, 6, 6), s)  # lossless symbols
    assert len(data) < s.size  # entropy coded: fewer bytes than one per symbol


def test_kmeans_quantizer_reproduces_stored_mapping(tmp_path):
    from slidepress.codecs.autoencoder.quantize import Int8Quantizer, KMeansQuantizer, Quantizers

    z = _latents()
    q = Quantizers([KMeansQuantizer.fit(z, k, 4) for k in (8, 32)], Int8Quantizer.fit(z))
    q.save(tmp_path / "q.npz")
    back = Quantizers.load(tmp_path / "q.npz")
    assert back.levels == ["kmeans8", "kmeans32", "int8", "float16"]
    km = back.kmeans[1]
    np.testing.assert_array_equal(km.codebook, q.kmeans[1].codebook)
    test = _latents(2)[:3]
    idx = km.quantize(test)
    assert idx.shape == (3, 2, 6, 6)
    # nearest codebook row by brute force on the stored codebook
    vec = test.reshape(3, 2, 4, 6, 6).transpose(0, 1, 3, 4, 2).reshape(-1, 4).astype(np.float64)
    d = ((vec[:, None, :] - km.codebook.astype(np.float64)[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(idx.reshape(-1), d.argmin(1))
    zq = km.dequantize(idx)
    assert zq.shape == test.shape
    rows = zq.reshape(3, 2, 4, 6, 6).transpose(0, 1, 3, 4, 2).reshape(-1, 4)
    np.testing.assert_array_equal(rows, km.codebook[idx.reshape(-1)])  # exact codebook rows
    np.testing.assert_array_equal(km.quantize(zq), idx)  # a codebook row maps to itself
    for i in idx:
        np.testing.assert_array_equal(km.decode(km.encode(i), 2, 6, 6), i)
    # bigger codebook, smaller error
    err = [np.mean((k.dequantize(k.quantize(test)) - test) ** 2) for k in back.kmeans]
    assert err[1] < err[0]


# -- codecs: real bytes -------------------------------------------------------------------


@pytest.fixture(scope="module")
def kl_bundle(tmp_path_factory, hub_disabled):
    torch = pytest.importorskip("torch")
    from slidepress.codecs.autoencoder.loading import bundle_from_diffusers

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("kl")
    tiny_kl().save_pretrained(str(root / "vae"))
    crops = crops_tensor(real_tiles(4, 128))
    bundle_from_diffusers(root / "vae", root / "bundle", crops, name="tiny-kl", ks=(16, 64))
    return root / "bundle"


def test_diffusers_bundle_codec_round_trip(kl_bundle):
    tiles = real_tiles(3, 64) + [real_tiles(1, 64)[0][:37, :50].copy()]  # odd size too
    sizes = []
    for q in (1, 2, 3, 4):  # kmeans16, kmeans64, int8, float16
        c = get_codec("ae-kl", q, weights=str(kl_bundle))
        blobs = c.encode_batch(tiles)
        out = c.decode_batch([bytes(b) for b in blobs])
        assert [o.shape for o in out] == [t.shape for t in tiles]
        assert all(o.dtype == np.uint8 for o in out)
        sizes.append(sum(map(len, blobs)))
        assert c.describe()["model"]["name"] == "tiny-kl"
    assert sizes[0] < sizes[1] < sizes[2] < sizes[3]
    with pytest.raises(CodecError, match="weights=FOLDER"):
        get_codec("ae-kl", 1)
    with pytest.MonkeyPatch.context() as mp:  # the CLI's way: compress --codec ae-kl
        mp.setenv("SLIDEPRESS_AE_KL", str(kl_bundle))
        c = get_codec("ae-kl", 1)
        assert c.describe()["params"]["weights"] == str(kl_bundle.resolve())
    with pytest.raises(CodecError, match="not AutoencoderDC"):
        get_codec("ae-dc", 1, weights=str(kl_bundle))
    with pytest.raises(CodecError, match="whole level"):
        get_codec("ae-kl", 5, weights=str(kl_bundle))


def test_shipped_pathae_round_trip_real_tiles():
    tiles = real_tiles(4, 256)
    sizes, quality = [], []
    for q in range(1, 8):
        c = get_codec("pathae", q)
        blobs = c.encode_batch(tiles)
        out = c.decode_batch([bytes(b) for b in blobs], shape=(256, 256, 3))
        sizes.append(sum(map(len, blobs)) / len(tiles))
        quality.append(np.mean([psnr(a, b) for a, b in zip(tiles, out, strict=True)]))
    assert all(a < b for a, b in zip(sizes, sizes[1:], strict=False)), sizes
    assert quality[0] < quality[4] <= quality[6] + 0.05, quality
    assert sizes[4] * 8 <= 4 * 8 * 32 * 32, sizes  # K-means 4096: >= 8x under float32 latents
    if TILES.is_dir():
        assert quality[5] > 21, quality  # a real codec on held-out H&E, not noise
    c = get_codec("pathae", 3)
    assert c.encode_batch(tiles) == [c.encode(t) for t in tiles]  # batch == one by one


def test_damaged_streams_are_refused():
    c = get_codec("pathae", 3)
    tile = real_tiles(1, 64)[0]
    good = c.encode(tile)
    check_refuses_damaged(c, good)
    bad = bytearray(good)
    bad[4] = 99  # a rate level the bundle does not have
    with pytest.raises(CodecError, match="rate level"):
        c.decode(bytes(bad))


def test_codec_listing_imports_no_torch():
    code = ("import sys, slidepress; from slidepress.codecs import CODECS; names = list(CODECS); "
            "assert 'pathae' in names and 'ae-kl' in names; [CODECS.get(n) for n in names]; "
            "print('torch' in sys.modules, 'diffusers' in sys.modules)")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]


def test_pathae_inside_compress_decompress(sample_svs, tmp_path):
    import openslide

    from slidepress.pipeline.compress import CompressOptions, compress_slide
    from slidepress.pipeline.decompress import decompress_container
    from slidepress.store.container import Container

    out = tmp_path / "s.spz"
    # at 1 um/px (half the sample's resolution): the same path, a quarter of the pixels
    compress_slide(sample_svs, out, CompressOptions(codec="pathae", quality=4, tile=256, mpp=1.0))
    sha = get_codec("pathae", 4).bundle.weights_sha256
    with Container(out) as ct:
        rec = ct.manifest["codec"]
        assert rec["name"] == "pathae" and rec["model"]["weights_sha256"] == sha
        region = ct.read_region(500, 500, 150, 150)
    from slidepress.slide import open_slide

    with open_slide(sample_svs) as r:  # the same place at full resolution, halved
        full = r.read_region((1000, 1000), 0, (300, 300))
    orig = np.asarray(Image.fromarray(full).resize((150, 150), Image.Resampling.LANCZOS))
    assert region.shape == (150, 150, 3) and orig.std() > 5
    assert psnr(orig, region) > 14  # the tissue decoded (a low-rate AE: blurred, not blank)
    tiff = decompress_container(out, tmp_path / "s.tiff")
    s = openslide.OpenSlide(str(tiff))
    assert abs(s.dimensions[0] - 1108) <= 2 and abs(s.dimensions[1] - 1481) <= 2  # 0.499 -> 1
    got = np.asarray(s.read_region((500, 500), 0, (150, 150)))[..., :3]
    s.close()
    assert psnr(region, got) > 30  # the TIFF holds the decoded pixels (re-coded as JPEG q95)


def test_container_refuses_other_weights(sample_svs, tmp_path, monkeypatch):
    import shutil

    from slidepress.codecs.autoencoder import codec as ae_codec
    from slidepress.codecs.autoencoder import loading
    from slidepress.codecs.autoencoder.quantize import Quantizers
    from slidepress.pipeline.compress import CompressOptions, compress_slide
    from slidepress.store.container import Container

    def edit(w: Path) -> None:
        q = Quantizers.load(w / "quantizers.npz")
        q.kmeans[0].codebook[0] += 0.5  # other codebooks: other pixels
        q.save(w / "quantizers.npz")

    w = tmp_path / "w"
    shutil.copytree(ae_codec.WEIGHTS, w)
    for p in w.iterdir():
        p.chmod(0o644)
    edit(w)  # weights no shipped folder holds: a container finds no other folder by the hash
    monkeypatch.setattr(ae_codec, "WEIGHTS", w)
    loading.clear_cache()
    try:
        out = tmp_path / "s.spz"
        opts = CompressOptions(codec="pathae", quality=2, tile=256, mpp=4.0)
        compress_slide(sample_svs, out, opts)
        with Container(out) as ct:
            assert ct.read_region(0, 0, 64, 64).shape == (64, 64, 3)
        edit(w)  # the folder now holds other weights again: decoding must refuse
        loading.clear_cache()
        with pytest.raises(ContainerError, match="other weights"):
            Container(out)
    finally:
        loading.clear_cache()


def test_weights_folder_is_small_and_documented():
    from slidepress.codecs.autoencoder.codec import WEIGHTS

    files = list(Path(WEIGHTS).iterdir())
    assert {"pathae.json", "quantizers.npz", "model.safetensors", "MODEL_CARD.md"} <= {
        f.name for f in files
    }
    assert sum(f.stat().st_size for f in files) < 4_000_000


def test_dc_ae_bundle_codec_round_trip(tmp_path, hub_disabled):
    torch = pytest.importorskip("torch")
    from slidepress.codecs.autoencoder.loading import bundle_from_diffusers

    torch.manual_seed(0)
    tiny_dc().save_pretrained(str(tmp_path / "dc"))
    tiles = real_tiles(2, 64)
    sha = bundle_from_diffusers(tmp_path / "dc", tmp_path / "b", crops_tensor(real_tiles(4, 128)),
                                name="tiny-dc", ks=(16,), copy=False)  # fmt: skip
    c = get_codec("ae-dc", 1, weights=str(tmp_path / "b"))  # weights referenced, not copied
    assert c.bundle.ae.stride == 4 and c.describe()["model"]["weights_sha256"] == sha
    out = c.decode_batch(c.encode_batch(tiles))
    assert [o.shape for o in out] == [t.shape for t in tiles]
