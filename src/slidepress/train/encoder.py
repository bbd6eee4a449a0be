"""Assemble the data a NIC method needs from command-line style inputs, then train it.

Datasets (documented in the run's config.json and the model cards):
- images (VAE, BiGAN): every `--data` folder pooled, labels ignored.
- tasks (multitask, supervised): one task per `--data` folder (its class folders are the
  classes); multitask adds a tissue-vs-background task cut from `--slides` with the tissue mask.
- pairs (contrastive): locations on the tissue of `--slides`; `--data` images serve as
  "another image" partners.
Folders with `train/` and `valid/` use them; others are split (seeded, stratified).

The method says which of these it needs (`data_kind`) and refuses inputs it cannot use
(`check_inputs`); the feed (`train.feeds`) loads them. Nothing here knows a method by name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..encoders.nic import METHODS, NICConfig
from ..progress import ProgressStart
from .augment import PatchAugmenter
from .data import FeedInputs
from .feeds import FEEDS, Feed
from .loop import TrainSettings, train_encoder


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
