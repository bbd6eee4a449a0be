"""Weak-label slide benchmark on real tissue: NIC grids of PCam mosaics, slide labels only.

Neural Image Compression (Tellez et al., TPAMI 2019 / MIDL 2020): every slide is an n x n mosaic
of real PatchCamelyon patches inside an irregular tissue mask (`slidepress.synthetic.mosaic`);
positive slides hold one contiguous region of metastasis patches (2-40 % of the tissue,
log-uniform), negatives none. The slide-level models (NIC CNN, gated attention MIL) learn
"tumour present" from the (n, n, C) grids and are scored by

- out-of-fold AUC of k-fold cross-validation (TPAMI rotation, `slidemodel.cv.cross_validate`)
  with a bootstrap 95 % CI, and by tumour size bin (positives of the bin vs all negatives);
- AUC of the k fold models as an ensemble on an external test cohort (mosaics of PCam *valid*
  patches: other patients than PCam train);
- Grad-CAM localisation on positive slides (CV: the fold model that did not see the slide;
  test: `slidemodel.cv.heatmap_run`, the fold ensemble): IoU of the top-k cells (k = true
  tumour size) with the tumour, the fraction of CAM mass on it and whether the peak is on
  it, each next to its chance level (k random tissue cells / a uniform map).

Patches: PCam train files for the CV cohort, PCam valid files for the test cohort, both minus
the files the shipped NIC encoders were trained or early-stopped on (`encoder_pcam_files`),
so no slide shows a patch the encoder saw. In the CV cohort each fold draws from its own
disjoint share of the patches: no patch is shared between folds. Each patch is encoded once
(codes cached in .bench/mosaic_codes/), grids are assembled from the codes (equal to encoding
the rendered mosaic, see tests/test_mosaic.py). The CV grids are also written as .npz with a
labels.csv (fold column), so `slidepress train slide-model` can be run on them.

Writes .bench/weak_label/{results.json,results.md,example_heatmap.png,auc_by_size.png} and the
run folders (runs/<encoder>_<model>/: predictions.csv, metrics.json, curves.png, fold models).

    python benchmarks/bench_weak_label.py --quick     # smoke run, < 2 min (weak_label_quick/)
    python benchmarks/bench_weak_label.py             # reference: 160 + 80 slides of 24 x 24

One file on purpose (over the ~450-line guide): the script reads top to bottom as the
experiment; what it shares with bench_survival_toy.py is in pcam_cohorts.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import BENCH_DIR, log
from pcam_cohorts import (
    add_common_args,
    apply_quick,
    build_cohorts,
    encode_tables,
    environment,
    fit_settings,
    fmt_ci,
    make_items,
    pcam_tables,
    plain,
    run_cv,
    start_run,
    used_ids,
)

OUT = BENCH_DIR / "weak_label"
SIZE_BINS = ((0.0, 0.05), (0.05, 0.10), (0.10, 0.20), (0.20, 1.0))


def write_grids(cohort, items, labels_rows: list[dict], folder: Path) -> None:
    """Grid files (.npz) + labels.csv for `slidepress train slide-model`."""
    from slidepress.store import EmbeddingGrid, write_grid
    from slidepress.synthetic.mosaic import CELL_PX

    if folder.exists():
        shutil.rmtree(folder)  # no stale grids of an earlier cohort
    folder.mkdir(parents=True)
    for m, it in zip(cohort, items, strict=True):
        g = EmbeddingGrid.from_features(it.features, it.mask, CELL_PX, it.metadata)
        write_grid(g, folder / f"{m.slide}.npz")
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(labels_rows[0]))
        w.writeheader()
        w.writerows(labels_rows)


# -- weak-label specifics ---------------------------------------------------------------------


def read_predictions(run_dir: Path, slides: list[str]) -> np.ndarray:
    with open(run_dir / "predictions.csv", newline="") as f:
        prob = {r["slide"]: float(r["prob_tumour"]) for r in csv.DictReader(f)}
    return np.array([prob[s] for s in slides])


def auc_ci(prob: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> tuple[float, list]:
    from sklearn.metrics import roc_auc_score

    from slidepress.metrics.stats import bootstrap_ci

    ci = bootstrap_ci(roc_auc_score, y, prob, n=n_boot, seed=seed, stratify=y)
    return float(roc_auc_score(y, prob)), list(ci)


def auc_by_size(prob: np.ndarray, y: np.ndarray, burden: np.ndarray) -> list[dict]:
    from sklearn.metrics import roc_auc_score

    out = []
    neg = y == 0
    for lo, hi in SIZE_BINS:
        pos = (y == 1) & (burden >= lo) & (burden < hi)
        auc = math.nan
        if pos.any() and neg.any():
            sel = pos | neg
            auc = float(roc_auc_score(y[sel], prob[sel]))
        sens = float((prob[pos] > 0.5).mean()) if pos.any() else math.nan
        out.append({"bin": f"{100 * lo:g}-{100 * hi:g}%", "n_pos": int(pos.sum()), "auc": auc,
                    "sensitivity@0.5": sens})  # fmt: skip
    return out


def patch_probe_reference(cv, test, train, valid, folds: int) -> dict:
    """Context with *patch* labels (which the slide models never see): a logistic-regression
    probe on the codes of the patches in the CV slides of the other folds scores every cell;
    slide score = max cell probability, or the fraction of cells above 0.5. Out-of-fold on the
    CV cohort; trained on all CV patches for the test cohort."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(cohort):
        ids = np.unique(used_ids(cohort))
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        return clf.fit(train.codes[ids], train.labels[ids])

    def scores(clf, cohort, table) -> np.ndarray:
        out = []
        for m in cohort:
            p = clf.predict_proba(table.codes[m.cells[m.tissue]])[:, 1]
            out.append((p.max(), (p > 0.5).mean()))
        return np.array(out)

    s_cv = np.zeros((len(cv), 2))
    fold_of = np.array([m.fold for m in cv])
    for f in range(folds):
        clf = fit([m for m in cv if m.fold != f])
        idx = np.flatnonzero(fold_of == f)
        s_cv[idx] = scores(clf, [cv[i] for i in idx], train)
    clf = fit(cv)
    s_te = scores(clf, test, valid)
    ids_te = np.unique(used_ids(test))
    y_cv, y_te = np.array([m.label for m in cv]), np.array([m.label for m in test])
    return {
        "patch_auc_test_patches": float(
            roc_auc_score(valid.labels[ids_te], clf.predict_proba(valid.codes[ids_te])[:, 1])
        ),
        "slide_auc_max_cell": [float(roc_auc_score(y_cv, s_cv[:, 0])),
                               float(roc_auc_score(y_te, s_te[:, 0]))],
        "slide_auc_fraction_positive": [float(roc_auc_score(y_cv, s_cv[:, 1])),
                                        float(roc_auc_score(y_te, s_te[:, 1]))],
    }  # fmt: skip


