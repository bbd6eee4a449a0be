"""Assemble the data a NIC method needs from command-line style inputs, then train it.

Datasets (documented in the run's config.json and the model cards):
- images (VAE, BiGAN): every `--data` folder pooled, labels ignored.
- tasks (multitask, supervised): one task per `--data` folder (its class folders are the
  classes); multitask adds a tissue-vs-background task cut from `--slides` with the tissue mask.
- pairs (contrastive): locations on the tissue of `--slides`; `--data` images serve as
  "another image" partners.
Folders with `train/` and `valid/` use them; others are split (seeded, stratified).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..encoders.nic import METHODS, NICConfig
from ..errors import UsageError
from ..imagefolder import list_image_folder
from .augment import PatchAugmenter
from .data import (
    DataSpec,
    PairSampler,
    PatchSource,
    context_size,
    holdout,
    load_canvas,
    load_image_folder,
    splits_of,
    tissue_task,
)
from .feeds import Feed, ImageFeed, PairFeed, TaskFeed
from .loop import TrainSettings, train_encoder

Progress = Callable[[str, int], Callable[[int], None]]


def _load_split(
    spec: DataSpec,
    config: NICConfig,
    *,
    limit: int | None,
    val_limit: int | None,
    val_fraction: float,
    seed: int,
    progress: Progress | None,
) -> tuple[PatchSource, PatchSource]:
    train_root, val_root = splits_of(spec.path)

    def load(root: Path, lim: int | None, tag: str) -> PatchSource:
        files, labels, _ = list_image_folder(root)
        n = (
            len(files)
            if not lim
            else int(sum(min(lim, (labels == i).sum()) for i in np.unique(labels)))
        )
        advance = progress(f"loading {spec.name}/{tag}", n) if progress else None
        return load_image_folder(
            root,
            spec.mpp,
            config.mpp,
            config.patch_size,
            name=spec.name,
            limit_per_class=lim,
            seed=seed,
            progress=advance,
        )

    if val_root is not None:
        return load(train_root, limit, "train"), load(val_root, val_limit, "valid")
    return holdout(load(train_root, limit, "all"), val_fraction, seed)


def _pool(sources: list[PatchSource], name: str) -> PatchSource:
    side = min(s.images.shape[1] for s in sources)

    def centre(a: np.ndarray) -> np.ndarray:
        o = (a.shape[1] - side) // 2
        return a[:, o : o + side, o : o + side]

    return PatchSource(
        name,
        np.concatenate([centre(s.images) for s in sources]),
        None,
        [],
        "; ".join(s.origin for s in sources),
    )


def build_feed(
    config: NICConfig,
    *,
    data: list[DataSpec],
    slides: list[Path],
    settings: TrainSettings,
    slide_mpp: float | None = None,
    limit_per_class: int | None = None,
    val_limit_per_class: int | None = 256,
    val_fraction: float = 0.15,
    tissue_per_class: int = 2000,
    val_pairs: int = 512,
    augment_strength: float = 1.0,
    progress: Progress | None = None,
) -> Feed:
    """Load the data `config.method` needs; fills `config.options["tasks"]` for task methods."""
    kind = METHODS[config.method].data_kind
    device = settings.device or "cpu"
    aug = PatchAugmenter(config.patch_size, augment_strength, device=device)
    load = dict(
        limit=limit_per_class,
        val_limit=val_limit_per_class,
        val_fraction=val_fraction,
        seed=settings.seed,
        progress=progress,
    )
    if kind == "images":
        if not data:
            raise UsageError(f"{config.method}: give at least one --data DIR@MPP")
        parts = [_load_split(d, config, **load) for d in data]
        train = _pool([p[0] for p in parts], "train")
        val = _pool([p[1] for p in parts], "val")
        return ImageFeed(train, val, aug, settings.batch_size, settings.steps_per_epoch)
    if kind == "tasks":
        if config.method == "supervised" and (len(data) != 1 or slides):
            raise UsageError("supervised: exactly one --data folder (its classes are the task)")
        train, val = {}, {}
        for d in data:
            if d.name in train:
                raise UsageError(f"two tasks named {d.name!r}; name them NAME=DIR@MPP")
            train[d.name], val[d.name] = _load_split(d, config, **load)
        if slides:
            canvases = [load_canvas(s, config.mpp, slide_mpp) for s in slides]
            t = tissue_task(
                canvases, context_size(config.patch_size), tissue_per_class, settings.seed
            )
            train["tissue"], val["tissue"] = holdout(t, val_fraction, settings.seed)
        if not train:
            raise UsageError(f"{config.method}: give --data folders (and/or --slides)")
        config.options["tasks"] = [{"name": n, "classes": s.classes} for n, s in train.items()]
        return TaskFeed(train, val, aug, settings.batch_size, settings.steps_per_epoch)
    if kind == "pairs":
        if not slides:
            raise UsageError("contrastive: give --slides to sample location pairs from")
        canvases = [load_canvas(s, config.mpp, slide_mpp) for s in slides]
        others = None
        if data:
            others = _pool([_load_split(d, config, **load)[0] for d in data], "others")
        sampler = PairSampler(canvases, others, context_size(config.patch_size), config.patch_size)
        return PairFeed(
            sampler, aug, settings.batch_size, settings.steps_per_epoch, val_pairs, settings.seed
        )
    raise UsageError(f"unknown data kind {kind!r}")


def train_from_args(
    config: NICConfig,
    out_dir: Path,
    settings: TrainSettings,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    log: Callable[[str], None] = print,
    command: str | None = None,
    **data_args,
) -> dict:
    feed = build_feed(config, settings=settings, progress=progress, **data_args)

    def on_epoch(epoch: int, steps: int):
        return progress(f"epoch {epoch}/{settings.epochs}", steps) if progress else None

    return train_encoder(
        config,
        feed,
        out_dir,
        settings,
        resume=resume,
        on_epoch_start=on_epoch,
        log=log,
        extra={"command": command},
    )
