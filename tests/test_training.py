"""The training harness (`slidepress.training`): for every model family, 3 steps then 3 more by
resuming give exactly the weights and optimiser state of 6 straight steps, with one log.csv
row per step; run folders and checkpoints refuse what they cannot continue."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from slidepress.errors import UsageError  # noqa: E402
from slidepress.training.checkpoint import load_checkpoint  # noqa: E402

STEPS, PAUSE = 6, 3


def he_like(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth pink-purple texture: tissue to the crop samplers (not glass)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(165, 35, (n, size // 8, size // 8, 3))
    return [np.clip(np.kron(b, np.ones((8, 8, 1))), 0, 255).astype(np.uint8) for b in base]


def sampler_and_val(seed: int = 0):
    from slidepress.training.samplers import CropSampler

    imgs = he_like(3, 128)
    return CropSampler([(imgs, 1.0)], seed=seed), CropSampler([(imgs, 1.0)], seed=99).batch(2)


# -- one tiny run per family: run(folder, resume, stop_after) -------------------------------


def nic(folder: Path, resume: bool, stop_after: int | None, ema: float = 0.0) -> None:
    from slidepress.encoders.nic import NICConfig
    from slidepress.training.augment import PatchAugmenter
    from slidepress.training.nic.data import PatchSource
    from slidepress.training.nic.feeds import ImageFeed
    from slidepress.training.nic.trainer import TrainSettings, train_encoder

    images = np.stack(he_like(10, 24))
    train, val = PatchSource("t", images[:8]), PatchSource("v", images[8:])
    feed = ImageFeed(train, val, PatchAugmenter(16), batch=4, steps=1)
    config = NICConfig("vae", patch_size=16, mpp=1.0, code_size=4, lr=1e-3,
                       options={"widths": [8, 8], "dense": 16})  # fmt: skip
    settings = TrainSettings(epochs=STEPS, batch_size=4, steps_per_epoch=1, patience=99,
                             device="cpu", ema=ema)  # fmt: skip
    train_encoder(config, feed, folder, settings, resume=resume, stop_after=stop_after,
                  log=lambda _: None)  # fmt: skip


def nic_ema(folder: Path, resume: bool, stop_after: int | None) -> None:
    nic(folder, resume, stop_after, ema=0.5)


def learned_codec(folder: Path, resume: bool, stop_after: int | None) -> None:
    from slidepress.codecs.learned.model import CodecConfig
    from slidepress.training.learned_codec import TrainSettings, train_codec

    cfg = CodecConfig(n=16, m=16, z=8, hyper=16, latent_stride=8, synthesis=(16,),
                      lambdas=(0.01, 0.1))  # fmt: skip
    s = TrainSettings(steps=STEPS, batch=2, checkpoint_every=1, threads=1)
    sampler, val = sampler_and_val()
    train_codec(cfg, sampler, val, folder, s, resume, stop_after=stop_after, log=lambda _: None)


@pytest.fixture(scope="module")
def pathae_bundle(tmp_path_factory) -> Path:
    """A tiny PathAE bundle (quantizers fitted on a few crops)."""
    from slidepress.codecs.autoencoder.loading import export_pathae
    from slidepress.codecs.autoencoder.model import AEConfig, PathAENet

    torch.manual_seed(0)
    arch = AEConfig(channels=(8, 8, 8), latent=4)
    crops = sampler_and_val()[0].batch(8)[:, :, :32, :32].contiguous()
    out = tmp_path_factory.mktemp("bundle") / "tiny-pathae"
    export_pathae(PathAENet(arch).state_dict(), arch.to_dict(), crops, crops[:2], out, {},
                  name="tiny-pathae")  # fmt: skip
    return out


def ae_decoder(bundle: Path) -> Callable[[Path, bool, int | None], None]:
    def run(folder: Path, resume: bool, stop_after: int | None) -> None:
        from slidepress.training.ae_decoder import FinetuneSettings, finetune_decoder

        s = FinetuneSettings(steps=STEPS, batch=2, lr=2e-3, quality=1, perceptual="none",
                             gan_weight=0.05, checkpoint_every=2, val_crops=2)  # fmt: skip
        sampler, val = sampler_and_val()
        finetune_decoder(bundle, sampler, val, folder, s, resume=resume, stop_after=stop_after,
                         log=lambda _: None)  # fmt: skip

    return run


def pathae(folder: Path, resume: bool, stop_after: int | None) -> None:
    from slidepress.codecs.autoencoder.model import AEConfig
    from slidepress.training.pathae import PathAESettings, train_pathae

    s = PathAESettings(steps=STEPS, minutes=None, batch=2, log_every=1, threads=1)
    sampler, val = sampler_and_val()
    arch = AEConfig(channels=(8, 8, 8), latent=4)
    train_pathae(sampler, val, folder, s, resume=resume, arch=arch, stop_after=stop_after,
                 log=lambda _: None)  # fmt: skip


@pytest.fixture(scope="module")
def pcam_like(tmp_path_factory) -> Path:
    """An ImageFolder with train/ and valid/ splits of two classes of 32 px images."""
    root = tmp_path_factory.mktemp("pcam")
    for split, n in (("train", 6), ("valid", 3)):
        for label in (0, 1):
            (root / split / str(label)).mkdir(parents=True)
            for i, a in enumerate(he_like(n, 32, seed=10 * label + (split == "valid"))):
                a = a if label == 0 else (a * 0.7).astype(np.uint8)
                Image.fromarray(a).save(root / split / str(label) / f"{i}.png")
    return root


def featsim(data: Path) -> Callable[[Path, bool, int | None], None]:
    def run(folder: Path, resume: bool, stop_after: int | None) -> None:
        from slidepress.training.featsim import FeatsimSettings, train_featsim

        s = FeatsimSettings(data=data, width=8, epochs=STEPS, steps_per_epoch=1, batch=4)
        train_featsim(s, folder, resume=resume, stop_after=stop_after, log=lambda _: None)

    return run


FAMILIES = ["nic", "nic_ema", "learned_codec", "ae_decoder", "pathae", "featsim"]


@pytest.fixture
def family(request, pathae_bundle, pcam_like):
    return {
        "nic": nic,
        "nic_ema": nic_ema,
        "learned_codec": learned_codec,
        "ae_decoder": ae_decoder(pathae_bundle),
        "pathae": pathae,
        "featsim": featsim(pcam_like),
    }[request.param]


def leaves(obj, prefix: str = "") -> dict[str, object]:
    """Tensors and numbers of nested state dicts, by path."""
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in leaves(val, f"{prefix}/{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, val in enumerate(obj) for k, v in leaves(val, f"{prefix}/{i}").items()}
    return {prefix: obj}


def assert_same_state(a: dict, b: dict) -> None:
    la, lb = leaves(a), leaves(b)
    assert la.keys() == lb.keys()
    for k, va in la.items():
        if isinstance(va, torch.Tensor):
            torch.testing.assert_close(va, lb[k], rtol=0, atol=1e-6, msg=k)
        else:
            assert va == lb[k] or (va != va and lb[k] != lb[k]), k  # NaN == NaN here


def log_rows(folder: Path) -> list[dict]:
    with open(folder / "log.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("family", FAMILIES, indirect=True)
def test_three_steps_and_three_resumed_equal_six_steps(family, tmp_path):
    family(tmp_path / "straight", False, None)
    family(tmp_path / "resumed", False, PAUSE)
    paused = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert paused["step"] == PAUSE and len(paused["log"]["rows"]) == PAUSE
    family(tmp_path / "resumed", True, None)  # as a new process would: everything rebuilt
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert a["step"] == b["step"] == STEPS
    for part in ("models", "optimizers", "schedulers", "state"):
        assert_same_state(a[part], b[part])
    rows_a, rows_b = log_rows(tmp_path / "straight"), log_rows(tmp_path / "resumed")
    assert len(rows_a) == len(rows_b) == STEPS
    assert [r["step"] for r in rows_b] == [str(i) for i in range(1, STEPS + 1)]
    assert (tmp_path / "resumed" / "curves.png").stat().st_size > 0
    # a finished run is not started over, and resuming it trains nothing more
    with pytest.raises(UsageError, match="already holds a run; pass --resume"):
        family(tmp_path / "straight", False, None)


def test_run_folder_and_checkpoint_refuse_what_they_cannot_continue(tmp_path):
    from slidepress.training.loop import Trainer, fit
    from slidepress.training.run import Budget, Run

    class Line(Trainer):
        family = "line"

        def __init__(self, width: int = 2):
            self.net = torch.nn.Linear(width, 1)
            self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1)
            self.models, self.optimizers = {"net": self.net}, {"sgd": self.opt}

        def config(self):
            return {"width": self.net.in_features}

        def step(self, step, progress):
            loss = self.net(torch.ones(1, self.net.in_features)).pow(2).sum()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            return {"loss": loss.item()}

    with pytest.raises(UsageError, match="nothing to resume"):
        Run(tmp_path / "new", resume=True)
    fit(Line(), Run(tmp_path / "run"), Budget(2), log=lambda _: None)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["family"] == "line"
    with pytest.raises(UsageError, match="other model settings"):
        fit(Line(width=3), Run(tmp_path / "run", resume=True), Budget(4), log=lambda _: None)
    (tmp_path / "old").mkdir()
    torch.save({"model": {}, "opt": {}, "step": 5}, tmp_path / "old" / "checkpoint.pt")
    with pytest.raises(UsageError, match="not a slidepress-training-checkpoint/1 checkpoint"):
        fit(Line(), Run(tmp_path / "old", resume=True), Budget(4), log=lambda _: None)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        Run(tmp_path / "file")


def test_nic_weight_average_is_what_is_kept(tmp_path):
    """With `ema`, the average (not the live weights) is probed, chosen and saved, and it is
    the exponential moving average of the live weights step by step."""
    from safetensors.torch import load_file

    from slidepress.encoders.nic import NICConfig, build_method
    from slidepress.training.run import prepare_torch

    nic(tmp_path / "run", False, 1, ema=0.5)  # one step
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    live, avg = ck["models"]["method"], ck["state"]["ema"]
    prepare_torch(0)  # the trainer's seed: the same initial weights
    config = NICConfig("vae", patch_size=16, mpp=1.0, code_size=4, lr=1e-3,
                       options={"widths": [8, 8], "dense": 16})  # fmt: skip
    start = build_method(config).state_dict()
    params = {n for n, _ in build_method(config).named_parameters()}
    moved = 0
    for name in params:
        torch.testing.assert_close(avg[name], 0.5 * start[name] + 0.5 * live[name])
        moved += int(not torch.equal(avg[name], live[name]))
    assert moved > 0  # the step changed weights, so the average differs from the live ones
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    for name in params:
        torch.testing.assert_close(saved[name], avg[name])
