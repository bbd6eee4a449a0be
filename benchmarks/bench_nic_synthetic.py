"""NIC synthetic benchmark (Tellez et al., TPAMI 2019, section 4.1.1), scaled to 2 CPU cores.

Images of n x n cells of 9 x 9 px digits (scikit-learn's 8x8 digits, `slidepress.synthetic.
digits`) hold a tilted rectangle whose digits all share the image label and an axis-aligned
distractor rectangle of another class. Each encoder (patch = stride = one cell, padded to
16 px, code C = 16) compresses every image into an (n, n, C) grid; the NIC slide-level CNN
(`slidemodel`, 8 separable conv layers) learns the label from the grids alone. Reported per
encoder: test accuracy overall and by tilted-rectangle area (the shape of the paper's Fig. 6a:
near the oracle for large lesions, degrading for small ones), the Grad-CAM Jaccard index
with the true tilted rectangle, and the time of every stage.

Encoders: `oracle` (the NIC "supervised" method trained on digit labels + a blank class),
`vae` (unsupervised), optionally `bigan`, and `mean` (a floor: the cell's mean intensity,
C = 1). Writes .bench/nic_synthetic/{results.json,results.md,accuracy_by_size.png,
example.png} and each encoder's training run in encoders/NAME (`slidepress.training`).

    OMP_NUM_THREADS=1 python benchmarks/bench_nic_synthetic.py --quick   # smoke test, < 1 min
    OMP_NUM_THREADS=1 python benchmarks/bench_nic_synthetic.py           # reference, ~16 min

Choices (scaled to 2 CPU cores; one torch thread, which is the robust choice on a shared
machine):

- Data: 48 x 48 cells (432 px), digit density 0.5, tilted-rectangle area log-uniform in
  1 %..30 %; 8000 training, 200 validation (both from the train digit pool) and 500 test
  images (test pool). 8000 images were needed for the CNN not to overfit.
- Encoders: trained on the train-pool digits plus blank cells as an 11th class (~1/11 of the
  data; blank cells then get one consistent code), 3000 Adam steps of 64 with cosine decay.
  The oracle is "supervised" with widths 32-64-64-64; the VAE has widths 32-64-128-128 and a
  dense layer of 256; BiGAN (not in the default list) runs at full resolution with widths
  32-64-128. Held-out digit accuracy is on the test-pool digits; "probe" is a logistic
  regression on the codes, trained on train-pool digits, tested on test-pool digits.
- Compression: every cell is embedded, blank ones included (as the paper does); identical
  cells are embedded once (`compress_images`, exact). Each encoder's grids are standardised
  per channel with the training-grid mean and std (the mean-intensity floor has C = 1).
- Slide CNN: the repo's nic-cnn (8 depthwise-separable blocks, stride 2 except the last two,
  global max pooling, dense 128), width 64, no dropout (feature-wise dropout 0.2 learnt much
  more slowly here), crop = the whole 48 x 48 grid (after block 6 the map is 1 x 1, as with
  the paper's fixed-size input), batches of 32 balanced over classes, 100 steps per epoch,
  <= 100 epochs, Adam lr 2e-3 + plateau decay, early stopping on validation AUC; test
  predictions average the 8 dihedral variants.
- Grad-CAM: on the first block (the paper's choice, `--cam-layer` to change), for the
  predicted class; scored by the Jaccard index of the top-k cells (k = the true tilted
  rectangle's size; threshold-free) and of the map thresholded at 0.5, plus diagnostics
  (overlap with both rectangles; is the CAM higher in the tilted one than in the distractor).

One file on purpose (over the ~450-line guide): the script reads top to bottom as the
experiment (encoders, grids, slide CNN, Grad-CAM, report); the data come from
`slidepress.synthetic.digits`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import BENCH_DIR, git_commit, log
from slidepress.training.loop import Trainer, fit
from slidepress.training.run import Budget, Run

OUT = BENCH_DIR / "nic_synthetic"

CLASSES = [str(k) for k in range(10)]
# tilted-rectangle area fraction bins (log spaced: the sizes are drawn log-uniform)
BIN_EDGES = (0.0, 0.02, 0.04, 0.08, 0.16, 1.0)
BIN_NAMES = ("<2%", "2-4%", "4-8%", "8-16%", ">=16%")

DEFAULTS: dict[str, Any] = dict(
    n_cells=48, density=0.5, min_area=0.01, max_area=0.30,
    n_train=8000, n_val=200, n_test=500,
    encoders="oracle,vae,mean", encoder_steps=3000, encoder_batch=64,
    cnn_width=64, cnn_dropout=0.0, cnn_batch=32, cnn_steps=100, cnn_epochs=100, cnn_patience=15,
    cnn_lr=2e-3, tta_variants=8,
)  # fmt: skip
QUICK: dict[str, Any] = dict(
    n_cells=16, min_area=0.03, n_train=160, n_val=40, n_test=80,
    encoder_steps=150, cnn_width=32, cnn_batch=16, cnn_steps=20, cnn_epochs=4, cnn_patience=4,
    tta_variants=2,
)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Encoders
# ----------------------------------------------------------------------------------------------


def encoder_config(name: str, code_size: int):
    from slidepress.encoders.nic import NICConfig
    from slidepress.synthetic.digits import PATCH

    if name == "oracle":
        tasks = [{"name": "digit", "classes": [*CLASSES, "blank"]}]
        opts = {"tasks": tasks, "widths": [32, 64, 64, 64]}
        return NICConfig("supervised", PATCH, 1.0, code_size, 1e-3, opts)
    if name == "vae":
        opts = {"widths": [32, 64, 128, 128], "dense": 256}
        return NICConfig("vae", PATCH, 1.0, code_size, 1e-3, opts)
    if name == "bigan":  # full resolution: a 16 px digit patch has no detail to spare
        opts = {"widths": [32, 64, 128], "downscale": 1}
        return NICConfig("bigan", PATCH, 1.0, code_size, 2e-4, opts)
    raise ValueError(f"unknown encoder {name!r}")


def encoder_data(train_pool, test_pool) -> dict[str, Any]:
    """Patches of the train-pool digits + blank cells (class 10, ~1/11 of the data) to train
    on, and the test-pool digits + one blank to validate on."""
    import torch

    from slidepress.synthetic.digits import cells_to_patches, digit_cells

    def build(pool, n_blank):
        cells = np.concatenate([digit_cells(pool), np.zeros((n_blank, 9, 9), np.uint8)])
        y = np.concatenate([pool.labels, np.full(n_blank, 10)])
        return torch.from_numpy(cells_to_patches(cells)), torch.from_numpy(y.astype(np.int64))

    x_tr, y_tr = build(train_pool, max(1, len(train_pool) // 10))
    x_te, y_te = build(test_pool, 1)
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}


class DigitEncoderTrainer(Trainer):
    """One NIC method on the in-memory digit patches: random batches, cosine LR decay."""

    family = "nic-digits"

    def __init__(self, cfg, data: dict[str, Any], steps: int, batch: int, seed: int):
        from slidepress.encoders.nic import build_method

        self.cfg, self.steps, self.batch = cfg, steps, batch
        self.method = build_method(cfg)
        self.opts = self.method.make_optimizers()
        self.base = [[g["lr"] for g in o.param_groups] for o in self.opts]
        self.rng = np.random.default_rng(seed)
        self.x, self.y = data["x_train"], data["y_train"]
        self.last: dict = {}
        self.models = {"method": self.method}
        self.optimizers = {str(i): o for i, o in enumerate(self.opts)}
        self.generators = {"batches": self.rng}

    def config(self) -> dict:
        return self.cfg.to_dict()

    def step(self, step: int, progress: float) -> dict[str, float]:
        import torch

        scale = 0.5 * (1 + math.cos(math.pi * step / self.steps))
        for o, lrs in zip(self.opts, self.base, strict=True):
            for g, lr in zip(o.param_groups, lrs, strict=True):
                g["lr"] = lr * scale
        idx = torch.from_numpy(self.rng.integers(0, len(self.x), self.batch))
        b = (
            {"digit": (self.x[idx], self.y[idx])}
            if self.cfg.method == "supervised"
            else self.x[idx]
        )
        self.last = self.method.training_step(b, self.opts)
        return self.last


def train_encoder(name: str, data: dict[str, Any], steps: int, batch: int, seed: int, code: int,
                  out: Path):  # fmt: skip
    """Train one NIC method with Adam + cosine LR decay (run folder `out`: log.csv, curves,
    checkpoint); returns (method, info)."""
    import torch

    torch.manual_seed(seed)
    cfg = encoder_config(name, code)
    trainer = DigitEncoderTrainer(cfg, data, steps, batch, seed)
    method = trainer.method
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    method.train()
    fit(trainer, Run(out), Budget(steps), log_every=max(1, steps // 5),
        log=lambda m: log(f"  {name} {m}"))  # fmt: skip
    train_s = time.perf_counter() - t0
    method.eval()
    xt, yt = data["x_test"], data["y_test"]
    with torch.no_grad():
        b = {"digit": (xt, yt)} if cfg.method == "supervised" else xt
        val = method.validation_step(b)
        if cfg.method == "supervised":
            pred = method.heads["digit"](method.encoder(xt)).argmax(1)
            digit = yt < 10
            val["digit_accuracy"] = float((pred[digit] == yt[digit]).float().mean())
    info = {
        "method": cfg.method,
        "config": cfg.to_dict(),
        "steps": steps,
        "batch": batch,
        "train_s": round(train_s, 1),
        "last_train": trainer.last,
        "held_out": {k: float(v) for k, v in val.items()},
        "parameters": sum(p.numel() for p in method.embedder().parameters()),
    }
    return method, info


def linear_probe(embed, train_pool, test_pool) -> float:
    """Held-out digit accuracy of a logistic regression on the codes (how much class
    information an encoder keeps)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from slidepress.synthetic.digits import digit_cells

    a, b = embed(digit_cells(train_pool)), embed(digit_cells(test_pool))
    sc = StandardScaler().fit(a)
    clf = LogisticRegression(max_iter=3000).fit(sc.transform(a), train_pool.labels)
    return float((clf.predict(sc.transform(b)) == test_pool.labels).mean())


