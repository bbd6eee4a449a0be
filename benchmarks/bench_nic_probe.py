"""Issue 24's linear probe of the NIC encoders on PCam, in-process.

Protocol (the issue reporter's, on our own fixed split): each PCam patch is encoded as
`slidepress encode PATCH --mpp-override 0.972 --tissue-threshold 0 --encoder X` would (mean of
the grid's cells), features standardised, logistic regression, 5-fold stratified CV; AUC of
the pooled out-of-fold scores (and the mean of the 5 fold AUCs), 95 % class-stratified
bootstrap CI (2000 resamples), and the paired bootstrap CI of each encoder's AUC minus
mean-RGB's (same resamples).

Splits (`slidepress.training.nic.probe.probe_split`, seeded, from PCam `valid` only):
`heldout` (400 per class; training never sees it: the nic24 feeds exclude it) for the final
table, `select` (another 400 per class) for model selection.

    python benchmarks/bench_nic_probe.py                       # shipped encoders, held-out
    python benchmarks/bench_nic_probe.py --split select -e mean-rgb -e nic:runs/nic24/vae
    python benchmarks/bench_nic_probe.py --check 20            # in-process == the CLI?

Writes a JSON report to stdout and .bench/nic_probe/<split>.json. ~1 min for six encoders
on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import BENCH_DIR, PCAM, git_commit, log, slidepress_exe
from slidepress.encoders import get_encoder
from slidepress.metrics.stats import (
    bootstrap_auc,
    bootstrap_indices,
    paired_difference,
    percentile_ci,
    roc_auc,
)
from slidepress.training.nic.probe import (
    PROBE_MPP,
    cv_scores,
    encode_mean,
    grid_cells,
    probe_split,
    read_patches,
)

DEFAULT = ["mean-rgb", "nic-vae", "nic-contrastive", "nic-bigan", "nic-multitask",
           "nic-supervised", "nic-simclr"]  # fmt: skip
N_BOOT = 2000


def features(name: str, images: np.ndarray) -> np.ndarray:
    enc = get_encoder(name, device="cpu")
    cells = grid_cells(images, getattr(enc, "mpp", None), getattr(enc, "patch_size", None))
    return encode_mean(enc.encode, cells)


def cli_features(name: str, files: list[Path]) -> np.ndarray:
    """What `slidepress encode` gives: mean over the grid's cells of each patch."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [slidepress_exe(), "encode", *map(str, files), "--mpp-override", str(PROBE_MPP),
               "--tissue-threshold", "0", "--encoder", name, "--format", "npz",
               "-o", tmp]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)
        out = []
        for f in files:
            d = np.load(Path(tmp) / f"{f.stem}.npz")
            feats, mask = d["features"], d["mask"]
            out.append(feats[mask].mean(0))
    return np.stack(out)


def check(names: list[str], files: list[Path]) -> dict:
    images = read_patches(files)
    res = {}
    for name in names:
        a, b = features(name, images), cli_features(name, files)
        scale = np.abs(b).max()
        res[name] = {"max_abs_diff": float(np.abs(a - b).max()),
                     "max_rel_diff": float(np.abs(a - b).max() / scale)}  # fmt: skip
        log(f"check {name}: max |in-process - CLI| = {res[name]['max_abs_diff']:.3g} "
            f"({res[name]['max_rel_diff']:.2g} of the largest |code|)")  # fmt: skip
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-e", "--encoder", action="append", help="encoder names (repeatable)")
    ap.add_argument("--split", default="heldout", choices=["heldout", "select"])
    ap.add_argument("--pcam", type=Path, default=PCAM)
    ap.add_argument(
        "--check",
        type=int,
        default=0,
        metavar="N",
        help="compare with `slidepress encode` on N held-out patches and exit",
    )
    args = ap.parse_args()
    names = args.encoder or DEFAULT
    if "mean-rgb" not in names:
        names = ["mean-rgb", *names]
    files, y = probe_split(args.pcam)[args.split]
    if args.check:
        pick = np.random.default_rng(0).choice(len(files), args.check, replace=False)
        res = check(names, [files[i] for i in np.sort(pick)])
        print(json.dumps(res, indent=1))
        return
    t0 = time.perf_counter()
    images = read_patches(files)
    idx = bootstrap_indices(y, N_BOOT, seed=0)
    rows, boots = {}, {}
    for name in names:
        t = time.perf_counter()
        x = features(name, images)
        scores, fold = cv_scores(x, y)
        boots[name] = bootstrap_auc(y, scores, idx)
        lo, hi = percentile_ci(boots[name])
        rows[name] = {"dim": int(x.shape[1]), "auc": roc_auc(y, scores), "ci": [lo, hi],
                      "fold_auc_mean": float(fold.mean()), "fold_auc_sd": float(fold.std()),
                      "seconds": round(time.perf_counter() - t, 1)}  # fmt: skip
        log(f"{name}: AUC {rows[name]['auc']:.3f} [{lo:.3f}, {hi:.3f}]")
    for name in names:
        if name != "mean-rgb":
            d, lo, hi = paired_difference(boots[name], boots["mean-rgb"])
            rows[name]["vs_mean_rgb"] = {"diff": d, "ci": [lo, hi]}
    report = {
        "benchmark": "nic_probe",
        "split": args.split,
        "n": {"total": int(len(y)), "per_class": [int((y == c).sum()) for c in np.unique(y)]},
        "protocol": "encode-grid mean code, standardised logistic regression (C=1), 5-fold "
        "stratified CV (seed 0), AUC of pooled out-of-fold scores, 95% stratified "
        f"bootstrap ({N_BOOT}), paired vs mean-rgb",
        "commit": git_commit(),
        "seconds": round(time.perf_counter() - t0, 1),
        "encoders": rows,
    }
    print(table(rows))
    out = BENCH_DIR / "nic_probe" / f"{args.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


def table(rows: dict) -> str:
    lines = ["| encoder | C | AUC [95 % CI] | 5-fold mean (sd) | vs mean-RGB [95 % CI] |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, r in rows.items():
        v = r.get("vs_mean_rgb")
        vs = "—" if v is None else f"{v['diff']:+.3f} [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}]"
        lines.append(f"| {name} | {r['dim']} | {r['auc']:.3f} [{r['ci'][0]:.3f}, "
                     f"{r['ci'][1]:.3f}] | {r['fold_auc_mean']:.3f} ({r['fold_auc_sd']:.3f}) "
                     f"| {vs} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
