"""What the training loop pulls batches from, one feed per `NICMethod.data_kind` (`FEEDS`).

Each feed builds itself from the command-line inputs (`Feed.build`), saying what it needs
(images: `--data`; pairs: `--slides`; tasks: either). Feeds turn uint8 contexts into
augmented [-1, 1] tensors. Training batches are drawn with the epoch's generator (so a
resumed run continues exactly); validation batches are built once, unaugmented (pairs:
augmented under a fixed seed, else "same" would be trivial).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...encoders.nic import NICConfig
from ...errors import UsageError
from ...progress import ProgressStart
from ...registry import Registry
from ..augment import PatchAugmenter
from .data import (
    DataSpec,
    FeedInputs,
    PairSampler,
    PatchSource,
    context_size,
    holdout,
    pool,
    slide_contexts,
    tissue_task,
)

if TYPE_CHECKING:
    from .trainer import TrainSettings


class Feed(ABC):
    steps_per_epoch: int

    @classmethod
    @abstractmethod
    def build(
        cls,
        config: NICConfig,
        inputs: FeedInputs,
        aug: PatchAugmenter,
        settings: TrainSettings,
        progress: ProgressStart | None = None,
    ) -> Feed:
        """Load what this feed needs from `inputs` (UsageError when it is not there)."""

    def method_options(self) -> dict[str, Any]:
        """Method options the data decides (e.g. the task list); merged into the config."""
        return {}

    @abstractmethod
    def train_batches(self, rng: np.random.Generator) -> Iterator[Any]: ...

    @abstractmethod
    def val_batches(self) -> list[Any]: ...

    def preview_images(self, n: int = 16) -> torch.Tensor | None:
        return None

    @abstractmethod
    def describe(self) -> dict: ...


def _split(
    inputs: FeedInputs,
    spec: DataSpec,
    config: NICConfig,
    settings: TrainSettings,
    progress: ProgressStart | None,
) -> tuple[PatchSource, PatchSource]:
    return inputs.split(spec, config.patch_size, config.mpp, settings.seed, progress)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class ImageFeed(Feed):
    """Unlabelled images (VAE, BiGAN)."""

    def __init__(
        self,
        train: PatchSource,
        val: PatchSource,
        aug: PatchAugmenter,
        batch: int,
        steps: int | None,
    ):
        self.train, self.val, self.aug, self.batch = train, val, aug, batch
        self.steps_per_epoch = steps or max(1, len(train) // batch)
        self._val = [aug(val.images[s], train=False) for s in _chunks(len(val), 256)]

    @classmethod
    def build(cls, config, inputs, aug, settings, progress=None):
        if not inputs.data:
            raise UsageError(f"{config.method}: give at least one --data DIR@MPP")
        parts = [_split(inputs, d, config, settings, progress) for d in inputs.data]
        trains, vals = [p[0] for p in parts], [p[1] for p in parts]
        if inputs.slides and inputs.slide_contexts:  # tissue contexts from every slide
            size = context_size(config.patch_size)
            ctx = slide_contexts(inputs.canvases(config.mpp), size, inputs.slide_stride,
                                 inputs.slide_min_tissue)  # fmt: skip
            t, v = holdout(ctx, inputs.val_fraction, settings.seed)
            trains.append(t)
            vals.append(v)
        pad = inputs.slide_contexts  # the issue-24 feeds: keep every context's full size
        train, val = pool(trains, "train", pad=pad), pool(vals, "val", pad=pad)
        return cls(train, val, aug, settings.batch_size, settings.steps_per_epoch)

    def train_batches(self, rng):
        order = np.concatenate(
            [
                rng.permutation(len(self.train))
                for _ in range(-(-self.steps_per_epoch * self.batch // len(self.train)))
            ]
        )
        for k in range(self.steps_per_epoch):
            idx = np.sort(order[k * self.batch : (k + 1) * self.batch])
            yield self._batch(idx)

    def _batch(self, idx: np.ndarray) -> Any:
        return self.aug(self.train.images[idx], train=True)

    def val_batches(self):
        return self._val

    def preview_images(self, n=16):
        return self.aug(self.val.images[:n], train=False)

    def describe(self):
        return {"train": self.train.describe(), "val": self.val.describe()}


class ViewFeed(ImageFeed):
    """Two independently augmented views of each image (SimCLR-style methods). Validation
    views are augmented under a fixed seed (unaugmented twins would make the task trivial)."""

    def __init__(self, train, val, aug, batch, steps):
        super().__init__(train, val, aug, batch, steps)
        with torch.random.fork_rng():
            torch.manual_seed(10**6)
            self._val = [(aug(val.images[s], train=True), aug(val.images[s], train=True))
                         for s in _chunks(len(val), 256)]  # fmt: skip

    def _batch(self, idx: np.ndarray) -> Any:
        x = self.train.images[idx]
        return self.aug(x, train=True), self.aug(x, train=True)


class TaskFeed(Feed):
    """Labelled tasks (multitask, supervised): every batch holds an equal share of each task."""

    def __init__(
        self,
        train: dict[str, PatchSource],
        val: dict[str, PatchSource],
        aug: PatchAugmenter,
        batch: int,
        steps: int | None,
    ):
        self.train, self.val, self.aug = train, val, aug
        self.per_task = max(2, batch // len(train))
        largest = max(len(s) for s in train.values())
        self.steps_per_epoch = steps or max(1, largest // self.per_task)
        # every validation batch holds 1/K of every task, so batch means are task means
        k = max(1, -(-max(len(s) for s in val.values()) // 256))
        self._val = []
        for i in range(k):
            b = {}
            for name, s in val.items():
                part = np.array_split(np.arange(len(s)), k)[i]
                if len(part):
                    b[name] = (aug(s.images[part], train=False), torch.from_numpy(s.labels[part]))
            self._val.append(b)

    @classmethod
    def build(cls, config, inputs, aug, settings, progress=None):
        train, val = {}, {}
        for d in inputs.data:
            if d.name in train:
                raise UsageError(f"two tasks named {d.name!r}; name them NAME=DIR@MPP")
            train[d.name], val[d.name] = _split(inputs, d, config, settings, progress)
        if inputs.slides:
            size = context_size(config.patch_size)
            t = tissue_task(
                inputs.canvases(config.mpp), size, inputs.tissue_per_class, settings.seed
            )
            train["tissue"], val["tissue"] = holdout(t, inputs.val_fraction, settings.seed)
        if not train:
            raise UsageError(f"{config.method}: give --data folders (and/or --slides)")
        return cls(train, val, aug, settings.batch_size, settings.steps_per_epoch)

    def method_options(self):
        return {"tasks": [{"name": n, "classes": s.classes} for n, s in self.train.items()]}

    def train_batches(self, rng):
        for _ in range(self.steps_per_epoch):
            b = {}
            for name, s in self.train.items():
                # sampling with replacement lets small tasks (Kather) keep their share
                idx = np.sort(rng.integers(0, len(s), self.per_task))
                b[name] = (self.aug(s.images[idx], train=True), torch.from_numpy(s.labels[idx]))
            yield b

    def val_batches(self):
        return self._val

    def describe(self):
        return {
            "tasks": {
                n: {"classes": s.classes, "train": s.describe(), "val": self.val[n].describe()}
                for n, s in self.train.items()
            },
            "per_task_batch": self.per_task,
        }


class PairFeed(Feed):
    """Contrastive pairs from slides (and another-image pool)."""

    def __init__(
        self,
        sampler: PairSampler,
        aug: PatchAugmenter,
        batch: int,
        steps: int | None,
        val_pairs: int,
        seed: int,
    ):
        self.sampler, self.aug = sampler, aug
        self.pairs = max(2, batch // 2)
        self.steps_per_epoch = steps or 100
        rng = np.random.default_rng([seed, 10**6])
        with torch.random.fork_rng():
            torch.manual_seed(seed + 10**6)
            self._val = []
            for s in _chunks(val_pairs, 128):
                a, b, same = sampler.sample(s.stop - s.start, rng)
                self._val.append(self._views(a, b, same))

    @classmethod
    def build(cls, config, inputs, aug, settings, progress=None):
        if not inputs.slides:
            raise UsageError(f"{config.method}: give --slides to sample location pairs from")
        canvases = inputs.canvases(config.mpp)
        others = None
        if inputs.data:
            splits = [_split(inputs, d, config, settings, progress) for d in inputs.data]
            # padded, not cropped, to the largest context: partners must match the slide's
            others = pool([train for train, _ in splits], "others", pad=True)
        sampler = PairSampler(canvases, others, context_size(config.patch_size), config.patch_size,
                              inputs.pair_mix, inputs.pair_other_anchor)  # fmt: skip
        return cls(sampler, aug, settings.batch_size, settings.steps_per_epoch,
                   inputs.val_pairs, settings.seed)  # fmt: skip

    def _views(self, a, b, same):
        return self.aug(a, train=True), self.aug(b, train=True), torch.from_numpy(same)

    def train_batches(self, rng):
        for _ in range(self.steps_per_epoch):
            yield self._views(*self.sampler.sample(self.pairs, rng))

    def val_batches(self):
        return self._val

    def describe(self):
        s = self.sampler
        return {
            "slides": [c.name for c in s.canvases],
            "tissue_locations": len(s.anchors),
            "other_images": None if s.others is None else s.others.describe(),
            "pairs_per_batch": self.pairs,
            **({} if s.mix is None else {"mix": s.mix, "other_anchor": s.other_anchor}),
        }


FEEDS: Registry[type[Feed]] = Registry("data kind", UsageError)
FEEDS.add("images", ImageFeed, summary="unlabelled images pooled from every --data folder")
FEEDS.add("tasks", TaskFeed, summary="one labelled task per --data folder (+ tissue from --slides)")
FEEDS.add("pairs", PairFeed, summary="same/different location pairs from --slides")
FEEDS.add("views", ViewFeed, summary="two augmented views of every image of the --data folders")
