"""`run_probe`: every encoder on every dataset given, then the report folder.

Inputs and encoders are all checked before any embedding, so a typo fails in seconds; the
per-dataset work is `eval.probe`, the files are `eval.report`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..encoders import get_encoder
from ..errors import UsageError
from ..imagefolder import list_image_folder
from ..progress import ProgressStart
from .embedding import ResampleWarning
from .probe import ProbeResult, pcam_splits, probe_kather, probe_pcam
from .report import plot_probe, write_previews, write_probe_csv, write_probe_json, write_probe_md

PROBE_SETTING = (
    "Linear(C,256)-BatchNorm1d-LeakyReLU-Linear(256,K), softmax CE, Adam 1e-3, "
    "batch 64, best epoch by loss on a seeded stratified 10 % of train"
)
CI_SETTING = "95 % percentile, class-stratified bootstrap of the test set"


@dataclass
class ProbeReport:
    """What `run_probe` measured and wrote (paths by kind: csv, json, md, png, preview:NAME)."""

    results: list[ProbeResult]
    out_dir: Path
    paths: dict[str, Path]
    warnings: list[str]
    settings: dict[str, Any]


def _check_inputs(
    pcam: str | Path | None,
    kather: str | Path | None,
    pcam_mpp: float,
    kather_mpp: float,
    train_limit_per_class: int | None,
    test_limit_per_class: int | None,
    n_bootstrap: int,
) -> None:
    if pcam is None and kather is None:
        raise UsageError("give at least one dataset: --pcam DIR and/or --kather DIR")
    for name, v in (("pcam mpp", pcam_mpp), ("kather mpp", kather_mpp)):
        if not v > 0:
            raise UsageError(f"{name} must be > 0, got {v}")
    for name, v in (("train limit", train_limit_per_class), ("test limit", test_limit_per_class)):
        if v is not None and v < 1:
            raise UsageError(f"{name} must be >= 1, got {v}")
    if n_bootstrap < 0:
        raise UsageError(f"bootstrap resamples must be >= 0, got {n_bootstrap}")
    if pcam is not None:
        for split in pcam_splits(Path(pcam)):
            list_image_folder(split)
    if kather is not None:
        list_image_folder(kather)


def run_probe(
    encoder_specs: Sequence[str],
    *,
    out_dir: str | Path,
    pcam: str | Path | None = None,
    kather: str | Path | None = None,
    pcam_mpp: float = 0.97,
    kather_mpp: float = 0.495,
    train_limit_per_class: int | None = 2000,
    test_limit_per_class: int | None = None,
    epochs: int = 30,
    seed: int = 0,
    folds: int = 3,
    batch_size: int = 256,
    n_bootstrap: int = 1000,
    device: str | None = None,
    progress: ProgressStart | None = None,
) -> ProbeReport:
    """Probe every encoder on every dataset given; write probe.csv/.json/.md/.png to out_dir.

    ResampleWarnings are recorded on each result (and in the report) and passed on to the
    caller, with every other warning raised on the way.
    """
    if not encoder_specs:
        raise UsageError("give at least one encoder (--encoder mean-rgb)")
    _check_inputs(
        pcam, kather, pcam_mpp, kather_mpp, train_limit_per_class, test_limit_per_class,
        n_bootstrap,
    )  # fmt: skip
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: exists and is not a folder")
    encoders = [get_encoder(spec, device=device) for spec in dict.fromkeys(encoder_specs)]
    names = [e.name for e in encoders]
    if len(set(names)) != len(names):
        raise UsageError(f"two encoders share a name ({', '.join(names)}); rename one")
    out_dir.mkdir(parents=True, exist_ok=True)

    results: list[ProbeResult] = []
    notes: list[str] = []
    common = {"seed": seed, "epochs": epochs, "batch_size": batch_size, "progress": progress}
    for enc in encoders:
        jobs: list[Callable[[], ProbeResult]] = []
        if pcam is not None:
            jobs.append(lambda enc=enc: probe_pcam(
                enc, pcam, dataset_mpp=pcam_mpp, train_limit_per_class=train_limit_per_class,
                test_limit_per_class=test_limit_per_class, n_bootstrap=n_bootstrap, **common,
            ))  # fmt: skip
        if kather is not None:
            jobs.append(lambda enc=enc: probe_kather(
                enc, kather, dataset_mpp=kather_mpp, folds=folds, n_bootstrap=n_bootstrap,
                **common,
            ))  # fmt: skip
        for job in jobs:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ResampleWarning)
                res = job()
            msgs = [str(w.message) for w in caught if issubclass(w.category, ResampleWarning)]
            res.details["warnings"] = msgs
            results.append(res)
            notes.extend(msgs)
            for w in caught:  # hand everything on to the caller
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    settings = {
        "pcam": str(pcam) if pcam is not None else None,
        "kather": str(kather) if kather is not None else None,
        "pcam_mpp": pcam_mpp,
        "kather_mpp": kather_mpp,
        "train_limit_per_class": train_limit_per_class,
        "test_limit_per_class": test_limit_per_class,
        "epochs": epochs,
        "seed": seed,
        "folds": folds,
        "batch_size": batch_size,
        "n_bootstrap": n_bootstrap,
        "device": device,
        "probe": PROBE_SETTING,
        "ci": CI_SETTING,
    }
    paths = {
        **write_previews(encoders, pcam, pcam_mpp, out_dir, seed),
        "csv": write_probe_csv(out_dir / "probe.csv", results),
        "json": write_probe_json(out_dir / "probe.json", results, encoders, settings),
        "md": write_probe_md(out_dir / "probe.md", results, settings, notes),
        "png": plot_probe(out_dir / "probe.png", results),
    }
    return ProbeReport(results, out_dir, paths, notes, settings)
