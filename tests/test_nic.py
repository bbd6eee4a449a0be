"""NIC encoders: methods learn on real patches, runs are self-describing and resumable,
shipped weights load offline and work in `encode`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from slidepress.cli.main import app
from slidepress.encoders import get_encoder
from slidepress.encoders.nic_weights import SHIPPED, WEIGHTS_DIR

from .conftest import SHARED

torch = pytest.importorskip("torch")

PCAM = SHARED / "patches" / "pcam"
KATHER = SHARED / "patches" / "kather2016"
SVS = SHARED / "slides" / "CMU-1-Small-Region.svs"
needs_patches = pytest.mark.skipif(
    not PCAM.is_dir(), reason=f"shared patches not found at {PCAM} (see README)"
)
runner = CliRunner()


def _pcam_batch(n: int = 16, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    from slidepress.training.nic.data import load_image_folder

    src = load_image_folder(PCAM / "train", 0.97, 0.97, size, limit_per_class=n // 2, seed=1)
    o = (src.images.shape[1] - size) // 2
    x = torch.from_numpy(src.images[:, o : o + size, o : o + size].copy())
    x = x.permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, torch.from_numpy(src.labels)


def _method(name: str, **options):
    from slidepress.encoders.nic import NICConfig, build_method

    torch.manual_seed(0)
    lr = 2e-4 if name == "bigan" else 1e-3
    return build_method(
        NICConfig(name, patch_size=64, mpp=0.97, code_size=32, lr=lr, options=options)
    )


def _first_last(method, batch, key: str, steps: int) -> tuple[float, float]:
    opts = method.make_optimizers()
    method.train()
    losses = [method.training_step(batch, opts)[key] for _ in range(steps)]
    return float(np.mean(losses[:2])), float(np.mean(losses[-2:]))


@needs_patches
@pytest.mark.parametrize(
    ("name", "key", "steps"),
    [("vae", "loss", 12), ("bigan", "loss_d", 12), ("contrastive", "loss", 12),
     ("multitask", "loss", 12), ("supervised", "loss", 12), ("simclr", "loss", 12)],
)  # fmt: skip
def test_method_loss_decreases_on_real_patches(name, key, steps):
    x, y = _pcam_batch()
    tasks = [{"name": "pcam", "classes": ["0", "1"]}]
    if name == "multitask":
        tasks.append({"name": "pcam_flipped", "classes": ["1", "0"]})
    method = _method(name, tasks=tasks) if name in ("multitask", "supervised") else _method(name)
    if name in ("multitask", "supervised"):
        batch = {t["name"]: (x, y if i == 0 else 1 - y) for i, t in enumerate(tasks)}
    elif name == "contrastive":
        same = torch.arange(len(x)) % 2
        batch = (x, torch.where(same.bool()[:, None, None, None], x, x.flip(0)), same)
    elif name == "simclr":
        batch = (x, x.flip(-1).roll(1, dims=-2))  # two "views" of each patch
    else:
        batch = x
    first, last = _first_last(method, batch, key, steps)
    assert last < first, f"{name}: {key} {first:.4f} -> {last:.4f}"


@needs_patches
def test_simclr_forward_shapes_and_one_training_step_on_augmented_views():
    from slidepress.training.augment import PatchAugmenter
    from slidepress.training.nic.data import load_image_folder

    src = load_image_folder(PCAM / "train", 0.97, 0.97, 64, limit_per_class=4, seed=2)
    aug = PatchAugmenter(64)
    batch = (aug(src.images, train=True), aug(src.images, train=True))
    method = _method("simclr")
    assert method.data_kind == "views" and method.training_only == ("projector.",)
    method.eval()
    assert method.embedder()(batch[0]).shape == (8, 32)  # the code, before the projection
    before = {k: v.clone() for k, v in method.state_dict().items()}
    method.train()
    logs = method.training_step(batch, method.make_optimizers())
    assert np.isfinite(logs["loss"]) and 0 <= logs["top1"] <= 1
    changed = [k for k, v in method.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("encoder.") for k in changed)
    assert any(k.startswith("projector.") for k in changed)
    # NT-Xent: identical views are found (top-1 = 1), and the loss is lower than for noise
    from slidepress.encoders.nic.simclr import nt_xent

    p = torch.randn(8, 16)
    loss_same, acc = nt_xent(torch.cat([p, p]), 0.2)
    loss_rand, _ = nt_xent(torch.randn(16, 16), 0.2)
    assert acc == 1 and loss_same < loss_rand


@needs_patches
def test_issue24_options_train_and_default_options_keep_the_shipped_networks():
    x, _ = _pcam_batch()
    vae = _method("vae", gamma=5e-6, kl_warmup=0.5, full_res_conv=True)
    vae.progress = 0.0
    assert vae.kl_weight() == 0.0  # warm-up starts without KL
    vae.progress = 0.25
    assert vae.kl_weight() == pytest.approx(2.5e-6)
    vae.eval()
    assert vae.kl_weight() == 5e-6 and vae.decoder(vae.encoder(x)[0]).shape == x.shape
    first, last = _first_last(vae, x, "loss", 8)
    assert last < first
    gan = _method("bigan", spectral_norm=True, lr_d=4e-4, recon_weight=1.0)
    opt_d, opt_ge = gan.make_optimizers()
    assert opt_d.param_groups[0]["lr"] == 4e-4 and opt_ge.param_groups[0]["lr"] == 2e-4
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in gan.D.modules())
    gan.train()
    logs = gan.training_step(x, [opt_d, opt_ge])
    assert np.isfinite(logs["loss_d"]) and np.isfinite(logs["loss_ge"]) and logs["recon"] > 0
    # the defaults build exactly the shipped networks (same state-dict keys and shapes)
    from safetensors.torch import load_file

    from slidepress.encoders.nic import NICConfig, build_method

    for name in ("nic-vae", "nic-bigan"):
        meta = json.loads((WEIGHTS_DIR / name / "config.json").read_text())
        shipped = load_file(str(WEIGHTS_DIR / name / "model.safetensors"))
        built = build_method(NICConfig.from_dict(meta["config"])).state_dict()
        assert {k: v.shape for k, v in shipped.items()} == {
            k: v.shape for k, v in built.items() if k in shipped
        }


def test_vae_feature_loss_uses_a_frozen_shipped_encoder_and_checks_its_hash():
    from slidepress import zoo
    from slidepress.encoders.nic_weights import FORMAT
    from slidepress.errors import UsageError
    from slidepress.training.nic.nic24 import RECIPES, SIMCLR_SHA256

    digest = zoo.weights_sha256(zoo.shipped_path("nic-simclr"), FORMAT)
    # the VAE recipe names the shipped nic-simclr's features (re-shipping it must update it)
    assert SIMCLR_SHA256 == digest == RECIPES["vae"]["options"]["feature_net_sha256"]
    vae = _method("vae", feature_net="nic-simclr", feature_weight=1.0, feature_net_sha256=digest)
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    assert vae.feature_loss(x, x).item() == 0.0  # identical images: identical features
    assert vae.feature_loss(-x, x).item() > 0
    vae.train()
    loss, logs = vae.losses(x)
    loss.backward()
    assert logs["feature"] > 0 and logs["loss"] > logs["mse"]
    frozen = vae.__dict__["_features"]
    assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())
    assert not frozen.training  # BN of the frozen net stays on its running statistics
    # the frozen net is not part of the VAE's own state (saved and shipped files)
    assert set(vae.state_dict()) == set(_method("vae").state_dict())
    wrong = _method("vae", feature_net="nic-simclr", feature_weight=1.0,
                    feature_net_sha256="0" * 64)  # fmt: skip
    with pytest.raises(UsageError, match="sha256"):
        wrong.feature_loss(x, x)
    # the untrained control: seeded, and loading it leaves the training's random stream alone
    state = torch.random.get_rng_state()
    a, b = (_method("vae", feature_net="random:0", feature_weight=1.0) for _ in range(2))
    torch.random.set_rng_state(state)
    la = a.feature_loss(-x, x)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert la.item() == b.feature_loss(-x, x).item() > 0


@needs_patches
def test_pair_mix_draws_far_partners_and_probe_split_is_held_out():
    from slidepress.training.nic.data import DataSpec, FeedInputs, PairSampler, load_canvas
    from slidepress.training.nic.probe import heldout_files, probe_split

    canvas = load_canvas(SVS, 0.97)
    sampler = PairSampler([canvas], None, 96, 64, mix={"far": 1.0}, other_anchor=0.0)
    rng = np.random.default_rng(0)
    for _ in range(10):
        ci, box = sampler.anchors[rng.integers(len(sampler.anchors))]
        far = sampler._far(ci, box, rng)
        if far is not None:
            assert np.abs(far[:2] - box[:2]).max() >= sampler.FAR * 64
    a, b, same = sampler.sample(16, rng)
    assert same.sum() == 8 and not any(
        np.array_equal(a[i], b[i]) for i in np.flatnonzero(~same.astype(bool))
    )
    split = probe_split(PCAM)
    held = {f"{f.parent.name}/{f.name}" for f in split["heldout"][0]}
    sel = {f"{f.parent.name}/{f.name}" for f in split["select"][0]}
    assert len(held) == len(sel) == 800 and not held & sel and held == heldout_files(PCAM)
    assert np.bincount(split["heldout"][1]).tolist() == [400, 400]
    inputs = FeedInputs(
        data=[DataSpec("pcam", PCAM, 0.97)],
        limit_per_class=4,
        val_limit_per_class=None,
        exclude=frozenset(held),
        val_include=frozenset(list(sorted(sel))[:3] + list(sorted(sel))[-3:]),
    )
    train, val = inputs.split(inputs.data[0], 64, 0.97, 0, None)
    assert len(train) == 8 and len(val) == 6  # validation: only the listed select patches


def test_hed_jitter_without_jitter_is_identity():
    from slidepress.training.augment import HEDJitter

    x = torch.rand(4, 3, 16, 16) * 0.9 + 0.05
    out = HEDJitter(sigma=0.0, bias=0.0, p=1.0)(x)
    assert torch.allclose(out, x, atol=1e-4)  # the stain matrices invert each other
    torch.manual_seed(0)
    assert (HEDJitter(sigma=0.2, bias=0.2, p=1.0)(x) - x).abs().max() > 0.01


def test_augmenter_shapes_and_range():
    from slidepress.training.augment import PatchAugmenter

    ctx = np.random.default_rng(0).integers(0, 256, (6, 96, 96, 3), dtype=np.uint8)
    aug = PatchAugmenter(64)
    for train in (True, False):
        x = aug(ctx, train=train)
        assert x.shape == (6, 3, 64, 64) and x.min() >= -1 and x.max() <= 1
    centre = aug(ctx, train=False)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose((centre + 1) * 127.5, ctx[0, 16:80, 16:80], atol=1e-3)


@needs_patches
def test_pair_sampler_neighbours_do_not_overlap():
    from slidepress.training.nic.data import PairSampler, load_canvas

    canvas = load_canvas(SVS, 0.97)
    sampler = PairSampler([canvas], None, 96, 64)
    rng = np.random.default_rng(0)
    for _ in range(20):
        ci, box = sampler.anchors[rng.integers(len(sampler.anchors))]
        nb = sampler._neighbour(ci, box, rng)
        if nb is None:
            continue
        dx, dy = abs(nb[0] - box[0]), abs(nb[1] - box[1])
        assert max(dx, dy) == 64 and {dx, dy} <= {0, 64}  # adjacent, patches do not overlap
        assert canvas.tissue(nb[None])[0] >= 0.5
    a, b, same = sampler.sample(16, rng)
    assert same.sum() == 8
    assert all(np.array_equal(a[i], b[i]) for i in np.flatnonzero(same))
    assert not any(np.array_equal(a[i], b[i]) for i in np.flatnonzero(same == 0))


def _train(out: Path, *extra: str) -> object:
    args = [
        "train", "encoder", "--method", "supervised", "--data", f"pcam={PCAM}@0.97",
        "--patch-size", "32", "--mpp", "1.94", "--code-size", "8", "--batch-size", "8",
        "--steps-per-epoch", "2", "--limit-per-class", "8", "--val-limit-per-class", "8",
        "--seed", "3", "-o", str(out), *extra,
    ]  # fmt: skip
    return runner.invoke(app, args)


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@needs_patches
def test_train_cli_is_deterministic_resumable_and_self_describing(tmp_path):
    r = _train(tmp_path / "a", "--epochs", "3", "--patience", "9")
    assert r.exit_code == 0, r.output
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"config.json", "model.safetensors", "checkpoint.pt", "log.csv", "curves.png"} <= files
    meta = json.loads((tmp_path / "a" / "config.json").read_text())
    assert meta["encoder"] == {
        "patch_size": 32, "mpp": 1.94, "dim": 8,
        "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3},
    }  # fmt: skip
    assert meta["config"]["options"]["tasks"] == [{"name": "pcam", "classes": ["0", "1"]}]
    assert meta["training"]["epochs_run"] == 3 and meta["software"]["torch"]
    assert len((tmp_path / "a" / "log.csv").read_text().splitlines()) == 4
    # same seed, interrupted after 2 epochs and resumed: bit-identical to the straight run
    assert _train(tmp_path / "b", "--epochs", "2", "--patience", "9").exit_code == 0
    r = _train(tmp_path / "b", "--epochs", "3", "--patience", "9", "--resume")
    assert r.exit_code == 0, r.output
    from slidepress.training.checkpoint import load_checkpoint

    ckpt_a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["models"]["method"]
    ckpt_b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["models"]["method"]
    assert all(torch.equal(ckpt_a[k], ckpt_b[k]) for k in ckpt_a)
    # the run folder is an encoder
    enc = get_encoder(f"nic:{tmp_path / 'a'}")
    assert (enc.patch_size, enc.mpp, enc.dim) == (32, 1.94, 8)
    assert len(enc.weights_hash) == 64


@needs_patches
def test_train_cli_refuses_to_overwrite_a_run_and_bad_specs(tmp_path):
    assert _train(tmp_path / "a", "--epochs", "1").exit_code == 0
    before = (tmp_path / "a" / "model.safetensors").read_bytes()
    r = _train(tmp_path / "a", "--epochs", "1")
    assert r.exit_code == 2 and "--resume" in r.output
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == before
    for bad, msg in [
        (["--data", str(PCAM)], "DIR@MPP"),
        (["--data", f"{PCAM}@abc"], "not a number"),
        (["--data", "/nonexistent@0.5"], "not found"),
        (["--method", "gan"], "unknown NIC method 'gan'; choose from vae, contrastive, bigan"),
        (["--patch-size", "30"], "multiple of 16"),
        (["--data", f"{PCAM}@0.97", "--option", "gama=1"], "method 'vae' has no option 'gama'"),
        (
            [
                "--data",
                f"{PCAM}@0.97",
                "--option",
                'feature_net="nic-simclr"',
                "--option",
                "feature_weight=1",
                "--option",
                'feature_net_sha256="00"',
            ],
            "weights sha256",
        ),
    ]:
        args = ["train", "encoder", "--method", "vae", "-o", str(tmp_path / "x"), *bad]
        r = runner.invoke(app, args)
        assert r.exit_code == 2, r.output
        assert msg in r.output and "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_nic_loader_rejects_foreign_folders(tmp_path):
    from slidepress.errors import EncoderError

    with pytest.raises(EncoderError, match="not found"):
        get_encoder(f"nic:{tmp_path / 'missing'}")
    with pytest.raises(EncoderError, match="not a NIC encoder folder"):
        get_encoder(f"nic:{tmp_path}")
    (tmp_path / "config.json").write_text("{nope")
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(EncoderError, match="not a slidepress NIC config"):
        get_encoder(f"nic:{tmp_path}")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_load_and_embed_deterministically(name):
    assert (WEIGHTS_DIR / name / "MODEL_CARD.md").is_file()
    enc = get_encoder(name, device="cpu")
    assert (enc.patch_size, enc.mpp, enc.dim) == (64, 0.97, 128)
    assert enc.name == name and len(enc.weights_hash) == 64
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    a, b = enc.encode(patches), get_encoder(name, device="cpu").encode(patches)
    assert a.shape == (5, 128) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a[0] - a[1]).max() > 1e-4  # different patches, different codes
    # batch-independent (BN in eval mode); kernels may differ by batch size in the last bits
    np.testing.assert_allclose(enc.encode(patches[2:3]), a[2:3], rtol=1e-4, atol=1e-4)


def test_encode_with_shipped_multitask_encoder(tmp_path, sample_svs):
    from slidepress.store import read_grid

    r = runner.invoke(
        app, ["encode", str(sample_svs), "--encoder", "nic-multitask", "-o", str(tmp_path)]
    )
    assert r.exit_code == 0, r.output
    grid = read_grid(next(tmp_path.glob("*.zarr")))
    assert grid.features.shape[2] == 128
    assert grid.metadata["encoder"]["name"] == "nic-multitask"
    assert grid.metadata["encoder"]["mpp"] == 0.97
    assert grid.features[grid.mask].std() > 0 and not grid.features[~grid.mask].any()


@needs_patches
def test_probe_with_a_shipped_encoder_beats_chance():
    from slidepress.eval import probe_pcam

    res = probe_pcam(get_encoder("nic-multitask", device="cpu"), PCAM, train_limit_per_class=100,
                     test_limit_per_class=100, epochs=10)  # fmt: skip
    assert res.auc > 0.6 and res.accuracy > 0.55
