"""k-fold cross-validation with the TPAMI 2019 rotation (fold i tests, fold i+1 validates,
the rest trains), out-of-fold predictions, bootstrap CIs, Kaplan-Meier risk groups, and the
run folder that `predict` and `heatmap` load (the k fold models form an ensemble).

Run folder: config.json, fold{i}/model.safetensors + fold{i}/log.csv, predictions.csv
(out-of-fold), metrics.json, curves.png, and km.png for survival.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import UsageError
from ..store.atomic import atomic_path, save_figure, write_csv, write_json
from .data import GridItem, Labels
from .fit import FitSettings, fit_model, predict_items

FORMAT = "slidepress-slide-model/1"


def assign_folds(labels: Labels, k: int, seed: int) -> np.ndarray:
    """The CSV's `fold` column when given, else seeded folds stratified by class / event /
    value quantile, so every fold sees every kind of slide."""
    if labels.folds is not None:
        uniq = np.unique(labels.folds)
        if len(uniq) < 3:
            raise UsageError("the fold column needs at least 3 folds (test, val, train rotate)")
        return np.searchsorted(uniq, labels.folds)
    n = len(labels.slides)
    if k < 3 or k > n:
        raise UsageError(f"--folds must be within 3..{n} (number of slides), got {k}")
    rng = np.random.default_rng(seed)
    if labels.task == "classify":
        strata = labels.targets
    elif labels.task == "survival":
        strata = labels.targets[:, 1].astype(int)
    else:
        strata = np.searchsorted(np.quantile(labels.targets, [0.25, 0.5, 0.75]), labels.targets)
    folds = np.empty(n, np.int64)
    offset = 0
    for s in np.unique(strata):
        idx = rng.permutation(np.flatnonzero(strata == s))
        folds[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)
    return folds


def prediction_rows(task, classes: list[str], outputs: np.ndarray, slides: list[str]) -> list[dict]:
    """One CSV row per slide; class indices and probability columns named by class."""
    cols = task.prediction_columns(outputs)
    rows = []
    for j, s in enumerate(slides):
        row = {"slide": s}
        for c, v in cols.items():
            val = v[j].item() if hasattr(v[j], "item") else v[j]
            if classes and c == "predicted":
                val = classes[int(val)]
            elif classes and c.startswith("prob_"):
                c = f"prob_{classes[int(c[5:])]}"
            row[c] = val
        rows.append(row)
    return rows


def target_columns(labels: Labels, i: int) -> dict:
    t = labels.targets[i]
    if labels.task == "classify":
        return {"label": labels.classes[int(t)]}
    if labels.task == "regress":
        return {"value": float(t)}
    return {"time": float(t[0]), "event": int(t[1])}


def cross_validate(
    items: list[GridItem],
    labels: Labels,
    folds: int,
    settings: FitSettings,
    out_dir: Path,
    *,
    n_bootstrap: int = 1000,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    from .tasks import bootstrap_ci, build_task

    task = build_task(labels.task)
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        raise UsageError(f"{out_dir} already holds a run; choose another folder")
    fold_of = assign_folds(labels, folds, settings.seed)
    k = int(fold_of.max()) + 1
    n_out = task.n_outputs(len(labels.classes))
    in_ch = items[0].features.shape[2]
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "task": labels.task,
        "classes": labels.classes,
        "n_outputs": n_out,
        "in_channels": in_ch,
        "folds": k,
        "settings": settings.to_dict(),
        "slides": {s: int(f) for s, f in zip(labels.slides, fold_of, strict=True)},
        "encoder": items[0].metadata.get("encoder"),
        "grid": items[0].metadata.get("grid"),
        "software": {"slidepress": __version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }  # fmt: skip
    oof = np.zeros((len(items), n_out), np.float32)
    fold_metrics, all_rows = [], []
    for i in range(k):
        test = np.flatnonzero(fold_of == i)
        val = np.flatnonzero(fold_of == (i + 1) % k)
        train = np.flatnonzero((fold_of != i) & (fold_of != (i + 1) % k))
        if log:
            log(f"fold {i + 1}/{k}: train {len(train)}, val {len(val)}, test {len(test)} slides")
        pick = lambda idx: ([items[j] for j in idx], labels.targets[idx])  # noqa: E731
        fs = FitSettings(**{**settings.to_dict(), "seed": settings.seed + i})

        def on_epoch(epoch: int, steps: int, i=i):
            return progress(f"fold {i + 1}/{k} epoch {epoch}", steps) if progress else None

        model, rows = fit_model(task, labels.task, pick(train), pick(val), n_out, fs,
                                on_epoch=on_epoch, log=log)  # fmt: skip
        fold_dir = out_dir / f"fold{i}"
        fold_dir.mkdir(exist_ok=True)
        save_model(model, fold_dir / "model.safetensors")
        write_csv(fold_dir / "log.csv", rows)
        all_rows += [{"fold": i, **r} for r in rows]
        oof[test] = predict_items(model, labels.task, pick(test)[0], fs)
        fold_metrics.append({"fold": i, "n_test": len(test),
                             **_safe_metrics(task, oof[test], labels.targets[test])})  # fmt: skip

    preds = prediction_rows(task, labels.classes, oof, labels.slides)
    for j, row in enumerate(preds):
        row.update({"fold": int(fold_of[j]), **target_columns(labels, j)})
    write_csv(out_dir / "predictions.csv", preds)
    overall = _safe_metrics(task, oof, labels.targets)
    lo, hi = bootstrap_ci(
        lambda o, t: task.metrics(o, t)[task.primary], oof, labels.targets, n=n_bootstrap,
        seed=settings.seed,
        stratify=labels.targets if labels.task == "classify" else None,
    )  # fmt: skip
    metrics = {"task": labels.task, "primary": task.primary, "out_of_fold": overall,
               "ci95": {task.primary: [lo, hi]}, "per_fold": fold_metrics,
               "n_slides": len(items)}  # fmt: skip
    if labels.task == "survival":
        metrics["risk_groups"] = km_plot(oof[:, 0], labels.targets, fold_of, out_dir / "km.png")
    write_json(out_dir / "metrics.json", metrics)
    save_curves(all_rows, task.primary, out_dir / "curves.png")
    write_json(out_dir / "config.json", config)  # last: its presence marks a complete run
    return metrics


def _safe_metrics(task, outputs: np.ndarray, targets: np.ndarray) -> dict:
    try:
        return {k: float(v) for k, v in task.metrics(outputs, targets).items()}
    except ValueError as e:  # e.g. a test fold with one class
        return {"undefined": str(e)}


def save_model(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})


def km_plot(risk: np.ndarray, targets: np.ndarray, fold_of: np.ndarray, path: Path) -> dict:
    """High vs low risk split at the median predicted risk within each fold (risks of
    different fold models are not on one scale); Kaplan-Meier curves + log-rank p."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test

    high = np.zeros(len(risk), bool)
    for f in np.unique(fold_of):
        sel = fold_of == f
        high[sel] = risk[sel] > np.median(risk[sel])
    t, e = targets[:, 0], targets[:, 1].astype(bool)
    test = logrank_test(t[high], t[~high], event_observed_A=e[high], event_observed_B=e[~high])
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, sel in (("low risk", ~high), ("high risk", high)):
        KaplanMeierFitter(label=f"{name} (n={sel.sum()})").fit(
            t[sel], e[sel]
        ).plot_survival_function(ax=ax)
    ax.set_title(f"Out-of-fold risk groups, log-rank p = {test.p_value:.2g}")
    ax.set_xlabel("time")
    ax.set_ylabel("survival probability")
    fig.tight_layout()
    save_figure(fig, path)
    return {
        "logrank_p": float(test.p_value),
        "n_high": int(high.sum()),
        "n_low": int((~high).sum()),
    }