def cam_overlap(cam: np.ndarray, tissue: np.ndarray, tumour: np.ndarray, rng) -> dict:
    """Localisation of one heatmap vs the true tumour, each with its chance level."""
    k, n = int(tumour.sum()), int(tissue.sum())
    vals = cam[tissue]
    truth = tumour[tissue]
    top = np.zeros(n, bool)
    top[np.argsort(-vals, kind="stable")[:k]] = True
    inter = int((top & truth).sum())
    iou = inter / (2 * k - inter)
    rand = []
    for _ in range(200):
        r = np.zeros(n, bool)
        r[rng.choice(n, k, replace=False)] = True
        i = int((r & truth).sum())
        rand.append(i / (2 * k - i))
    mass = float(vals[truth].sum() / vals.sum()) if vals.sum() > 0 else math.nan
    return {"k": k, "n_tissue": n, "iou_topk": iou, "iou_chance": float(np.mean(rand)),
            "mass_in": mass, "mass_chance": k / n, "peak_in": bool(truth[np.argmax(vals)]),
            "peak_chance": k / n}  # fmt: skip


def summarise_cams(rows: list[dict]) -> dict:
    if not rows:
        return {}
    keys = ("iou_topk", "iou_chance", "mass_in", "mass_chance", "peak_in", "peak_chance")
    out: dict[str, Any] = {"n_slides": len(rows)}
    for k in keys:
        out[k] = float(np.nanmean([float(r[k]) for r in rows]))
    return out


