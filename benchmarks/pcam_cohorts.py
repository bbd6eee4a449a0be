"""The PCam mosaic cohorts of the slide-level NIC benchmarks (bench_weak_label.py,
bench_survival_toy.py): their shared options, patch tables, cohorts, cached codes, grid items
and cross-validation runs.

Cohorts are drawn with `slidepress.synthetic.mosaic` from PCam train (CV cohort) and valid
(external test cohort) patches, minus every patch the encoders saw in training
(`slidepress.synthetic.pcam.encoder_pcam_files`). Patch codes are cached in
.bench/mosaic_codes/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import BENCH_DIR, PCAM, log

CACHE = BENCH_DIR / "mosaic_codes"


def add_common_args(ap: argparse.ArgumentParser, out: Path) -> None:
    ap.add_argument("--out", type=Path, default=out, help=f"report folder (default {out})")
    ap.add_argument("--encoder", default="nic-multitask", help="patch encoder (get_encoder)")
    ap.add_argument("--floor", default="mean-rgb", help="baseline encoder; '' to skip")
    ap.add_argument("--models", default="nic-cnn,abmil")
    ap.add_argument("--model-options", type=json.loads, default={},
                    help='JSON per model, e.g. \'{"nic-cnn": {"width": 64}}\'')  # fmt: skip
    ap.add_argument("--unseen-by", action="append", default=[], metavar="ENCODER",
                    help="also leave out the patches this encoder saw (repeatable), so runs "
                    "of several encoders use the same slides")  # fmt: skip
    ap.add_argument(
        "--pool",
        choices=["train", "valid"],
        default="train",
        help="train: CV cohort from PCam train, test from valid; valid: both from "
        "the unseen valid patches, disjoint halves (encoders that saw all train)",
    )
    ap.add_argument("--slides", type=int, default=160, help="CV cohort size (PCam train)")
    ap.add_argument("--test-slides", type=int, default=80, help="test cohort (PCam valid)")
    ap.add_argument("--grid", type=int, default=24, help="mosaic side n in cells")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--crop", type=int, default=0, help="crop side R (0: = grid, whole)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--steps", type=int, default=25, help="steps per epoch")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patience", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="smoke configuration (< 2 min)")


def apply_quick(args: argparse.Namespace) -> None:
    args.slides, args.test_slides, args.grid, args.folds = 30, 16, 16, 3
    args.epochs, args.steps, args.patience, args.bootstrap = 4, 8, 2, 200
    args.floor = ""


def start_run(args: argparse.Namespace, default_out: Path) -> bool:
    """Shared start of the mosaic benchmarks: quick runs write beside the reference results,
    the data must be there, torch gets `--threads`, the output folder exists."""
    if args.quick and args.out == default_out:
        args.out = default_out.with_name(default_out.name + "_quick")
    if not PCAM.is_dir():
        log(f"PCam patches not found under {PCAM} (see README)")
        return False
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    return True


def pcam_tables(encoder_name: str, unseen_by: list[str] = (), pool: str = "train"):
    """(CV table, test table): PCam minus the files the encoder saw (for a shipped nic-*
    encoder or a nic:DIR run), minus those the `unseen_by` encoders saw (so several runs use
    the same slides), and always minus those the shipped nic-multitask saw.

    pool "train": CV cohort from PCam train, test cohort from PCam valid. pool "valid": both
    from the valid patches no encoder saw, split in two disjoint halves per class (for the
    issue-24 encoders, which trained on all of PCam train)."""
    from slidepress.encoders.nic_weights import WEIGHTS_DIR
    from slidepress.synthetic import pcam

    cfgs = [WEIGHTS_DIR / "nic-multitask" / "config.json"]
    for name in [encoder_name, *unseen_by]:
        if name.startswith("nic-"):
            cfgs.append(WEIGHTS_DIR / name / "config.json")
        elif name.startswith("nic:"):
            cfgs.append(Path(name[4:]) / "config.json")
    seen: dict[str, set[Path]] = {"train": set(), "valid": set()}
    for c in dict.fromkeys(cfgs):
        if c.is_file():
            config = json.loads(c.read_text())
            files = (seen_files(config["pcam_seen"]) if "pcam_seen" in config
                     else pcam.encoder_pcam_files(config, PCAM))  # fmt: skip
            for k, v in files.items():
                seen[k] |= v
    valid = pcam.pcam_table(PCAM / "valid", seen["valid"])
    if pool == "valid":
        return split_table(valid, seed=24)
    train = pcam.pcam_table(PCAM / "train", seen["train"])
    if not (len(train.ids(0)) and len(train.ids(1))):
        raise SystemExit("the encoders saw every PCam train patch: use --pool valid")
    return train, valid


def split_table(table, seed: int):
    """Two disjoint halves of a patch table, per class (seeded)."""
    from slidepress.synthetic.pcam import PatchTable

    rng = np.random.default_rng(seed)
    halves: list[list[int]] = [[], []]
    for k in (0, 1):
        ids = rng.permutation(table.ids(k))
        halves[0] += ids[: len(ids) // 2].tolist()
        halves[1] += ids[len(ids) // 2 :].tolist()
    out = []
    for h, name in zip(halves, ("cv", "test"), strict=True):
        h = sorted(h)
        src = {**table.source, "half": name, "n_normal": int((table.labels[h] == 0).sum()),
               "n_tumour": int((table.labels[h] == 1).sum())}  # fmt: skip
        out.append(PatchTable([table.files[i] for i in h], table.labels[h], None, src))
    return tuple(out)


def seen_files(rules: dict[str, str]) -> dict[str, set[Path]]:
    """The PCam files an issue-24 run saw (its config's `pcam_seen`, written by
    `training/nic/nic24.py`): per split "all", or "probe-select" (the probe's model-selection
    split)."""
    from slidepress.imagefolder import list_image_folder
    from slidepress.training.nic.probe import probe_split

    out: dict[str, set[Path]] = {}
    for split, rule in rules.items():
        if rule == "all":
            files = list_image_folder(PCAM / split)[0]
        elif rule == "probe-select":
            files = probe_split(PCAM)["select"][0]
        else:
            raise ValueError(f"unknown pcam_seen rule {rule!r} for {split}")
        out[split] = {Path(f).resolve() for f in files}
    return out


def build_cohorts(args: argparse.Namespace, train, valid, positive_fraction: float = 0.5):
    from slidepress.synthetic import mosaic as M

    cfg = M.MosaicConfig(n=args.grid)
    common = {"config": cfg, "positive_fraction": positive_fraction}
    cv = M.make_cohort(
        args.slides, train.ids(0), train.ids(1), seed=args.seed, folds=args.folds, prefix="cv",
        **common,
    )  # fmt: skip
    test = M.make_cohort(
        args.test_slides, valid.ids(0), valid.ids(1), seed=args.seed + 1000, prefix="test",
        **common,
    )  # fmt: skip
    return cfg, cv, test


def encode_tables(encoder_name: str, tables: list, used: list[np.ndarray]) -> tuple[Any, float]:
    """Encode the patches the cohorts use (cached), store codes in each table (zeros for
    unused rows). Returns (encoder, seconds)."""
    from slidepress.encoders import get_encoder
    from slidepress.synthetic import pcam

    enc = get_encoder(encoder_name, device="cpu")
    t0 = time.perf_counter()
    for tab, ids in zip(tables, used, strict=True):
        ids = np.unique(ids)
        files = [tab.files[i] for i in ids]
        codes, hit = pcam.cached_embeddings(files, enc, CACHE)
        full = np.zeros((len(tab.files), enc.dim), np.float32)
        full[ids] = codes
        tab.codes = full
        log(f"  {enc.name}: {len(files)} patches {'(cached)' if hit else 'encoded'}")
    return enc, time.perf_counter() - t0


def used_ids(cohort) -> np.ndarray:
    return np.concatenate([m.cells[m.tissue] for m in cohort])


def make_items(cohort, table, enc) -> list:
    from slidepress.synthetic import mosaic as M

    meta = {"encoder": enc.describe(), "grid": {"patch_size": M.CELL_PX, "mpp": M.PCAM_MPP}}
    return [M.grid_item(m, table.codes, meta) for m in cohort]


def fit_settings(args: argparse.Namespace, model: str):
    from slidepress.slidemodel.fit import FitSettings

    options = dict(args.model_options.get(model, {}))
    return FitSettings(model=model, model_options=options, crop=args.crop or args.grid,
                       batch_size=args.batch, steps_per_epoch=args.steps, epochs=args.epochs,
                       lr=args.lr, patience=args.patience, lr_patience=max(2, args.patience // 2),
                       tta_crops=4, tta_variants=8, seed=args.seed, device="cpu")  # fmt: skip


def run_cv(items, labels, args, settings, run_dir: Path) -> tuple[dict, float]:
    from slidepress.slidemodel.cv import cross_validate

    if run_dir.exists():
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()

    def fold_log(msg: str) -> None:
        if msg.startswith("fold"):
            log(f"    {msg}")

    metrics = cross_validate(items, labels, args.folds, settings, run_dir,
                             n_bootstrap=args.bootstrap, log=fold_log)  # fmt: skip
    return metrics, time.perf_counter() - t0


def environment() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "load_avg": os.getloadavg()}  # fmt: skip


def fmt_ci(v: float, ci: list[float] | tuple[float, float]) -> str:
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def plain(v: Any) -> Any:
    """`json.dumps(default=plain)`: numpy values as numbers and lists, anything else as text."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)