# ----------------------------------------------------------------------------------------------
# Slide-level CNN, metrics
# ----------------------------------------------------------------------------------------------


def grid_items(grids: np.ndarray, prefix: str) -> list:
    from slidepress.slidemodel.data import GridItem

    mask = np.ones(grids.shape[1:3], bool)
    return [
        GridItem(slide=f"{prefix}{i}", features=g, mask=mask, path=None, metadata={}, coords=None)
        for i, g in enumerate(grids)
    ]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def top_k(cam: np.ndarray, k: int) -> np.ndarray:
    """(H, W) bool: the k highest cells of `cam` (ties broken by position)."""
    top = np.zeros(cam.size, bool)
    top[np.argsort(-cam.ravel(), kind="stable")[:k]] = True
    return top.reshape(cam.shape)


def cam_metrics(cam: np.ndarray, img) -> dict[str, float]:
    """Localisation scores of one Grad-CAM map (H, W) in [0, 1] against the true rectangles.

    jaccard_topk: IoU of the k highest cells (k = true tilted-rectangle size) with it
    (threshold-free); jaccard_cam05: IoU of cam >= 0.5 with it; jaccard_topk_both: the top-k
    IoU with the union of both rectangles (does the map find the one-class clusters at all?);
    tilted_over_axis: 1 if the mean CAM inside the tilted rectangle exceeds that inside the
    distractor (NaN when the distractor is fully covered)."""
    t = img.tilted_mask
    both = t | img.axis_mask
    axis_only = img.axis_mask & ~t
    return {
        "jaccard_topk": jaccard(top_k(cam, int(t.sum())), t),
        "jaccard_cam05": jaccard(cam >= 0.5, t),
        "jaccard_topk_both": jaccard(top_k(cam, int(both.sum())), both),
        "tilted_over_axis": float(cam[t].mean() > cam[axis_only].mean())
        if axis_only.any()
        else math.nan,
    }