def save_curves(rows: list[dict], primary: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for f in sorted({r["fold"] for r in rows}):
        rr = [r for r in rows if r["fold"] == f]
        ep = [r["epoch"] for r in rr]
        axes[0].plot(ep, [r["train_loss"] for r in rr], label=f"fold {f} train")
        axes[0].plot(ep, [r["val_loss"] for r in rr], "--", label=f"fold {f} val")
        axes[1].plot(ep, [r[f"val_{primary}"] for r in rr], label=f"fold {f}")
    axes[0].set_title("loss")
    axes[1].set_title(f"validation {primary}")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


# -- using a finished run ------------------------------------------------------------------


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[list[torch.nn.Module], dict]:
    from safetensors.torch import load_file

    from .models import build_slide_model

    run_dir = Path(run_dir)
    try:
        config = json.loads((run_dir / "config.json").read_text())
        assert config.get("format") == FORMAT
    except (OSError, json.JSONDecodeError, AssertionError):
        raise UsageError(
            f"{run_dir}: not a finished slide-model run (no valid config.json)"
        ) from None
    s = config["settings"]
    models = []
    for i in range(config["folds"]):
        m = build_slide_model(s["model"], config["in_channels"], config["n_outputs"],
                              **s["model_options"])  # fmt: skip
        try:
            m.load_state_dict(load_file(str(run_dir / f"fold{i}" / "model.safetensors")))
        except Exception as e:
            raise UsageError(f"{run_dir}/fold{i}: cannot load the model ({e})") from None
        models.append(m.to(device).eval())
    return models, config


def check_grid_fits(config: dict, item: GridItem) -> None:
    c = item.features.shape[2]
    if c != config["in_channels"]:
        raise UsageError(
            f"{item.path}: C={c}, but the model was trained on C={config['in_channels']}"
        )
    enc, theirs = config.get("encoder") or {}, item.metadata.get("encoder") or {}
    if enc.get("name") and theirs.get("name") and enc["name"] != theirs["name"]:
        raise UsageError(
            f"{item.path}: encoded with {theirs['name']}, the model was trained on {enc['name']}"
        )


def predict_run(
    run_dir: str | Path, items: list[GridItem], device: str = "cpu"
) -> tuple[np.ndarray, dict]:
    """Ensemble of the fold models, each with test-time crops."""
    models, config = load_run(run_dir, device)
    for it in items:
        check_grid_fits(config, it)
    settings = FitSettings(**config["settings"])
    outs = [predict_items(m, config["task"], items, settings) for m in models]
    return np.mean(outs, axis=0), config


def heatmap_run(run_dir: str | Path, item: GridItem, device: str = "cpu") -> np.ndarray:
    """Grad-CAM on the whole grid (the CNN takes any size), averaged over fold models."""
    from .gradcam import grad_cam

    models, config = load_run(run_dir, device)
    check_grid_fits(config, item)
    x = torch.from_numpy(np.ascontiguousarray(item.features.transpose(2, 0, 1)))[None].to(device)
    mask = torch.from_numpy(item.mask)[None].to(device)
    target = 1 if config["task"] == "classify" and config["n_outputs"] == 2 else None
    maps = [grad_cam(m, x, mask=mask, target=target) for m in models]
    m = np.mean(maps, axis=0)
    return (m / m.max() if m.max() > 0 else m).astype(np.float32)
