"""Warm start of the learned codec from its shipped weights folder (training/codec_warmstart):
the float model rebuilt from encoder.safetensors + decoder.npz decodes what the shipped integer
decoder does, and exporting it again gives the same integer decoder."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from slidepress.codecs.learned.export import build_decoder  # noqa: E402
from slidepress.codecs.learned.runtime import LearnedModel  # noqa: E402
from slidepress.codecs.learned.weights_folder import IntDecoder  # noqa: E402
from slidepress.training.codec_warmstart import (  # noqa: E402
    SHIPPED,
    synthesis_pixels,
    warm_start,
)

from .conftest import SLIDES, psnr  # noqa: E402

CMU1 = SLIDES / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def net():
    messages: list[str] = []
    model = warm_start(SHIPPED, log=messages.append)
    assert messages[-1] == "re-initialised (not in the folder): none"
    model.eval()
    return model


@pytest.fixture(scope="module")
def tissue() -> np.ndarray:
    """A 128 px crop of real H&E (CMU-1-Small-Region level 0, mostly tissue)."""
    if not CMU1.is_file():
        pytest.skip(f"shared slide {CMU1} not found (see ../shared/data/README.md)")
    from slidepress.slide import open_slide

    with open_slide(CMU1) as r:
        crop = r.read_region((1200, 2000), 0, (128, 128))
    assert crop.min(axis=2).mean() < 150  # tissue, not glass
    return np.ascontiguousarray(crop[None])


def test_reexport_gives_the_shipped_integer_decoder(net):
    """float model -> export.build_decoder with the shipped calibration: every integer layer,
    the inverse gains and the scale thresholds equal decoder.npz's (the hyper-latent tables
    only to fp16 precision: z_log_scale ships in fp16)."""
    peaks = json.loads((SHIPPED / "config.json").read_text())["calibration"]
    shipped, again = IntDecoder.load(SHIPPED).to_arrays(), build_decoder(net, peaks).to_arrays()
    assert shipped.keys() == again.keys()
    for k in shipped:
        if k == "tables.z_probs":
            np.testing.assert_allclose(again[k], shipped[k], atol=1e-3)
        else:
            np.testing.assert_array_equal(again[k], shipped[k], err_msg=k)


@pytest.mark.parametrize("quality", [1, 4, 8])
def test_float_decoder_reproduces_integer_pixels(net, tissue, quality):
    model = LearnedModel(SHIPPED)
    int_px, float_px, mu_err = synthesis_pixels(net, model, tissue, quality)
    diff = np.abs(int_px.astype(int) - float_px)
    assert diff.max() <= 1, f"float vs integer synthesis differ by {diff.max()} levels"
    assert diff.mean() < 0.05
    assert mu_err < 4 * 2.0**-model.mu_frac  # hyper-synthesis: a few fixed-point steps
    # end to end (real bytes; the float model rounds around its own means)
    blobs, dec = model.encode_batch_pixels(list(tissue), quality)
    dec = np.stack(model.decode_batch(blobs))
    with torch.no_grad():
        x = torch.from_numpy(tissue).permute(0, 3, 1, 2).float() / 255
        out = net(x, torch.full((1,), quality - 1))["x_hat"]
    fl = out.clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).numpy()
    assert abs(psnr(fl, tissue) - psnr(dec, tissue)) < 0.05


def test_long_run_warms_its_learning_rate_up_again_after_a_snapshot_resume(tmp_path):
    """Adam's moments are restarted by a snapshot resume: the rate ramps up over REWARM steps
    from there, then follows the schedule it would have followed."""
    from slidepress.codecs.learned.model import CodecConfig
    from slidepress.training.codec_warmstart import REWARM, LongCodecTrainer
    from slidepress.training.learned_codec import TrainSettings, learning_rate
    from slidepress.training.run import Run

    cfg = CodecConfig(n=16, m=16, z=8, hyper=16, latent_stride=8, synthesis=(16,),
                      lambdas=(0.01, 0.1))  # fmt: skip
    s = TrainSettings(steps=10_000, batch=2, threads=1)
    from slidepress.training.samplers import CropSampler

    sampler = CropSampler([([np.zeros((96, 96, 3), np.uint8)], 1.0)])
    trainer = LongCodecTrainer(cfg, sampler, torch.zeros(1, 3, 16, 16), s, Run(tmp_path / "run"))
    start = 5_000
    plain = [learning_rate(k, s, k / s.steps) for k in (start, start + REWARM // 2, start + REWARM)]
    assert [trainer.lr_at(k, k / s.steps) for k in (start, start + REWARM)] == [
        plain[0], plain[2]]  # fmt: skip  # no resume yet: the schedule itself
    trainer.rewarm_from = start
    ramp = [trainer.lr_at(k, k / s.steps) for k in (start, start + REWARM // 2, start + REWARM)]
    assert ramp[0] == pytest.approx(plain[0] / REWARM)
    assert ramp[1] == pytest.approx(plain[1] * (REWARM // 2 + 1) / REWARM)
    assert ramp[2] == plain[2]
