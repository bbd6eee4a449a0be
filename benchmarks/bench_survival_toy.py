"""Survival toy benchmark on real tissue: a Cox head on NIC grids of PCam mosaics.

The slides are the mosaics of bench_weak_label.py (`slidepress.synthetic.mosaic`; by default 75 %
of them hold one tumour region of 2-40 % of the tissue). Each slide gets a toy outcome driven
by its tumour burden b = tumour cells / tissue cells (`mosaic.survival_outcomes`):
z = b standardised over the CV cohort, event time T ~ Exponential(rate = base * exp(beta z)),
censoring C ~ Exponential(censor rate), administrative censoring at the follow-up time;
observed time = min(T, C, follow-up), event = T came first.

The slide models learn a log-risk with the Cox partial likelihood (`slidemodel.tasks`) and are
scored by the out-of-fold C-index of k-fold CV (bootstrap 95 % CI) and the log-rank p of the
high/low risk groups (median split within each fold; km.png), next to the ceiling: the C-index
of the true log-hazard, which the noise of the exponential times keeps well below 1. An
external cohort from PCam valid patches (outcomes on the same hazard scale) is scored with
the fold ensemble. Patches: as in bench_weak_label.py (disjoint per fold, never seen by the
encoder).

Writes .bench/survival_toy/{results.json,results.md,km_<encoder>_<model>.png} and the run
folders.

    python benchmarks/bench_survival_toy.py --quick   # smoke run, < 1 min (survival_toy_quick/)
    python benchmarks/bench_survival_toy.py            # reference: 200 + 100 slides of 24 x 24
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

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

OUT = BENCH_DIR / "survival_toy"


def c_index(risk: np.ndarray, targets: np.ndarray) -> float:
    from lifelines.utils import concordance_index

    return float(concordance_index(targets[:, 0], -risk, targets[:, 1].astype(bool)))


def c_index_ci(risk: np.ndarray, targets: np.ndarray, n: int, seed: int) -> tuple[float, list]:
    from slidepress.metrics.stats import bootstrap_ci

    ci = bootstrap_ci(lambda t, r: c_index(r, t), targets, risk, n=n, seed=seed)
    return c_index(risk, targets), list(ci)


def logrank_median(risk: np.ndarray, targets: np.ndarray) -> float:
    from lifelines.statistics import logrank_test

    high = risk > np.median(risk)
    t, e = targets[:, 0], targets[:, 1].astype(bool)
    return float(
        logrank_test(t[high], t[~high], event_observed_A=e[high], event_observed_B=e[~high]).p_value
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap, OUT)
    ap.set_defaults(slides=200, test_slides=100, floor="")
    ap.add_argument("--positive-fraction", type=float, default=0.75)
    ap.add_argument("--beta", type=float, default=1.0, help="log-hazard per SD of burden")
    ap.add_argument("--base-rate", type=float, default=1 / 24, help="hazard at mean burden")
    ap.add_argument("--censor-rate", type=float, default=1 / 60)
    ap.add_argument("--follow-up", type=float, default=120.0)
    args = ap.parse_args(argv)
    if args.quick:
        apply_quick(args)
        args.slides, args.test_slides = 40, 20
    if not start_run(args, OUT):
        return 2
    from slidepress.slidemodel.cv import predict_run
    from slidepress.slidemodel.data import Labels
    from slidepress.synthetic import mosaic as M

    t_start = time.perf_counter()
    train, valid = pcam_tables(args.encoder, args.unseen_by, args.pool)
    cfg, cv, test = build_cohorts(args, train, valid, args.positive_fraction)
    scfg = M.SurvivalConfig(args.beta, args.base_rate, args.censor_rate, args.follow_up)
    b_cv = np.array([m.burden for m in cv])
    b_test = np.array([m.burden for m in test])
    ref = (float(b_cv.mean()), float(b_cv.std()))
    t_cv, e_cv, lh_cv = M.survival_outcomes(b_cv, np.random.default_rng([args.seed, 7]), scfg)
    t_te, e_te, lh_te = M.survival_outcomes(
        b_test, np.random.default_rng([args.seed, 8]), scfg, reference=ref
    )
    y_cv, y_te = np.stack([t_cv, e_cv], 1), np.stack([t_te, e_te], 1)
    labels = Labels("survival", [m.slide for m in cv], y_cv, [], np.array([m.fold for m in cv]))
    oracle_cv, oracle_cv_ci = c_index_ci(lh_cv, y_cv, args.bootstrap, args.seed)
    oracle_te = c_index(lh_te, y_te)
    fold_of = np.array([m.fold for m in cv])
    oracle_folds = float(
        np.mean([c_index(lh_cv[fold_of == f], y_cv[fold_of == f]) for f in range(args.folds)])
    )
    log(f"cohorts: {len(cv)} CV + {len(test)} test slides; events {e_cv.mean():.0%} / "
        f"{e_te.mean():.0%}; oracle C-index {oracle_cv:.3f} / {oracle_te:.3f}")  # fmt: skip

    encoders = [args.encoder] + ([args.floor] if args.floor else [])
    results, encode_s = [], {}
    for enc_name in encoders:
        log(f"encoder {enc_name}")
        enc, secs = encode_tables(enc_name, [train, valid], [used_ids(cv), used_ids(test)])
        encode_s[enc_name] = secs
        items_cv, items_te = make_items(cv, train, enc), make_items(test, valid, enc)
        for model in [s for s in args.models.split(",") if s]:
            name = f"{enc_name}/{model}"
            log(f"  {name}: {args.folds}-fold CV")
            tag = f"{enc_name.replace(':', '_')}_{model}"
            run_dir = args.out / "runs" / tag
            metrics, fit_s = run_cv(items_cv, labels, args, fit_settings(args, model), run_dir)
            risk_cv = oof_risk(run_dir, labels.slides)
            risk_te = predict_run(run_dir, items_te)[0][:, 0]
            c_te, c_te_ci = c_index_ci(risk_te, y_te, args.bootstrap, args.seed)
            shutil.copyfile(run_dir / "km.png", args.out / f"km_{tag}.png")
            res = {
                "name": name, "encoder": enc_name, "model": model,
                "cv_c_index": metrics["out_of_fold"]["c_index"],
                "cv_c_index_ci95": metrics["ci95"]["c_index"],
                "cv_logrank_p": metrics["risk_groups"]["logrank_p"],
                "per_fold": metrics["per_fold"],
                "cv_c_index_fold_mean": float(
                    np.nanmean([f.get("c_index", np.nan) for f in metrics["per_fold"]])
                ),
                "cv_spearman_risk_burden": spearman(risk_cv, b_cv),
                "test_c_index": c_te, "test_c_index_ci95": c_te_ci,
                "test_logrank_p": logrank_median(risk_te, y_te),
                "test_spearman_risk_burden": spearman(risk_te, b_test),
                "fit_s": round(fit_s, 1), "run_dir": str(run_dir),
            }  # fmt: skip
            results.append(res)
            log(f"    CV C-index {fmt_ci(res['cv_c_index'], res['cv_c_index_ci95'])}, "
                f"log-rank p {res['cv_logrank_p']:.2g}, test C-index {c_te:.3f}, "
                f"{fit_s:.0f} s")  # fmt: skip
    report = {
        "benchmark": "survival_toy",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "mosaic": {"n": cfg.n, "tissue_fraction": cfg.tissue_fraction,
                   "tumour_fraction": cfg.tumour_fraction},
        "survival": {"beta": scfg.beta, "base_rate": scfg.base_rate,
                     "censor_rate": scfg.censor_rate, "follow_up": scfg.follow_up,
                     "burden_reference": ref},
        "cohorts": {
            "cv": {"slides": len(cv), "positive": int(sum(m.label for m in cv)),
                   "events": float(e_cv.mean()), "median_time": float(np.median(t_cv)),
                   "oracle_c_index": oracle_cv, "oracle_c_index_ci95": oracle_cv_ci,
                   "oracle_c_index_fold_mean": oracle_folds},
            "test": {"slides": len(test), "positive": int(sum(m.label for m in test)),
                     "events": float(e_te.mean()), "oracle_c_index": oracle_te},
        },
        "encode_s": encode_s,
        "results": results,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "environment": environment(),
    }  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(report, indent=2, default=plain) + "\n")
    md = markdown(report)
    (args.out / "results.md").write_text(md)
    print(md)
    return 0


def oof_risk(run_dir: Path, slides: list[str]) -> np.ndarray:
    import csv

    with open(run_dir / "predictions.csv", newline="") as f:
        risk = {r["slide"]: float(r["risk"]) for r in csv.DictReader(f)}
    return np.array([risk[s] for s in slides])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def markdown(rep: dict) -> str:
    c, s, co = rep["config"], rep["survival"], rep["cohorts"]
    lines = [
        "# Survival toy: Cox head on PCam mosaics, hazard driven by tumour burden",
        "",
        f"CV cohort {co['cv']['slides']} slides ({co['cv']['positive']} with tumour, PCam "
        f"train, {c['folds']} folds with disjoint patch pools), test cohort "
        f"{co['test']['slides']} slides (PCam valid); {c['grid']} x {c['grid']} cells. "
        f"T ~ Exp(rate {s['base_rate']:.4g} * exp({s['beta']:g} z)), z = standardised burden; "
        f"censoring Exp(rate {s['censor_rate']:.4g}), follow-up {s['follow_up']:g}; events "
        f"{co['cv']['events']:.0%} (CV) / {co['test']['events']:.0%} (test). Training: crop "
        f"{c['crop'] or c['grid']}, batch {c['batch']}, {c['steps']} steps/epoch, <= "
        f"{c['epochs']} epochs, patience {c['patience']}. Wall time {rep['wall_s'] / 60:.1f} "
        "min.",
        "",
        f"Ceiling (C-index of the true log-hazard): CV "
        f"{fmt_ci(co['cv']['oracle_c_index'], co['cv']['oracle_c_index_ci95'])} (fold mean "
        f"{co['cv']['oracle_c_index_fold_mean']:.3f}), test "
        f"{co['test']['oracle_c_index']:.3f}.",
        "",
        "CV C-index: out of fold, pooling the risks of the k fold models (their scales differ, "
        "which costs concordance across folds); fold mean: the mean of the k within-fold "
        "C-indices; test: the fold ensemble on the test cohort.",
        "",
        "| encoder / model | CV C-index [95% CI] | fold mean | CV log-rank p | "
        "test C-index [95% CI] | test log-rank p | Spearman(risk, burden) CV / test | fit s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rep["results"]:
        lines.append(
            f"| {r['name']} | {fmt_ci(r['cv_c_index'], r['cv_c_index_ci95'])} | "
            f"{r['cv_c_index_fold_mean']:.3f} | {r['cv_logrank_p']:.2g} | "
            f"{fmt_ci(r['test_c_index'], r['test_c_index_ci95'])} | "
            f"{r['test_logrank_p']:.2g} | {r['cv_spearman_risk_burden']:.3f} / "
            f"{r['test_spearman_risk_burden']:.3f} | {r['fit_s']:.0f} |"
        )
    enc = ", ".join(f"{k} {v:.0f} s" for k, v in rep["encode_s"].items())
    lines += ["", f"Patch encoding (cached after the first run): {enc}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
