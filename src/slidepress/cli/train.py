"""`slidepress train ...`: NIC patch encoders (here) and slide-level models (cli/slidemodel.py)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..encoders.nic import DEFAULT_LR, METHODS, default_lr
from .common import console, expand_slides, guarded, progress_bars

# help texts from the method registry (names, summaries, learning rates: no torch import)
_METHOD_HELP = "; ".join(f"{n}: {METHODS.entry(n).summary}" for n in METHODS)
_LR_HELP = ", ".join(f"{n} {default_lr(n):g}" for n in METHODS if default_lr(n) != DEFAULT_LR)

train_app = typer.Typer(
    help="Train models: NIC patch encoders and slide-level models on grids.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@train_app.callback()
def _train() -> None:
    """Training commands; every run folder is self-describing (config.json, log.csv, PNGs)."""


def _parse_options(items: list[str]) -> dict:
    from ..errors import UsageError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--option {item!r}: expected KEY=VALUE (VALUE as JSON)")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@train_app.command("encoder")
def encoder_cmd(
    method: Annotated[str, typer.Option(help=f"Training method. {_METHOD_HELP}.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Run folder to create.")],
    data: Annotated[
        list[str] | None,
        typer.Option(
            help="Patch folder (ImageFolder) as [NAME=]DIR@MPP; repeat for several. "
            "DIR/train + DIR/valid are used when present."
        ),
    ] = None,
    slides: Annotated[
        list[str] | None,
        typer.Option(help="Slides for contrastive pairs / the multitask tissue task; repeat."),
    ] = None,
    patch_size: Annotated[int, typer.Option(help="Patch side P in px.")] = 128,
    mpp: Annotated[float, typer.Option(help="Resolution the encoder works at (um/px).")] = 0.5,
    code_size: Annotated[int, typer.Option(help="Embedding size C.")] = 128,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Patches per batch (pairs: 2 per pair).")] = 64,
    steps_per_epoch: Annotated[
        int | None, typer.Option(help="Batches per epoch (default: one pass over the data).")
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(help=f"Adam LR (default: the method's, {DEFAULT_LR:g}; {_LR_HELP})."),
    ] = None,
    patience: Annotated[int, typer.Option(help="Early stop after N epochs w/o improvement.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed for data order, augmentation, init.")] = 0,
    limit_per_class: Annotated[
        int | None, typer.Option(help="Use at most N training images per class.")
    ] = None,
    val_limit_per_class: Annotated[int, typer.Option(help="Validation images per class.")] = 256,
    mpp_override: Annotated[
        float | None,
        typer.Option(help="Level-0 um/px for --slides, replacing the files' (e.g. none or bad)."),
    ] = None,
    augment: Annotated[float, typer.Option(help="Photometric augmentation strength.")] = 1.0,
    option: Annotated[
        list[str] | None, typer.Option(help="Method option KEY=JSON, e.g. gamma=5e-5; repeat.")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 (default: GPU if any).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run saved in --output.")] = False,
    slide_mpp: Annotated[
        float | None, typer.Option("--slide-mpp", hidden=True, help="Old name of --mpp-override.")
    ] = None,
) -> None:
    """Train a NIC encoder; the folder then works as `--encoder nic:FOLDER` in `encode`."""

    def go() -> None:
        from ..bounds import MAX_BATCH, MAX_PATCH, check_range
        from ..errors import UsageError
        from ..slide import open_slide
        from ..store.atomic import check_output
        from ..tiling import check_target_mpp

        # everything a user can get wrong is checked before torch loads (seconds)
        if method not in METHODS:
            raise METHODS.unknown(method)
        if slide_mpp is not None and mpp_override is not None and slide_mpp != mpp_override:
            raise UsageError("--slide-mpp is the old name of --mpp-override: give one of them")
        override = mpp_override if mpp_override is not None else slide_mpp
        if patch_size < 16 or patch_size % 16:
            raise UsageError(f"--patch-size {patch_size}: a multiple of 16, at least 16")
        check_range("--patch-size", patch_size, 16, MAX_PATCH)
        check_range("--code-size", code_size, 1, 65_536)
        check_range("--epochs", epochs, 1, 100_000)
        check_range("--batch-size", batch_size, 1, MAX_BATCH)
        check_range("--steps-per-epoch", steps_per_epoch, 1, 10_000_000)
        check_range("--val-limit-per-class", val_limit_per_class, 1, 10_000_000)
        check_range("--lr", lr, 1e-9, 10.0)
        check_output(output, folder=True)
        check_target_mpp(mpp)
        slide_paths = expand_slides(slides or [])
        for s in slide_paths:
            if not s.exists():
                raise UsageError(f"slide not found: {s}")
            # a hostile or unreadable slide (or a bad override) fails here, not mid-training
            open_slide(s, mpp_override=override).close()

        from ..encoders.nic import NICConfig
        from ..training.nic.data import DataSpec, FeedInputs
        from ..training.nic.trainer import TrainSettings, train_from_args

        inputs = FeedInputs(
            data=[DataSpec.parse(d) for d in data or []], slides=slide_paths,
            mpp_override=override, limit_per_class=limit_per_class,
            val_limit_per_class=val_limit_per_class,
        )  # fmt: skip
        config = NICConfig(method=method, patch_size=patch_size, mpp=mpp, code_size=code_size,
                           lr=lr, options=_parse_options(option or []))  # fmt: skip
        settings = TrainSettings(
            epochs=epochs, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
            patience=patience, seed=seed, device=device,
        )  # fmt: skip
        with progress_bars("steps") as start:
            final = train_from_args(
                config, output, settings, inputs, augment_strength=augment, resume=resume,
                progress=start, log=lambda m: console.print(m, highlight=False),
                command=shlex.join(["slidepress", *sys.argv[1:]]),
            )  # fmt: skip
        t = final["training"]
        console.print(
            f"best epoch {t['best_epoch']}/{t['epochs_run']} in {t['seconds']:.0f} s: "
            + ", ".join(f"{k}={v:.4g}" for k, v in t["best_val"].items())
            + f"\nencoder ready: slidepress encode --encoder nic:{output} SLIDE"
        )

    guarded(go)


@train_app.command("codec-decoder")
def codec_decoder_cmd(
    codec: Annotated[str, typer.Option(help="Autoencoder codec: pathae, ae-kl, ae-dc.")],
    data: Annotated[
        list[Path], typer.Option(help="Folder of H&E images (>= 96 px, searched recursively).")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Run folder to create.")],
    weights: Annotated[
        Path | None, typer.Option(help="Bundle folder (default: the codec's shipped one).")
    ] = None,
    val_data: Annotated[
        Path | None, typer.Option(help="Validation images (default: other crops of --data).")
    ] = None,
    quality: Annotated[int, typer.Option(help="Rate level whose latents the decoder sees.")] = 4,
    steps: Annotated[int, typer.Option(help="Training steps.")] = 300,
    batch_size: Annotated[int, typer.Option(help="96 px crops per step.")] = 8,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-4,
    perceptual: Annotated[
        str, typer.Option(help="featsim (shipped network), none, or a resnet18 weights file.")
    ] = "featsim",
    perceptual_weight: Annotated[float, typer.Option(help="Weight of the perceptual term.")] = 0.5,
    gan_weight: Annotated[float, typer.Option(help="PatchGAN weight (0: no GAN).")] = 0.0,
    limit: Annotated[int, typer.Option(help="Images per --data folder at most.")] = 4000,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed for crops and init.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue the run saved in --output.")] = False,
) -> None:
    """Fine-tune only the decoder of an autoencoder codec (encoder + quantizer frozen: tiles
    already coded keep their bytes); before/after numbers in results.json, the new bundle in
    OUTPUT/bundle (use it as the codec's weights)."""

    def go() -> None:
        from ..bounds import MAX_BATCH, check_range
        from ..errors import UsageError

        check_range("--steps", steps, 1, 10_000_000)
        check_range("--batch-size", batch_size, 1, MAX_BATCH)
        check_range("--lr", lr, 1e-9, 10.0)
        check_range("--threads", threads, 1, 256)
        for d in [*data, *([val_data] if val_data else [])]:
            if not d.is_dir():
                raise UsageError(f"--data {d}: not a folder")
        if perceptual not in ("featsim", "none") and not Path(perceptual).is_file():
            raise UsageError(f"--perceptual {perceptual}: featsim, none or a weights file")
        from ..codecs import CODECS

        if codec not in ("pathae", "ae-kl", "ae-dc"):
            known = ", ".join(CODECS)
            raise UsageError(f"--codec {codec}: decoder fine-tuning needs an autoencoder codec "
                             f"(pathae, ae-kl, ae-dc; known codecs: {known})")  # fmt: skip
        from ..codecs import get_codec
        from ..training.ae_decoder import FinetuneSettings, finetune_decoder
        from ..training.samplers import CropSampler, load_folder_images

        bundle = get_codec(codec, None, weights=str(weights) if weights else None).bundle
        imgs = [a for d in data for a in load_folder_images(d, limit, seed)]
        if not imgs:
            raise UsageError("no images of at least 96 px under --data")
        sampler = CropSampler([(imgs, 1.0)], seed=seed)
        vimgs = load_folder_images(val_data, 256, seed) if val_data else imgs
        s = FinetuneSettings(steps=steps, batch=batch_size, lr=lr, quality=quality,
                             perceptual=perceptual, perceptual_weight=perceptual_weight,
                             gan_weight=gan_weight, seed=seed, threads=threads)  # fmt: skip
        val = CropSampler([(vimgs, 1.0)], seed=seed + 1).batch(s.val_crops)
        res = finetune_decoder(bundle.folder, sampler, val, output, s, resume=resume,
                               log=lambda m: console.print(m, highlight=False))  # fmt: skip
        b, a = res["before"], res["after"]
        console.print(
            f"decoder fine-tuned: loss {b['loss']:.4f} -> {a['loss']:.4f}, PSNR "
            f"{b['psnr']:.2f} -> {a['psnr']:.2f} dB, featsim {b['featsim_mean']:.4f} -> "
            f"{a['featsim_mean']:.4f}\nbundle: {res['bundle']} (use weights={res['bundle']})"
        )

    guarded(go)
