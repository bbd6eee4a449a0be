"""Feature similarity (metrics/featsim) and embedding similarity (metrics/embsim): exactly 1 for
identical tiles, falling with JPEG quality on real H&E tiles, user weights from a local file, a
clear error for bad ones, and both in `compress`'s summary and manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .conftest import SHARED

TILES = SHARED / "tiles"
needs_tiles = pytest.mark.skipif(
    not TILES.is_dir(), reason=f"shared tiles not found at {TILES} (see README)"
)
QUALITIES = (95, 70, 40, 10)


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    """Three 256 px crops of lossless H&E tiles (two sources)."""
    if not TILES.is_dir():
        pytest.skip(f"shared tiles not found at {TILES} (see README)")
    from slidepress.imagefolder import read_rgb

    a = read_rgb(TILES / "tiatoolbox_target.png")
    b = read_rgb(TILES / "histoqc_template1.png")
    return np.stack([a[:256, :256], a[400:656, 500:756], b[100:356, 200:456]])


@pytest.fixture(scope="module")
def jpeg_versions(tiles) -> dict[int, np.ndarray]:
    from slidepress.codecs import get_codec

    out = {}
    for q in QUALITIES:
        codec = get_codec("jpeg", q)
        out[q] = np.stack([codec.decode(codec.encode(t)) for t in tiles])
    return out


@pytest.fixture(scope="module")
def fs():
    from slidepress.metrics.featsim import shipped

    return shipped()


def test_identical_tiles_score_exactly_one(tiles, fs):
    from slidepress.metrics import embedding_similarity

    scores = fs.score(tiles, tiles.copy())
    assert scores.per_depth.shape == (3, 6)
    np.testing.assert_allclose(scores.per_depth, 1.0, atol=1e-6)
    s = scores.summary()
    assert s["featsim_mean"] == pytest.approx(1.0, abs=1e-6)
    assert set(s) == {f"featsim_{d}" for d in (*fs.describe()["depths"], "mean")}
    emb = embedding_similarity("nic-multitask", tiles, tiles.copy())
    np.testing.assert_allclose(emb, 1.0, atol=1e-6)


def test_similarity_falls_with_jpeg_quality(tiles, jpeg_versions, fs):
    """q95 > q70 > q40 > q10 for the mean over the six depths, for each tile, and for the
    embedding similarity (mean over tiles)."""
    from slidepress.encoders import get_encoder
    from slidepress.metrics import embedding_similarity

    enc = get_encoder("nic-multitask")
    per_depth, emb = [], []
    for q in QUALITIES:
        per_depth.append(fs.score(tiles, jpeg_versions[q]).per_depth)  # (tiles, depths)
        emb.append(embedding_similarity(enc, tiles, jpeg_versions[q]))
    per_depth, emb = np.stack(per_depth), np.stack(emb)  # (qualities, tiles[, depths])
    mean = per_depth.mean(axis=2)
    assert np.all(mean < 1.0) and np.all(emb < 1.0)
    assert np.all(np.diff(mean, axis=0) < 0), mean  # every tile, every step
    assert np.all(np.diff(emb.mean(axis=1)) < 0), emb
    # per depth (mean over tiles): the shallow maps fall at every step; every depth falls from
    # q95 to q10. Not asserted: layer4 / pooled between q70 and q40, which differ by ~1e-4 and
    # can swap (the deep, pooled features hardly see mild JPEG artefacts).
    depth_means = per_depth.mean(axis=1)  # (qualities, depths)
    assert np.all(np.diff(depth_means[:, :3], axis=0) < 0), depth_means  # stem, layer1, layer2
    assert np.all(depth_means[-1] < depth_means[0]), depth_means


def test_one_scorer_scores_tiles_and_a_reference_alike(tiles, jpeg_versions, fs):
    """`metrics.similarity`: PSNR, MS-SSIM, featsim and embsim in one call, per tile; scoring
    against a reference (the originals' features and embeddings computed once, as the codec
    benchmark and `eval downstream` do) gives what scoring the tiles themselves gives."""
    from slidepress.metrics import SimilarityScorer, embedding_similarity, score_tiles

    scorer = SimilarityScorer(structural=True, featsim=fs, encoder="nic-multitask")
    dec = jpeg_versions[40]
    direct = scorer.score(tiles, dec, tile_mpp=0.5)
    again = scorer.score(scorer.reference(tiles, tile_mpp=0.5), dec)
    np.testing.assert_allclose(direct.featsim.per_depth, again.featsim.per_depth, rtol=1e-12)
    np.testing.assert_allclose(direct.embsim, again.embsim, rtol=1e-12)
    np.testing.assert_array_equal(direct.featsim.per_depth, fs.score(tiles, dec).per_depth)
    emb = embedding_similarity("nic-multitask", tiles, dec, tile_mpp=0.5)
    np.testing.assert_array_equal(direct.embsim, emb)
    pixels = score_tiles(tiles, dec)
    np.testing.assert_array_equal(direct.pixels.ms_ssim, pixels.ms_ssim)
    assert again.pixels.mean_psnr == pixels.mean_psnr
    assert scorer.describe()["feature_similarity"]["name"] == fs.name


def test_user_weights_from_a_local_file(tmp_path, tiles, jpeg_versions, fs):
    """A plain resnet18 state dict (here the shipped one, wrapped as training checkpoints are)
    loads through the public API and scores as the shipped network does."""
    import torch

    from slidepress.metrics import FeatureSimilarity

    state = {f"module.{k}": v.clone() for k, v in fs.model.state_dict().items()}
    path = tmp_path / "my_resnet18.pth"
    torch.save({"state_dict": state}, path)
    mine = FeatureSimilarity.load(path)
    assert mine.width == fs.width and mine.name == "my_resnet18.pth"
    a = mine.score(tiles[:2], jpeg_versions[40][:2]).per_depth
    b = fs.score(tiles[:2], jpeg_versions[40][:2]).per_depth
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("kind", ["garbage", "missing", "not_resnet", "folder"])
def test_bad_weights_are_a_clear_project_error(tmp_path, kind):
    import torch

    from slidepress.errors import EncoderError, SlidepressError
    from slidepress.metrics import FeatureSimilarity

    path = tmp_path / "w.pth"
    if kind == "garbage":
        path.write_bytes(b"this is not a checkpoint" * 10)
    elif kind == "not_resnet":
        torch.save({"conv.weight": torch.zeros(4, 3, 3, 3)}, path)
    elif kind == "folder":
        path = tmp_path / "weights"
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(EncoderError) as e:
        FeatureSimilarity.load(path)
    assert isinstance(e.value, SlidepressError)
    msg = str(e.value)
    assert path.name in msg and "\n" not in msg and "Traceback" not in msg


def test_compress_summary_reports_both(tmp_path, sample_svs):
    """The sample slide at 2 um/px (few tiles): both values in the manifest's fidelity record,
    the printed summary and report.csv's metrics."""
    from slidepress.pipeline.batch import CompressJob, run_slide
    from slidepress.store.container import Container

    opts = {"codec": "jpeg", "quality": 60, "mpp": 2.0, "tile": 128,
            "feature_similarity": True, "embedding_similarity": "nic-multitask"}  # fmt: skip
    out = run_slide(sample_svs, CompressJob(options=opts), tmp_path)
    assert out.status == "done", out.error
    with Container(tmp_path / f"{sample_svs.stem}.spz") as c:
        fid = c.manifest["fidelity"]
    fs, es = fid["feature_similarity"], fid["embedding_similarity"]
    assert 0.5 < fs["mean"] < 1.0 and fs["tiles"] == fid["tiles_stored"] > 0
    assert list(fs["per_depth"]) == ["stem", "layer1", "layer2", "layer3", "layer4", "pooled"]
    assert fs["weights"]["name"] == "featsim-resnet18" and len(fs["weights"]["sha256"]) == 64
    assert 0.5 < es["mean"] < 1.0 and es["encoder"] == "nic-multitask"
    assert es["tile_mpp"] == pytest.approx(2.0)
    assert fid.get("ms_ssim") is None  # not asked for
    notes = " ".join(out.notes)
    assert f"feature similarity {fs['mean']:.4f}" in notes
    assert f"embedding similarity (nic-multitask) {es['mean']:.5f}" in notes
    assert out.metrics["feature_similarity"] == fs["mean"]
    assert out.metrics["embedding_similarity"] == es["mean"]


def test_compress_options_check_the_encoder_name():
    from slidepress.errors import EncoderError
    from slidepress.pipeline import CompressOptions

    with pytest.raises(EncoderError, match="unknown encoder 'nic-nope'"):
        CompressOptions(embedding_similarity="nic-nope")
    assert CompressOptions(embedding_similarity="none").embedding_similarity is None
    assert not CompressOptions().keeps_pixels
    assert CompressOptions(feature_similarity=True).keeps_pixels
