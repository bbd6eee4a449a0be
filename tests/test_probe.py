"""`slidepress eval probe`: resampling to the encoder's input, the MLP probe, honest baseline
sentences, and small real runs on PCam / Kather 2016 (skipped when ../shared/data is absent)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from slidepress.cli.eval import app
from slidepress.encoders import Encoder
from slidepress.eval import (
    ProbeResult,
    ResampleWarning,
    comparison_sentence,
    embed_folder,
    prepare_image,
    probe_kather,
    probe_pcam,
    train_mlp_probe,
)

from .conftest import SHARED

PCAM = SHARED / "patches" / "pcam"
KATHER = SHARED / "patches" / "kather2016"
needs_patches = pytest.mark.skipif(
    not (PCAM.is_dir() and KATHER.is_dir()),
    reason=f"shared patch data not found at {SHARED / 'patches'} (see README)",
)


class Recorder(Encoder):
    """Mean RGB that records the shape of every batch it is given."""

    name, version, dim = "recorder", "1", 3

    def __init__(self, patch_size: int | None, mpp: float | None):
        self.patch_size, self.mpp, self.shapes = patch_size, mpp, []

    def encode(self, patches: np.ndarray) -> np.ndarray:
        assert patches.dtype == np.uint8 and patches.ndim == 4 and patches.shape[-1] == 3
        self.shapes.append(patches.shape[1:3])
        return patches.reshape(len(patches), -1, 3).mean(axis=1).astype(np.float32)


def _tiny_folder(root, per_class: int = 4, size: int = 40):
    """An ImageFolder of two classes (reddish / bluish noise), for runs without shared data."""
    rng = np.random.default_rng(0)
    for k, base in enumerate(((200, 90, 120), (110, 90, 200))):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(per_class):
            img = np.clip(rng.normal(base, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"c{k}" / f"{i}.png")
    return root


# ---------------------------------------------------------------- no shared data needed


def test_prepare_image_resamples_then_centre_crops():
    img = np.arange(150 * 150 * 3, dtype=np.uint32).reshape(150, 150, 3).astype(np.uint8)
    out, up = prepare_image(img, 0.495, 0.97, 64)  # 150 px -> 77 px -> crop 64
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8 and not up
    out, up = prepare_image(img[:96, :96], 0.97, 0.5, 224)  # 96 -> 186 px < 224: enlarged
    assert out.shape == (224, 224, 3) and up
    out, up = prepare_image(img, 0.495, None, 64)  # no mpp: crop only, exact centre
    assert np.array_equal(out, img[43:107, 43:107]) and not up
    out, up = prepare_image(img, 0.495, None, None)  # any size, any mpp: untouched
    assert out is img or np.array_equal(out, img)
    out, _ = prepare_image(img[:100], 0.5, 0.25, None)  # mpp only: 2x, aspect kept
    assert out.shape == (200, 300, 3)


def test_mlp_probe_learns_and_is_deterministic():
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (100, 5)), rng.normal(1.5, 1, (100, 5))]) * 50 + 100
    y = np.repeat([0, 1], 100)
    a = train_mlp_probe(x, y, 2, epochs=10, seed=4)
    b = train_mlp_probe(x, y, 2, epochs=10, seed=4)
    assert a.used_validation and 1 <= a.best_epoch <= 10
    pa, pb = a.predict_proba(x), b.predict_proba(x)
    assert np.array_equal(pa, pb)
    np.testing.assert_allclose(pa.sum(axis=1), 1.0, rtol=1e-6)
    assert (pa.argmax(axis=1) == y).mean() > 0.9
    tiny = train_mlp_probe(x[95:105], y[95:105], 2, epochs=3)  # too small to hold out
    assert not tiny.used_validation and tiny.best_epoch == 3


def _res(encoder, auc, lo, hi, boot=None):
    return ProbeResult(encoder, "1", 3, None, None, "pcam", 10, 10, 0.7, auc, lo, hi, 1.0,
                       boot_auc=boot)  # fmt: skip


def test_comparison_sentence_claims_wins_only_outside_the_ci():
    rows = [
        _res("mean-rgb", 0.80, 0.77, 0.83),
        _res("big", 0.90, 0.88, 0.92),
        _res("close", 0.82, 0.79, 0.85),
        _res("bad", 0.60, 0.55, 0.65),
    ]
    s = comparison_sentence(rows, "pcam")  # no paired resamples: non-overlapping CIs decide
    assert "big beats mean-rgb (AUC 0.900 vs 0.800; unpaired CIs)." in s
    assert "close is not distinguishable from mean-rgb (AUC 0.820 vs 0.800; unpaired CIs)" in s
    assert "bad does worse than mean-rgb (AUC 0.600 vs 0.800; unpaired CIs)." in s
    assert "No encoder beats" not in s
    s = comparison_sentence([rows[0], rows[2]], "pcam")
    assert "not distinguishable" in s and s.endswith("No encoder beats mean-rgb.")
    assert "close beats" not in s
    # paired: overlapping CIs, but the same resamples show a consistent gain -> a win
    rng = np.random.default_rng(0)
    base_boot = 0.80 + rng.normal(0, 0.015, 1000)
    paired = [
        _res("mean-rgb", 0.80, 0.77, 0.83, base_boot),
        _res("close", 0.82, 0.79, 0.85, base_boot + 0.02 + rng.normal(0, 0.003, 1000)),
        _res("noisy", 0.81, 0.78, 0.84, base_boot + rng.normal(0.01, 0.03, 1000)),
    ]
    s = comparison_sentence(paired, "pcam")
    assert "close beats mean-rgb (AUC 0.820 vs 0.800; paired bootstrap difference +0.020" in s
    assert "noisy is not distinguishable" in s
    assert "no baseline" in comparison_sentence(rows[1:], "pcam")
    assert "only mean-rgb" in comparison_sentence(rows[:1], "pcam")
    boot = np.linspace(0.77, 0.83, 50)
    s = comparison_sentence([_res("mean-rgb", 0.8, 0.77, 0.83, boot),
                             _res("close", 0.82, 0.79, 0.85, boot + 0.02)], "pcam")  # fmt: skip
    assert "paired bootstrap difference +0.020 [+0.020, +0.020]" in s


def test_synthetic_folder_full_run(tmp_path):
    """A whole run without shared data: four files, consistent CSV/JSON."""
    pytest.importorskip("torch")
    from slidepress.eval import run_probe

    data = _tiny_folder(tmp_path / "data", per_class=6)
    rep = run_probe(["mean-rgb"], kather=data, out_dir=tmp_path / "out", epochs=3,
                    n_bootstrap=50, kather_mpp=0.5)  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "probe.csv", "probe.json", "probe.md", "probe.png",
    ]  # fmt: skip
    doc = json.loads(rep.paths["json"].read_text())
    assert doc["results"][0]["encoder_describe"]["name"] == "mean-rgb"
    assert doc["results"][0]["n_test"] == 12 and doc["settings"]["epochs"] == 3
    assert rep.results[0].auc > 0.9  # reddish vs bluish is trivially separable


# ---------------------------------------------------------------- real patches


@needs_patches
def test_embed_folder_gives_the_encoder_its_patch_size():
    enc = Recorder(patch_size=64, mpp=0.97)
    x, y, classes = embed_folder(enc, PCAM / "valid", 0.97, limit_per_class=3, batch_size=4)
    assert x.shape == (6, 3) and classes == ["0", "1"] and list(y) == [0, 0, 0, 1, 1, 1]
    assert enc.shapes and set(enc.shapes) == {(64, 64)}
    enc = Recorder(patch_size=64, mpp=0.97)  # Kather 150 px at 0.495 -> 77 px -> crop 64
    x, y, classes = embed_folder(enc, KATHER, 0.495)
    assert x.shape == (24, 3) and len(classes) == 8 and set(enc.shapes) == {(64, 64)}
    enc = Recorder(patch_size=224, mpp=0.5)  # PCam 96 px at 0.97 -> 186 px < 224
    with pytest.warns(ResampleWarning, match="enlarged") as rec:
        embed_folder(enc, PCAM / "valid", 0.97, limit_per_class=2, batch_size=1)
    assert len(rec) == 1 and set(enc.shapes) == {(224, 224)}
    enc = Recorder(patch_size=None, mpp=None)  # any size: the patch as stored
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embed_folder(enc, PCAM / "valid", 0.97, limit_per_class=2)
    assert set(enc.shapes) == {(96, 96)}


@needs_patches
def test_mean_rgb_pcam_probe_beats_chance_and_is_deterministic():
    pytest.importorskip("torch")
    from slidepress.encoders import get_encoder

    enc = get_encoder("mean-rgb")
    kw = {"train_limit_per_class": 150, "test_limit_per_class": 150, "seed": 0, "epochs": 30}
    a = probe_pcam(enc, PCAM, **kw)
    b = probe_pcam(enc, PCAM, **kw)
    assert (a.n_train, a.n_test) == (300, 300)
    assert a.auc > 0.6 and a.accuracy > 0.55
    assert a.auc_ci_low < a.auc < a.auc_ci_high
    assert a.row() | {"seconds": 0} == b.row() | {"seconds": 0}
    c = probe_pcam(enc, PCAM, **(kw | {"seed": 1}))
    assert (c.auc, c.accuracy) != (a.auc, a.accuracy)  # another subset and init


@needs_patches
def test_kather_cv_beats_chance():
    pytest.importorskip("torch")
    from slidepress.encoders import get_encoder

    r = probe_kather(get_encoder("mean-rgb"), KATHER, folds=3, seed=0)
    assert r.dataset == "kather2016" and r.n_test == 24 and r.n_train == 16
    assert r.accuracy > 1 / 8 and r.auc > 0.5
    assert len(r.details["fold_accuracy"]) == 3
    assert math.isfinite(r.auc_ci_low) and r.auc_ci_low <= r.auc <= r.auc_ci_high


@pytest.fixture
def tiny_torchscript(tmp_path):
    """A TorchScript encoder that refuses anything but 64x64 input (sidecar: 64 px, 0.97 mpp)."""
    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 8, stride=8)

        def forward(self, x):
            assert x.shape[-1] == 64 and x.shape[-2] == 64
            return self.conv(x).mean(dim=(2, 3))

    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(Tiny()).save(str(path))
    meta = {"name": "tiny", "version": "1", "patch_size": 64, "mpp": 0.97,
            "mean": [0.5] * 3, "std": [0.25] * 3}  # fmt: skip
    (tmp_path / "tiny.pt.json").write_text(json.dumps(meta))
    return path


@needs_patches
def test_cli_probe_writes_the_four_files(tmp_path, tiny_torchscript):
    out = tmp_path / "report"
    args = ["probe", "-e", "mean-rgb", "-e", f"torchscript:{tiny_torchscript}", "--pcam", PCAM,
            "--kather", KATHER, "--train-limit", 60, "--test-limit", 60, "--epochs", 10,
            "--bootstrap", 200, "--device", "cpu", "-o", out]  # fmt: skip
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [
        "probe.csv", "probe.json", "probe.md", "probe.png",
    ]  # fmt: skip
    lines = (out / "probe.csv").read_text().splitlines()
    assert lines[0].split(",")[:3] == ["encoder", "encoder_version", "dim"] and len(lines) == 5
    doc = json.loads((out / "probe.json").read_text())
    assert {(r["encoder"], r["dataset"]) for r in doc["results"]} == {
        (e, d) for e in ("mean-rgb", "tiny") for d in ("pcam", "kather2016")
    }
    tiny = next(r for r in doc["results"] if r["encoder"] == "tiny")
    assert tiny["patch_size"] == 64 and tiny["encoder_describe"]["weights_hash"]
    assert doc["slidepress_version"] and doc["settings"]["train_limit_per_class"] == 60
    md = (out / "probe.md").read_text()
    assert "| tiny |" in md and "Against the mean-rgb baseline" in md and "pcam: " in md
    assert (out / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mean-rgb" in res.output and "AUC" in res.output


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("case", ["no-dataset", "missing-folder", "unknown-encoder", "empty",
                                  "empty-class", "bad-device"])  # fmt: skip
def test_cli_bad_input_one_line_exit_2(tmp_path, case):
    data = _tiny_folder(tmp_path / "data", per_class=3)
    (tmp_path / "empty").mkdir()
    (data / "c2").mkdir()
    (tmp_path / "ok").mkdir()
    _tiny_folder(tmp_path / "ok" / "k", per_class=3)
    args = {
        "no-dataset": ["-e", "mean-rgb"],
        "missing-folder": ["-e", "mean-rgb", "--pcam", tmp_path / "nope"],
        "unknown-encoder": ["-e", "no-such-encoder", "--kather", tmp_path / "ok" / "k"],
        "empty": ["-e", "mean-rgb", "--kather", tmp_path / "empty"],
        "empty-class": ["-e", "mean-rgb", "--kather", data],
        "bad-device": ["-e", "mean-rgb", "--kather", tmp_path / "ok" / "k", "--device", "tpu"],
    }[case]
    res = CliRunner().invoke(app, ["probe", *map(str, args), "-o", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "out").exists()