def gradcam_cv(run_dir: Path, cohort, items) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Grad-CAM of every positive CV slide by the fold model that held it out."""
    import torch

    from slidepress.slidemodel.cv import load_run
    from slidepress.slidemodel.gradcam import grad_cam

    models, config = load_run(run_dir)
    rng = np.random.default_rng(0)
    rows, maps = [], {}
    for m, it in zip(cohort, items, strict=True):
        if not m.label:
            continue
        f = config["slides"][m.slide]
        x = torch.from_numpy(np.ascontiguousarray(it.features.transpose(2, 0, 1)))[None]
        cam = grad_cam(models[f], x, mask=torch.from_numpy(it.mask)[None], target=1)
        maps[m.slide] = cam
        rows.append({"slide": m.slide, **cam_overlap(cam, m.tissue, m.tumour, rng)})
    return rows, maps


def gradcam_test(run_dir: Path, cohort, items) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Grad-CAM of every positive test slide by the fold ensemble (`heatmap_run`)."""
    from slidepress.slidemodel.cv import heatmap_run

    rng = np.random.default_rng(1)
    rows, maps = [], {}
    for m, it in zip(cohort, items, strict=True):
        if m.label:
            cam = heatmap_run(run_dir, it)
            maps[m.slide] = cam
            rows.append({"slide": m.slide, **cam_overlap(cam, m.tissue, m.tumour, rng)})
    return rows, maps


