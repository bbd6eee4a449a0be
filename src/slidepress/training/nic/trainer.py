"""Training NIC encoders: the family's trainer on the generic loop, with validation every
epoch, plateau LR decay, early stopping and the best weights kept.

Run folder (`training.run`): config.json (self-describing: what `nic:DIR` loads) +
model.safetensors (best weights), checkpoint.pt, log.csv (one row per epoch), curves.png,
preview.png (VAE/BiGAN).

The method says which data it needs (`data_kind`) and refuses inputs it cannot use
(`check_inputs`); the feed (`training.nic.feeds`) loads them. Nothing here knows a method by
name.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import __version__
from ...encoders.nic import METHODS, NORMALIZATION, NICConfig, NICMethod, build_method
from ...progress import Advance, ProgressStart
from ...store.atomic import atomic_path
from ...viz import save_patch_rows
from ..augment import PatchAugmenter
from ..loop import Progress, Trainer, fit, mean_of
from ..run import Budget, Run, choose_device, prepare_torch
from .data import FeedInputs
from .feeds import FEEDS, Feed

FORMAT = "slidepress-nic-encoder/1"


@dataclass
class TrainSettings:
    epochs: int = 10
    batch_size: int = 64
    steps_per_epoch: int | None = None  # None: one pass over the largest training set
    patience: int = 4  # epochs without validation improvement before stopping
    lr_patience: int = 1  # epochs without improvement before halving the LR
    seed: int = 0
    device: str | None = None
    # what picks the best epoch and drives early stopping: "loss" (the validation loss) or
    # "probe_auc" (the linear-probe AUC on the validation split, needs a `probe`)
    select: str = "loss"
    # decay of an exponential moving average of the weights (0: off). With it the probe, the
    # best-epoch choice and the saved weights use the average: adversarial and contrastive
    # training swings from epoch to epoch, and picking the best of many noisy epochs
    # overstates it (issue 24: select -> held-out drops of 0.02-0.03)
    ema: float = 0.0


def to_device(batch: Any, device: str) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def save_weights(method: NICMethod, path: Path, fp16: bool = False) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in method.state_dict().items()}
    if fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT, "method": method.name})


def run_config(method: NICMethod, feed: Feed, settings: TrainSettings, extra: dict) -> dict:
    """The self-describing `config.json` of a run (and of shipped weights)."""
    cfg = method.config
    return {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "encoder": {
            "patch_size": cfg.patch_size,
            "mpp": cfg.mpp,
            "dim": cfg.code_size,
            "normalization": NORMALIZATION,
        },
        "data": feed.describe(),
        "settings": asdict(settings),
        "software": {
            "slidepress": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        **extra,
    }


class NICTrainer(Trainer):
    """One NIC method on a feed: an epoch is a period (its data and augmentation seeded by
    the epoch, so a resumed run draws what an uninterrupted one would)."""

    family = "nic-encoder"

    def __init__(
        self,
        config: NICConfig,
        feed: Feed,
        settings: TrainSettings,
        run: Run,
        device: str,
        *,
        extra: dict | None = None,
        on_epoch_start: Callable[[int, int], Advance | None] | None = None,
        probe: Callable[[NICMethod], dict[str, float]] | None = None,
    ):
        self.cfg, self.feed, self.settings, self.run, self.device = (
            config, feed, settings, run, device,
        )  # fmt: skip
        if settings.select not in ("loss", "probe_auc") or (
            settings.select == "probe_auc" and probe is None
        ):
            raise ValueError(f"select={settings.select!r}: 'loss', or 'probe_auc' with a probe")
        self.probe = probe
        self.extra = dict(extra or {})
        self.on_epoch_start = on_epoch_start
        self.method = build_method(config).to(device)
        self.opts = self.method.make_optimizers()
        self.scheds = [
            torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=settings.lr_patience)
            for o in self.opts
        ]
        self.models = {"method": self.method}
        self.optimizers = {str(i): o for i, o in enumerate(self.opts)}
        self.schedulers = {str(i): s for i, s in enumerate(self.scheds)}
        self.period = feed.steps_per_epoch
        self.best, self.best_row, self.bad = math.inf, {}, 0
        self.ema: NICMethod | None = None
        if settings.ema:
            import copy

            self.ema = copy.deepcopy(self.method).eval().requires_grad_(False)
        self._batches: Any = None
        self._advance: Advance | None = None

    def config(self) -> dict:
        return self.cfg.to_dict()

    def step(self, step: int, progress: float) -> dict[str, float]:
        if step % self.period == 0:
            epoch = step // self.period + 1
            seed = self.settings.seed
            torch.manual_seed(seed * 100_003 + epoch)
            self._batches = iter(self.feed.train_batches(np.random.default_rng([seed, epoch])))
            self._advance = self.on_epoch_start(epoch, self.period) if self.on_epoch_start else None
            self.method.train()
        self.method.progress = progress
        logs = self.method.training_step(to_device(next(self._batches), self.device), self.opts)
        if self.ema is not None:
            self._update_ema()
        if self._advance:
            self._advance(1)
        return logs

    @torch.no_grad()
    def _update_ema(self) -> None:
        w = 1.0 - float(self.settings.ema)
        for a, b in zip(self.ema.parameters(), self.method.parameters(), strict=True):
            a.lerp_(b, w)
        for a, b in zip(self.ema.buffers(), self.method.buffers(), strict=True):
            a.copy_(b)  # running statistics, counters: the live ones

    def kept(self) -> NICMethod:
        """The weights that are probed, chosen and saved: the average when there is one."""
        return self.ema if self.ema is not None else self.method

    def row(self, step: int, means: dict[str, float]) -> dict[str, Any]:
        epoch = step // self.period
        self.method.eval()
        val = mean_of([self.method.validation_step(to_device(b, self.device))
                       for b in self.feed.val_batches()])  # fmt: skip
        if self.probe is not None:
            val.update(self.probe(self.kept()))
            if self.ema is not None:  # the live weights' probe too, to see what averaging buys
                val["probe_auc_live"] = self.probe(self.method)["probe_auc"]
        for sch in self.scheds:
            sch.step(val["loss"])
        row = {
            "epoch": epoch,
            "lr": self.opts[-1].param_groups[0]["lr"],
            **{f"train_{k}": v for k, v in means.items()},
            **{f"val_{k}": v for k, v in val.items()},
        }
        score = val["loss"] if self.settings.select == "loss" else -val["probe_auc"]
        if score < self.best:
            self.best, self.bad = score, 0
            self.best_row = {
                "epoch": epoch,
                **{k: v for k, v in row.items() if k.startswith("val_")},
            }
            save_weights(self.kept(), self.run.path("model.safetensors"))
        else:
            self.bad += 1
        return row

    def finished(self) -> bool:
        return self.bad >= self.settings.patience

    def checkpointed(self, progress: Progress) -> None:
        self.run.write_config(self.final_config(progress))

    def final_config(self, progress: Progress) -> dict:
        summary = {
            "epochs_run": progress.step // self.period,
            "best_epoch": self.best_row.get("epoch", 0),
            "best_val": {k: v for k, v in self.best_row.items() if k.startswith("val_")},
            "seconds": round(progress.seconds, 1),
            "stopped_early": progress.stopped == "finished",
        }
        return run_config(
            self.method, self.feed, self.settings, {**self.extra, "training": summary}
        )

    def state_dict(self) -> dict:
        state = {"best": self.best, "best_row": self.best_row, "bad": self.bad}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_row, self.bad = state["best"], state["best_row"], state["bad"]
        if self.ema is not None:  # a run saved without an average starts it from its weights
            self.ema.load_state_dict(state.get("ema") or self.method.state_dict())


def train_encoder(
    config: NICConfig,
    feed: Feed,
    out_dir: Path,
    settings: TrainSettings,
    *,
    resume: bool = False,
    extra: dict | None = None,
    on_epoch_start: Callable[[int, int], Advance | None] | None = None,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
    probe: Callable[[NICMethod], dict[str, float]] | None = None,
    minutes: float | None = None,
) -> dict:
    """Train `config.method` on `feed` into the run folder `out_dir`; returns the final
    `config.json` content. `stop_after` (steps) pauses the run for a later `resume`;
    `probe` adds validation metrics each epoch (see `TrainSettings.select`); `minutes` caps
    the training time (all sessions together)."""
    run = Run(out_dir, resume=resume)
    device = choose_device(settings.device)
    prepare_torch(settings.seed)
    trainer = NICTrainer(config, feed, settings, run, device, extra=extra,
                         on_epoch_start=on_epoch_start, probe=probe)  # fmt: skip
    budget = Budget(settings.epochs * trainer.period, minutes)
    p = fit(trainer, run, budget, log_every=trainer.period, stop_after=stop_after, log=log)
    if p.stopped == "finished":
        log(f"early stop: no validation improvement for {settings.patience} epochs")

    # final artefacts from the best weights
    from safetensors.torch import load_file

    method = trainer.method
    method.load_state_dict(load_file(str(run.path("model.safetensors")), device=device))
    method.eval()
    images = feed.preview_images()
    if images is not None:
        panels = method.preview(images.to(device))
        if panels:
            save_patch_rows(panels, run.path("preview.png"))
    final = trainer.final_config(p)
    run.write_config(final)
    return final


def build_feed(
    config: NICConfig,
    inputs: FeedInputs,
    settings: TrainSettings,
    *,
    augment_strength: float = 1.0,
    progress: ProgressStart | None = None,
) -> Feed:
    """Load the data `config.method` needs; options the data decides (the task list of task
    methods) are written into `config.options`."""
    method = METHODS.get(config.method)
    method.check_options(config.options)
    method.check_inputs(len(inputs.data), len(inputs.slides))
    aug = PatchAugmenter(config.patch_size, augment_strength, device=settings.device or "cpu")
    feed = FEEDS.get(method.data_kind).build(config, inputs, aug, settings, progress)
    config.options.update(feed.method_options())
    return feed


def train_from_args(
    config: NICConfig,
    out_dir: Path,
    settings: TrainSettings,
    inputs: FeedInputs,
    *,
    augment_strength: float = 1.0,
    resume: bool = False,
    progress: ProgressStart | None = None,
    log: Callable[[str], None] = print,
    command: str | None = None,
) -> dict:
    feed = build_feed(
        config, inputs, settings, augment_strength=augment_strength, progress=progress
    )

    def on_epoch(epoch: int, steps: int):
        return progress(f"epoch {epoch}/{settings.epochs}", steps) if progress else None

    return train_encoder(config, feed, out_dir, settings, resume=resume, on_epoch_start=on_epoch,
                         log=log, extra={"command": command})  # fmt: skip