CAM_KEYS = ("jaccard_topk", "jaccard_cam05", "jaccard_topk_both", "tilted_over_axis")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def size_bin(area: np.ndarray) -> np.ndarray:
    return np.digitize(area, BIN_EDGES[1:-1])


def summarise(pred: np.ndarray, test, cm: dict[str, np.ndarray]) -> dict[str, Any]:
    """Accuracy (with Wilson 95% CIs) and Grad-CAM scores (`cam_metrics` arrays), overall and
    per tilted-rectangle size bin."""
    y = np.array([t.label for t in test])
    axis = np.array([t.axis_class for t in test])
    area = np.array([t.area_fraction for t in test])
    ok = pred == y
    bins = size_bin(area)
    out: dict[str, Any] = {
        "accuracy": float(ok.mean()),
        "accuracy_ci95": wilson(int(ok.sum()), len(ok)),
        "wrong_is_distractor": float((pred[~ok] == axis[~ok]).mean()) if (~ok).any() else 0.0,
        **{k: float(np.nanmean(cm[k])) for k in CAM_KEYS},
        "jaccard_topk_correct": float(cm["jaccard_topk"][ok].mean()) if ok.any() else math.nan,
        "by_size": [],
    }
    for b, name in enumerate(BIN_NAMES):
        sel = bins == b
        n = int(sel.sum())
        row = {
            "bin": name,
            "lo": BIN_EDGES[b],
            "hi": BIN_EDGES[b + 1],
            "n": n,
            "mean_area": float(area[sel].mean()) if n else math.nan,
            "accuracy": float(ok[sel].mean()) if n else math.nan,
            "accuracy_ci95": wilson(int(ok[sel].sum()), n),
        }
        for k in CAM_KEYS:
            v = cm[k][sel]
            row[k] = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
        out["by_size"].append(row)
    return out


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def _f(v: float, spec: str = ".3f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def markdown(rep: dict[str, Any]) -> str:
    cfg, res, enc = rep["config"], rep["results"], rep["encoders"]
    names = list(res)
    lines = [
        "# NIC synthetic benchmark (Tellez et al., TPAMI 2019, sec. 4.1.1)",
        "",
        f"{cfg['n_cells']}x{cfg['n_cells']} cells of 9 px ({9 * cfg['n_cells']} px images), "
        f"digit density {cfg['density']}, tilted-rectangle area {cfg['min_area']:.0%}.."
        f"{cfg['max_area']:.0%} (log-uniform); {cfg['n_train']} train / {cfg['n_val']} val / "
        f"{cfg['n_test']} test images (test digits from a disjoint pool). Encoders: patch = "
        f"stride = 1 cell (padded to 16 px), C = {cfg['code_size']}. Slide CNN: nic-cnn width "
        f"{cfg['cnn_width']}, crop = whole grid, batch {cfg['cnn_batch']}, <= "
        f"{cfg['cnn_epochs']} x {cfg['cnn_steps']} steps, TTA {cfg['tta_variants']} dihedral "
        f"variants. Chance = 0.100. Wall time {rep['wall_s'] / 60:.1f} min.",
        "",
        "## Encoders",
        "",
        "| encoder | method | C | steps | train s | held-out digit acc. (probe) | other |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in names:
        e = enc[n]
        ho = e.get("held_out", {})
        other = ", ".join(
            f"{k} {_f(v, '.4g')}" for k, v in ho.items() if k in ("digit_accuracy", "psnr", "mse")
        )
        lines.append(
            f"| {n} | {e.get('method', '-')} | {e['code_size']} | {e.get('steps', '-')} | "
            f"{e.get('train_s', 0):.1f} | {_f(e['probe_accuracy'])} | {other} |"
        )
    lines += [
        "",
        "## Test accuracy by tilted-rectangle area (n per bin in the header)",
        "",
    ]
    bins = res[names[0]]["by_size"]
    head = " | ".join(f"{b['bin']} (n={b['n']})" for b in bins)
    lines += [
        f"| encoder | overall (95% CI) | {head} | val | wrong = distractor | epochs (best) |",
        "|---|---|" + "---|" * len(bins) + "---|---|---|",
    ]
    for n in names:
        r = res[n]
        lo, hi = r["accuracy_ci95"]
        cells = " | ".join(_f(b["accuracy"]) for b in r["by_size"])
        lines.append(
            f"| {n} | {_f(r['accuracy'])} ({_f(lo, '.2f')}-{_f(hi, '.2f')}) | {cells} | "
            f"{_f(r['val_accuracy'])} | {_f(r['wrong_is_distractor'], '.2f')} | "
            f"{r['epochs']} ({r['best_epoch']}) |"
        )
    lines += [
        "",
        "`val`: accuracy on the validation images (train-pool digits, used for early stopping). "
        "`wrong = distractor`: share of the errors that name the axis-aligned rectangle's class.",
        "",
        f"## Grad-CAM (block {cfg['cam_layer']} of the CNN, predicted class) vs the true tilted "
        "rectangle, test set",
        "",
        "top-k: Jaccard of the k highest-CAM cells, k = true rectangle size (threshold-free); "
        "cam>=0.5: Jaccard of the max-normalised CAM thresholded at 0.5; both rects: top-k "
        "Jaccard with the union of the two rectangles; tilted > distractor: share of images "
        "whose mean CAM is higher inside the tilted rectangle than inside the distractor.",
        "",
        f"| encoder | top-k | top-k (correct only) | cam>=0.5 | both rects | tilted > distractor "
        f"| top-k by size: {' / '.join(b['bin'] for b in bins)} |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in names:
        r = res[n]
        per = " / ".join(_f(b["jaccard_topk"], ".2f") for b in r["by_size"])
        lines.append(
            f"| {n} | {_f(r['jaccard_topk'])} | {_f(r['jaccard_topk_correct'])} | "
            f"{_f(r['jaccard_cam05'])} | {_f(r['jaccard_topk_both'])} | "
            f"{_f(r['tilted_over_axis'], '.2f')} | {per} |"
        )
    lines += ["", "## Timing (seconds)", "", "| stage | s |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in rep["timing_s"].items()]
    lines += ["", f"Settings: `{json.dumps(rep['fit_settings'])}`", ""]
    return "\n".join(lines)


def plot_accuracy(rep: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, r in rep["results"].items():
        bins = [b for b in r["by_size"] if b["n"]]
        x = [b["mean_area"] * 100 for b in bins]
        acc = np.array([b["accuracy"] for b in bins])
        ci = np.array([b["accuracy_ci95"] for b in bins])
        err = np.abs(np.stack([acc - ci[:, 0], ci[:, 1] - acc]))
        axes[0].errorbar(x, acc, yerr=err, marker="o", capsize=3, label=name)
        axes[1].plot(x, [b["jaccard_topk"] for b in bins], marker="o", label=name)
    axes[0].axhline(0.1, color="grey", ls="--", lw=1, label="chance")
    axes[0].set(ylabel="test accuracy", ylim=(0, 1.02), title="Accuracy vs lesion size")
    axes[1].set(ylabel="Grad-CAM Jaccard (top-k)", ylim=(0, 1.02), title="Localisation")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks([1, 2, 4, 8, 16, 32], ["1", "2", "4", "8", "16", "32"])
        ax.minorticks_off()
        ax.set_xlabel("tilted rectangle area (% of image, bin mean)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_example(img, panels: list[tuple[str, np.ndarray, str]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(3.3 * (1 + len(panels)), 3.6))
    axes[0].imshow(img.image, cmap="gray", interpolation="nearest")
    axes[0].set_title(f"image (label {img.label})", fontsize=9)
    for ax, (name, a, kind) in zip(axes[1:], panels, strict=True):
        if kind == "classes":
            from matplotlib.colors import ListedColormap

            cmap = ListedColormap(["black", *plt.get_cmap("tab10").colors])
            ax.imshow(a + 1, cmap=cmap, vmin=0, vmax=10, interpolation="nearest")
        elif kind == "rgb":
            ax.imshow(a, interpolation="nearest")
        else:
            ax.imshow(a, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            ax.contour(img.tilted_mask, levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set_title(name, fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def truth_rgb(img) -> np.ndarray:
    rgb = np.zeros((*img.tilted_mask.shape, 3), np.float32)
    rgb[img.cell_classes >= 0] = 0.25
    rgb[img.axis_mask & (img.cell_classes >= 0)] = (0.2, 0.4, 1.0)
    rgb[img.tilted_mask & (img.cell_classes >= 0)] = (1.0, 0.3, 0.2)
    return rgb


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help=f"report folder (default {OUT})")
    ap.add_argument("--quick", action="store_true", help="tiny smoke configuration (< 2 min)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--code-size", type=int, default=16)
    ap.add_argument("--n-cells", type=int, help="canvas side in cells")
    ap.add_argument("--density", type=float, help="fraction of cells holding a digit")
    ap.add_argument("--min-area", type=float, help="smallest tilted-rectangle area fraction")
    ap.add_argument("--max-area", type=float, help="largest tilted-rectangle area fraction")
    ap.add_argument("--n-train", type=int, help="training images")
    ap.add_argument("--n-val", type=int, help="validation images (early stopping)")
    ap.add_argument("--n-test", type=int, help="test images (unseen digit instances)")
    ap.add_argument("--encoders", help="comma list of oracle, vae, bigan, mean")
    ap.add_argument("--encoder-steps", type=int, help="training steps per encoder")
    ap.add_argument("--encoder-batch", type=int)
    ap.add_argument("--cnn-width", type=int, help="filters per nic-cnn layer")
    ap.add_argument("--cnn-dropout", type=float, help="nic-cnn feature-wise dropout")
    ap.add_argument("--cnn-batch", type=int)
    ap.add_argument("--cnn-steps", type=int, help="steps per epoch")
    ap.add_argument("--cnn-epochs", type=int, help="epochs at most")
    ap.add_argument("--cnn-patience", type=int, help="early stopping patience (epochs)")
    ap.add_argument("--cnn-lr", type=float)
    ap.add_argument(
        "--cam-layer", type=int, default=0, help="nic-cnn block Grad-CAM explains (0 = first)"
    )
    ap.add_argument("--tta-variants", type=int, help="dihedral variants averaged at test time")
    args = ap.parse_args(argv)
    preset = {**DEFAULTS, **(QUICK if args.quick else {})}
    for k, v in preset.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.quick and args.out == OUT:
        args.out = OUT.parent / "nic_synthetic_quick"
    return args


def cam_at(model, layer: int):
    """`model` with Grad-CAM taken on its block `layer` (0 = the first, the paper's choice)."""
    from torch import nn

    class _At(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        @property
        def cam_layer(self) -> nn.Module:
            return self.model.blocks[layer]

        def forward(self, x, mask=None):
            return self.model(x, mask)

    return _At()


def compress_set(ims: list, pool, embed, chunk: int = 128) -> np.ndarray:
    """(N, n, n, C) grids of images rendered chunk by chunk (the pixels are not kept)."""
    from slidepress.synthetic import digits as syn

    out = []
    for i in range(0, len(ims), chunk):
        block = [t.image if t.image is not None else syn.render(t.cell_digits, pool)
                 for t in ims[i : i + chunk]]  # fmt: skip
        out.append(syn.compress_images(block, embed))
    return np.concatenate(out)


def run_encoder(name: str, args: argparse.Namespace, data: dict[str, Any], settings) -> dict:
    """Train (or build) one encoder, compress every set, fit the slide CNN, test, Grad-CAM.
    Returns encoder info, results, timings and what the example figure needs."""
    import torch

    from slidepress.slidemodel import build_task, grad_cam
    from slidepress.slidemodel.fit import fit_model, predict_items
    from slidepress.synthetic import digits as syn

    timing: dict[str, float] = {}
    pools, sets = data["pools"], data["sets"]
    t0 = time.perf_counter()
    method = None
    if name == "mean":
        embed = syn.mean_intensity_embed
        info: dict[str, Any] = {"method": "mean intensity", "code_size": 1}
    else:
        log(f"[{name}] training the encoder ({args.encoder_steps} steps)")
        method, info = train_encoder(
            name, data["encoder"], args.encoder_steps, args.encoder_batch, args.seed,
            args.code_size, args.out / "encoders" / name,
        )  # fmt: skip
        info["code_size"] = args.code_size
        embed = syn.torch_embed_fn(method.embedder())
    timing["train encoder"] = time.perf_counter() - t0
    info["probe_accuracy"] = linear_probe(embed, pools["train"], pools["test"])
    log(f"[{name}] held-out {_fmt_logs(info.get('held_out', {}))} probe "
        f"{info['probe_accuracy']:.3f}")  # fmt: skip

    t0 = time.perf_counter()
    grids = {k: compress_set(v, pools[data["pool_of"][k]], embed) for k, v in sets.items()}
    mu = grids["train"].mean((0, 1, 2), dtype=np.float64).astype(np.float32)
    sd = grids["train"].std((0, 1, 2), dtype=np.float64).astype(np.float32) + 1e-6
    for g in grids.values():  # per-channel standardisation (train statistics), in place
        g -= mu
        g /= sd
    items = {k: grid_items(g, k) for k, g in grids.items()}
    timing["compress"] = time.perf_counter() - t0
    n_cells = sum(g.shape[0] * g.shape[1] * g.shape[2] for g in grids.values())
    log(f"[{name}] compressed {n_cells} cells in {timing['compress']:.1f} s")

    t0 = time.perf_counter()
    labels = {k: np.array([t.label for t in v]) for k, v in sets.items()}
    model, rows = fit_model(
        build_task("classify"), (items["train"], labels["train"]),
        (items["val"], labels["val"]), n_outputs=10, settings=settings,
        log=lambda m: log(f"  [{name}] {m}"),
    )  # fmt: skip
    timing["train CNN"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = predict_items(model, "classify", items["test"], settings).argmax(1)
    timing["predict"] = time.perf_counter() - t0
    val_pred = predict_items(model, "classify", items["val"], settings).argmax(1)

    t0 = time.perf_counter()
    cams, cm = [], {k: [] for k in CAM_KEYS}
    cam_model = cam_at(model, args.cam_layer)
    for it, img in zip(items["test"], sets["test"], strict=True):
        x = torch.from_numpy(np.ascontiguousarray(it.features.transpose(2, 0, 1)))[None]
        cam = grad_cam(cam_model, x)  # explains the predicted class
        cams.append(cam)
        for k, v in cam_metrics(cam, img).items():
            cm[k].append(v)
    timing["Grad-CAM"] = time.perf_counter() - t0
    res = summarise(pred, sets["test"], {k: np.array(v) for k, v in cm.items()})
    res["val_accuracy"] = float((val_pred == labels["val"]).mean())
    res["epochs"] = len(rows)
    res["best_epoch"] = int(np.argmax([r["val_auc"] for r in rows])) + 1
    res["log"] = rows
    log(
        f"[{name}] test accuracy {res['accuracy']:.3f} by size "
        + " ".join(f"{b['bin']}:{_f(b['accuracy'], '.2f')}" for b in res["by_size"])
        + f"  Jaccard top-k {res['jaccard_topk']:.3f} cam>=0.5 {res['jaccard_cam05']:.3f}"
    )
    classes = None
    if method is not None and name == "oracle":  # the oracle's reading of every test cell
        with torch.no_grad():
            flat = torch.from_numpy(grids["test"] * sd + mu).reshape(-1, args.code_size)
            classes = method.heads["digit"](flat).argmax(1).numpy().reshape(grids["test"].shape[:3])
    return {
        "info": info,
        "results": res,
        "timing": timing,
        "pred": pred,
        "jtop": np.array(cm["jaccard_topk"]),
        "cams": np.stack(cams),
        "test_grids": grids["test"] if classes is None else None,
        "classes": classes,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from slidepress.slidemodel.fit import FitSettings
    from slidepress.synthetic import digits as syn

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    names = [e.strip() for e in args.encoders.split(",") if e.strip()]
    unknown = sorted(set(names) - {"oracle", "vae", "bigan", "mean"})
    if unknown:
        raise SystemExit(f"unknown encoder(s) {', '.join(unknown)}")
    timing: dict[str, float] = {}
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    scfg = syn.SyntheticConfig(args.n_cells, args.density, args.min_area, args.max_area)
    train_pool, test_pool = syn.load_digit_pools(seed=args.seed)
    s = 1000 * args.seed
    sets = {  # ground truth only: pixels are rendered again when compressed (saves memory)
        "train": syn.make_images(train_pool, args.n_train, s + 1, scfg, render_image=False),
        "val": syn.make_images(train_pool, args.n_val, s + 2, scfg, render_image=False),
        "test": syn.make_images(test_pool, args.n_test, s + 3, scfg, render_image=False),
    }
    timing["generate images"] = time.perf_counter() - t0
    test = sets["test"]
    area = np.array([t.area_fraction for t in test])
    log(
        f"{args.n_train}/{args.n_val}/{args.n_test} images of {9 * args.n_cells} px "
        f"({timing['generate images']:.1f} s); test area fraction {area.min():.3f}.."
        f"{area.max():.3f}, per bin {np.bincount(size_bin(area), minlength=len(BIN_NAMES))}"
    )
    data = {
        "pools": {"train": train_pool, "test": test_pool},
        "pool_of": {"train": "train", "val": "train", "test": "test"},
        "sets": sets,
        "encoder": encoder_data(train_pool, test_pool),
    }
    settings = FitSettings(
        model="nic-cnn",
        model_options={"width": args.cnn_width, "dropout": args.cnn_dropout},
        crop=args.n_cells,  # the whole grid is one crop: the paper's fixed-size input
        batch_size=args.cnn_batch,
        steps_per_epoch=args.cnn_steps,
        epochs=args.cnn_epochs,
        lr=args.cnn_lr,
        patience=args.cnn_patience,
        tta_crops=1,
        tta_variants=args.tta_variants,
        seed=args.seed,
        device="cpu",
    )
    runs = {}
    for name in names:
        runs[name] = run_encoder(name, args, data, settings)
        for k, v in runs[name]["timing"].items():
            timing[f"{name}: {k}"] = v
    wall = time.perf_counter() - t_all

    # the example: a mid-size test image (~6 % of the area), correct under the first encoder
    first = runs[names[0]]
    mid = np.argsort(np.abs(np.log(area / 0.06)))
    good = [i for i in mid[:20] if first["pred"][i] == test[i].label]
    ex = int(good[0] if good else mid[0])
    img = dataclasses.replace(test[ex], image=syn.render(test[ex].cell_digits, test_pool))
    panels = []
    if "oracle" in runs:
        cls = runs["oracle"]["classes"][ex]
        panels.append(("oracle grid (argmax)", np.where(cls == 10, -1, cls), "classes"))
    else:
        g = next(r["test_grids"] for r in runs.values() if r["test_grids"] is not None)[ex]
        if g.shape[2] >= 3:
            from sklearn.decomposition import PCA

            p = PCA(3).fit_transform(g.reshape(-1, g.shape[2]))
            p = (p - p.min(0)) / (np.ptp(p, 0) + 1e-9)
            panels.append((f"{names[0]} grid (PCA)", p.reshape(*g.shape[:2], 3), "rgb"))
    panels.append(("truth: tilted (red), axis (blue)", truth_rgb(img), "rgb"))
    for name, r in runs.items():
        panels.append((f"Grad-CAM {name} (pred {r['pred'][ex]})", r["cams"][ex], "cam"))
    plot_example(
        img,
        panels,
        f"test image {ex}: label {img.label} (tilted {img.angle} deg, "
        f"{img.area_fraction:.1%} of the image), distractor class {img.axis_class}",
        args.out / "example.png",
    )

    rep = {
        "benchmark": "nic_synthetic",
        "config": {
            k: getattr(args, k)
            for k in (*DEFAULTS, "seed", "threads", "code_size", "cam_layer", "quick")
        },
        "synthetic_config": dataclasses.asdict(scfg),
        "digit_pools": {"train": len(train_pool), "test": len(test_pool)},
        "bins": {"edges": list(BIN_EDGES), "names": list(BIN_NAMES)},
        "fit_settings": settings.to_dict(),
        "encoders": {k: r["info"] for k, r in runs.items()},
        "results": {k: r["results"] for k, r in runs.items()},
        "timing_s": {k: round(v, 2) for k, v in timing.items()},
        "wall_s": round(wall, 1),
        "test_images": {
            "label": [t.label for t in test],
            "axis_class": [t.axis_class for t in test],
            "angle": [t.angle for t in test],
            "area_fraction": [round(t.area_fraction, 5) for t in test],
            "pred": {k: r["pred"].tolist() for k, r in runs.items()},
            "jaccard_topk": {k: np.round(r["jtop"], 4).tolist() for k, r in runs.items()},
        },
        "example_index": ex,
        "platform": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "load_avg_end": os.getloadavg(),
            "commit": git_commit(),
        },
    }
    (args.out / "results.json").write_text(json.dumps(rep, indent=1, default=float))
    md = markdown(rep)
    (args.out / "results.md").write_text(md)
    plot_accuracy(rep, args.out / "accuracy_by_size.png")
    print(md)
    print(f"wrote {args.out}/results.json, results.md, accuracy_by_size.png, example.png")
    return 0


def _fmt_logs(d: dict) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in d.items() if isinstance(v, float))


if __name__ == "__main__":
    sys.exit(main())