def example_png(mosaic, table, enc_name: str, cams: dict[str, np.ndarray], path: Path) -> None:
    """Rendered mosaic (real pixels), true tumour mask and each model's Grad-CAM."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slidepress.synthetic import mosaic as M
    from slidepress.synthetic import pcam

    def pixels(ids: np.ndarray) -> np.ndarray:
        return pcam.load_patches([table.files[i] for i in ids], None, M.CELL_PX)

    img = M.render(mosaic, pixels)[::4, ::4]
    panels = 2 + len(cams)
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.4))
    axes[0].imshow(img)
    axes[0].set_title(f"{mosaic.slide}: PCam mosaic", fontsize=9)
    truth = np.where(mosaic.tissue, 0.25, 0.0) + np.where(mosaic.tumour, 0.75, 0.0)
    axes[1].imshow(truth, cmap="magma", vmin=0, vmax=1)
    axes[1].set_title(f"true tumour ({100 * mosaic.burden:.1f}% of tissue)", fontsize=9)
    for ax, (name, cam) in zip(axes[2:], cams.items(), strict=True):
        shown = np.where(mosaic.tissue, cam, np.nan)
        ax.imshow(shown, cmap="jet", vmin=0, vmax=1)
        ax.contour(mosaic.tumour.astype(float), levels=[0.5], colors="white", linewidths=1)
        ax.set_title(f"Grad-CAM {name} ({enc_name})", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def size_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in rows:
        bins = [b["bin"] for b in r["auc_by_size"]]
        ax.plot(bins, [b["auc"] for b in r["auc_by_size"]], "o-", label=r["name"])
    ax.set_xlabel("tumour size (fraction of tissue cells)")
    ax.set_ylabel("out-of-fold AUC (bin positives vs all negatives)")
    ax.set_ylim(0.4, 1.02)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap, OUT)
    ap.add_argument("--no-grids", action="store_true", help="skip writing grid files")
    args = ap.parse_args(argv)
    if args.quick:
        apply_quick(args)
    if not start_run(args, OUT):
        return 2
    from slidepress.slidemodel.cv import predict_run
    from slidepress.slidemodel.data import Labels

    t_start = time.perf_counter()
    train, valid = pcam_tables(args.encoder, args.unseen_by, args.pool)
    cfg, cv, test = build_cohorts(args, train, valid)
    src = POOL_SOURCES[args.pool]
    log(f"cohorts: {len(cv)} CV slides ({src[0]}, {args.folds} folds, disjoint patch pools), "
        f"{len(test)} test slides ({src[1]}), {cfg.n} x {cfg.n} cells")  # fmt: skip
    y_cv = np.array([m.label for m in cv])
    y_test = np.array([m.label for m in test])
    b_cv = np.array([m.burden for m in cv])
    labels = Labels("classify", [m.slide for m in cv], y_cv, ["normal", "tumour"],
                    np.array([m.fold for m in cv]))  # fmt: skip
    encoders = [args.encoder] + ([args.floor] if args.floor else [])
    models = [s for s in args.models.split(",") if s]
    results: list[dict] = []
    # the heatmap example: a mid-sized test lesion (5-20 % of the tissue) when there is one
    pos = [m for m in test if m.label]
    example = next((m for m in pos if 0.05 <= m.burden < 0.2), pos[0])
    example_cams: dict[str, np.ndarray] = {}
    encode_s: dict[str, float] = {}
    references: dict[str, dict] = {}
    for enc_name in encoders:
        log(f"encoder {enc_name}")
        enc, secs = encode_tables(enc_name, [train, valid], [used_ids(cv), used_ids(test)])
        encode_s[enc_name] = secs
        items_cv, items_test = make_items(cv, train, enc), make_items(test, valid, enc)
        references[enc_name] = patch_probe_reference(cv, test, train, valid, args.folds)
        if enc_name == args.encoder and not args.no_grids:
            rows = [{"slide": m.slide, "label": ["normal", "tumour"][m.label], "fold": m.fold}
                    for m in cv]  # fmt: skip
            write_grids(cv, items_cv, rows, args.out / "grids" / enc_name.replace(":", "_"))
        for model in models:
            name = f"{enc_name}/{model}"
            log(f"  {name}: {args.folds}-fold CV")
            run_dir = args.out / "runs" / f"{enc_name.replace(':', '_')}_{model}"
            metrics, fit_s = run_cv(items_cv, labels, args, fit_settings(args, model), run_dir)
            prob = read_predictions(run_dir, labels.slides)
            auc, ci = metrics["out_of_fold"]["auc"], metrics["ci95"]["auc"]  # bootstrap, stratified
            t0 = time.perf_counter()
            out_test, _ = predict_run(run_dir, items_test)
            p_test = np.exp(out_test[:, 1]) / np.exp(out_test).sum(1)
            auc_t, ci_t = auc_ci(p_test, y_test, args.bootstrap, args.seed)
            cam_cv, _ = gradcam_cv(run_dir, cv, items_cv)
            cam_t, maps_t = gradcam_test(run_dir, test, items_test)
            if enc_name == args.encoder:
                example_cams[model] = maps_t[example.slide]
            res = {
                "name": name, "encoder": enc_name, "model": model,
                "cv_auc": auc, "cv_auc_ci95": ci, "cv_accuracy": metrics["out_of_fold"].get(
                    "accuracy"),
                "per_fold": metrics["per_fold"],
                "auc_by_size": auc_by_size(prob, y_cv, b_cv),
                "test_auc": auc_t, "test_auc_ci95": ci_t,
                "test_auc_by_size": auc_by_size(p_test, y_test,
                                                np.array([m.burden for m in test])),
                "gradcam_cv": summarise_cams(cam_cv), "gradcam_test": summarise_cams(cam_t),
                "epochs_per_fold": epochs_run(run_dir, args.folds),
                "fit_s": round(fit_s, 1), "eval_s": round(time.perf_counter() - t0, 1),
                "run_dir": str(run_dir),
            }  # fmt: skip
            results.append(res)
            log(f"    CV AUC {fmt_ci(auc, ci)}, test AUC {fmt_ci(auc_t, ci_t)}, "
                f"{fit_s:.0f} s")  # fmt: skip
    wall = time.perf_counter() - t_start
    if example_cams:
        example_png(example, valid, args.encoder, example_cams, args.out / "example_heatmap.png")
    size_plot(results, args.out / "auc_by_size.png")
    report = {
        "benchmark": "weak_label",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "mosaic": {"n": cfg.n, "tissue_fraction": cfg.tissue_fraction,
                   "tumour_fraction": cfg.tumour_fraction, "smooth": cfg.smooth},
        "cohorts": cohort_summary(cv, test, train, valid),
        "encode_s": encode_s,
        "patch_label_reference": references,
        "results": results,
        "wall_s": round(wall, 1),
        "environment": environment(),
    }  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(report, indent=2, default=plain) + "\n")
    md = markdown(report)
    (args.out / "results.md").write_text(md)
    print(md)
    return 0


def epochs_run(run_dir: Path, folds: int) -> list[int]:
    out = []
    for i in range(folds):
        with open(run_dir / f"fold{i}" / "log.csv", newline="") as f:
            out.append(sum(1 for _ in csv.DictReader(f)))
    return out


def cohort_summary(cv, test, train, valid) -> dict:
    def one(c, tab) -> dict:
        pos = [m for m in c if m.label]
        return {"slides": len(c), "positive": len(pos),
                "tissue_cells_mean": float(np.mean([m.n_tissue for m in c])),
                "tumour_cells_median": float(np.median([m.n_tumour for m in pos])) if pos else 0,
                "burden_range": [float(min(m.burden for m in pos)),
                                 float(max(m.burden for m in pos))] if pos else [],
                "positives_by_size": {f"{100 * lo:g}-{100 * hi:g}%": sum(
                    lo <= m.burden < hi for m in pos) for lo, hi in SIZE_BINS},
                "patch_pool": tab.source,
                "distinct_patches": int(len(np.unique(used_ids(c))))}  # fmt: skip

    return {"cv": one(cv, train), "test": one(test, valid)}


# where each --pool draws the (CV, test) cohorts' patches: the log and the report say it
POOL_SOURCES = {
    "train": ("PCam train", "PCam valid"),
    "valid": ("unseen PCam valid, half 1", "unseen PCam valid, half 2"),
}


def markdown(rep: dict) -> str:
    c = rep["config"]
    co = rep["cohorts"]
    src = POOL_SOURCES[c.get("pool", "train")]
    lines = [
        "# Weak-label benchmark: PCam mosaics, slide labels only",
        "",
        f"CV cohort {co['cv']['slides']} slides ({co['cv']['positive']} positive, {src[0]}, "
        f"{c['folds']} folds with disjoint patch pools), test cohort {co['test']['slides']} "
        f"slides ({co['test']['positive']} positive, {src[1]}); {c['grid']} x {c['grid']} "
        f"cells of 64 px at 0.97 um/px, ~{co['cv']['tissue_cells_mean']:.0f} tissue cells per "
        f"slide; tumour 2-40 % of the tissue (log-uniform, stratified). Training: crop "
        f"{c['crop'] or c['grid']}, batch {c['batch']}, {c['steps']} steps/epoch, <= "
        f"{c['epochs']} epochs, patience {c['patience']}, lr {c['lr']}, seed {c['seed']}. "
        f"Wall time {rep['wall_s'] / 60:.1f} min ({rep['environment']['threads']} torch "
        "thread(s)).",
        "",
        "| encoder / model | CV AUC [95% CI] | test AUC [95% CI] | CV acc | epochs/fold | fit s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rep["results"]:
        lines.append(
            f"| {r['name']} | {fmt_ci(r['cv_auc'], r['cv_auc_ci95'])} | "
            f"{fmt_ci(r['test_auc'], r['test_auc_ci95'])} | {r['cv_accuracy']:.3f} | "
            f"{','.join(map(str, r['epochs_per_fold']))} | {r['fit_s']:.0f} |"
        )
    bins = [b["bin"] for b in rep["results"][0]["auc_by_size"]] if rep["results"] else []
    npos = [b["n_pos"] for b in rep["results"][0]["auc_by_size"]] if rep["results"] else []
    lines += ["", "Out-of-fold AUC by tumour size (positives of the bin vs all negatives; "
              "CV cohort / test cohort):", "",
              "| encoder / model | " + " | ".join(f"{b} (n={n})" for b, n in
                                                  zip(bins, npos, strict=True)) + " |",
              "|---|" + "---|" * len(bins)]  # fmt: skip
    for r in rep["results"]:
        cells = [
            f"{a['auc']:.3f} / {t['auc']:.3f}"
            for a, t in zip(r["auc_by_size"], r["test_auc_by_size"], strict=True)
        ]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    lines += ["", "Grad-CAM on positive slides (CV: held-out fold model; test: fold ensemble). "
              "top-k IoU: the k highest cells vs the k true tumour cells; mass: share of CAM "
              "on the tumour; peak: max cell on the tumour. Chance: k random tissue cells / a "
              "uniform map.", "",
              "| encoder / model | set | top-k IoU (chance) | mass in (chance) | "
              "peak in (chance) |", "|---|---|---|---|---|"]  # fmt: skip
    for r in rep["results"]:
        for key, tag in (("gradcam_cv", "CV"), ("gradcam_test", "test")):
            g = r[key]
            if g:
                lines.append(
                    f"| {r['name']} | {tag} (n={g['n_slides']}) | {g['iou_topk']:.3f} "
                    f"({g['iou_chance']:.3f}) | {g['mass_in']:.3f} ({g['mass_chance']:.3f}) | "
                    f"{g['peak_in']:.3f} ({g['peak_chance']:.3f}) |"
                )
    lines += ["", "Reference with patch labels (not available to the slide models): a linear "
              "probe on the patch codes (trained on the other folds' patches), slide score = "
              "max cell probability or fraction of cells > 0.5; AUC CV / test.", "",
              "| encoder | patch AUC (test patches) | slide AUC, max cell | "
              "slide AUC, fraction > 0.5 |", "|---|---|---|---|"]  # fmt: skip
    for name, ref in rep["patch_label_reference"].items():
        mx, fr = ref["slide_auc_max_cell"], ref["slide_auc_fraction_positive"]
        lines.append(
            f"| {name} | {ref['patch_auc_test_patches']:.3f} | {mx[0]:.3f} / {mx[1]:.3f} | "
            f"{fr[0]:.3f} / {fr[1]:.3f} |"
        )
    enc = ", ".join(f"{k} {v:.0f} s" for k, v in rep["encode_s"].items())
    lines += ["", f"Patch encoding (cached after the first run): {enc}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
