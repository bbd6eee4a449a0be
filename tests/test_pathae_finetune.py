"""Decoder-only fine-tuning (training/ae_decoder.py) and `train codec-decoder`: the
training loss falls in a few steps on real PCam patches, the encoder and quantizer stay frozen
(same bytes), a resumed run ends with exactly the weights of an uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from .conftest import SHARED

PCAM = SHARED / "patches" / "pcam" / "train"
needs_pcam = pytest.mark.skipif(
    not PCAM.is_dir(), reason=f"shared PCam patches not found at {PCAM} (see README)"
)
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny diffusers AutoencoderKL bundle (saved, loaded with from_pretrained offline)."""
    from slidepress.codecs.autoencoder.loading import bundle_from_diffusers

    from .test_pathae import crops_tensor, real_tiles, tiny_kl

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ft")
    tiny_kl().save_pretrained(str(root / "vae"))
    bundle_from_diffusers(root / "vae", root / "bundle", crops_tensor(real_tiles(4, 128)),
                          name="tiny-kl", ks=(16, 64))  # fmt: skip
    return root / "bundle"


def sampler_and_val(seed: int = 0):
    from slidepress.training.samplers import CropSampler, load_folder_images

    imgs = load_folder_images(PCAM / "1", 24, seed)
    return CropSampler([(imgs, 1.0)], seed=seed), CropSampler([(imgs, 1.0)], seed=99).batch(6)


def final_decoder(run) -> dict:
    from slidepress.training.checkpoint import load_checkpoint

    return load_checkpoint(run / "checkpoint.pt")["models"]["decoder"]


@needs_pcam
def test_finetune_lowers_loss_keeps_encoder_and_resumes_exactly(bundle, tmp_path):
    from slidepress.codecs import get_codec
    from slidepress.training.ae_decoder import FinetuneSettings, finetune_decoder

    quiet = {"log": lambda _: None}
    s = FinetuneSettings(steps=6, batch=4, lr=2e-3, quality=2, perceptual_weight=0.2,
                         gan_weight=0.05, checkpoint_every=3, val_crops=6)  # fmt: skip
    sampler, val = sampler_and_val()
    res = finetune_decoder(bundle, sampler, val, tmp_path / "a", s, **quiet)
    assert res["after"]["loss"] < res["before"]["loss"], res  # the training loss falls
    log = (tmp_path / "a" / "log.csv").read_text().splitlines()
    assert len(log) == 7
    assert json.loads((tmp_path / "a" / "results.json").read_text())["steps"] == 6
    # the fine-tuned bundle: other decoder weights, same encoder + quantizer = same bytes
    tile = (val[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    old = get_codec("ae-kl", 2, weights=str(bundle))
    new = get_codec("ae-kl", 2, weights=str(tmp_path / "a" / "bundle"))
    assert new.bundle.weights_sha256 != old.bundle.weights_sha256
    assert new.bundle.name == "tiny-kl-ft"
    data = old.encode(tile)
    assert new.encode(tile) == data
    assert new.decode(data).shape == tile.shape
    # interrupted after 3 steps, resumed to 6: the same weights as the straight run
    s3 = FinetuneSettings(**{**s.__dict__, "steps": 3})
    sampler, val = sampler_and_val()
    finetune_decoder(bundle, sampler, val, tmp_path / "b", s3, **quiet)
    sampler, val = sampler_and_val()  # a new process: fresh sampler, state from the checkpoint
    finetune_decoder(bundle, sampler, val, tmp_path / "b", s, resume=True, **quiet)
    a, b = final_decoder(tmp_path / "a"), final_decoder(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "b" / "log.csv").read_text().count("\n") == 7


@pytest.mark.slow
@needs_pcam
def test_train_codec_decoder_cli(bundle, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    data = tmp_path / "data"
    data.mkdir()
    for p in sorted((PCAM / "0").iterdir())[:8]:
        (data / p.name).write_bytes(p.read_bytes())
    cmd = [sys.executable, "-m", "slidepress", "train", "codec-decoder", "--codec", "ae-kl",
           "--weights", str(bundle), "--data", str(data), "-o", str(tmp_path / "run"),
           "--steps", "2", "--batch-size", "2", "--quality", "1",
           "--perceptual", "none"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "decoder fine-tuned" in r.stderr + r.stdout
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {"before", "after"} <= res.keys()
    r = subprocess.run([*cmd[:-2], "--perceptual", "none", "--codec", "jpeg"], capture_output=True,
                       text=True, env=env, timeout=300)  # fmt: skip
    assert r.returncode == 2
