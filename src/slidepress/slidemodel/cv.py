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
from ..metrics.stats import bootstrap_ci
from ..progress import ProgressStart
from ..store.atomic import atomic_path, write_csv, write_json
from . import build_task
from .data import GridItem, Labels
from .fit import FitSettings, fit_model, predict_items
from .report import save_curves
from .tasks import Task

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
    strata = build_task(labels.task).strata(labels.targets)
    folds = np.empty(n, np.int64)
    offset = 0
    for s in np.unique(strata):
        idx = rng.permutation(np.flatnonzero(strata == s))
        folds[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)
    return folds


def prediction_rows(
    task: Task, classes: list[str], outputs: np.ndarray, slides: list[str]
) -> list[dict]:
    """One CSV row per slide (class-named columns for classification)."""
    cols = task.prediction_columns(outputs, classes)
    rows = []
    for j, s in enumerate(slides):
        row = {"slide": s}
        for c, v in cols.items():
            row[c] = v[j].item() if hasattr(v[j], "item") else v[j]
        rows.append(row)
    return rows


def cross_validate(
    items: list[GridItem],
    labels: Labels,
    folds: int,
    settings: FitSettings,
    out_dir: Path,
    *,
    n_bootstrap: int = 1000,
    progress: ProgressStart | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
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

        model, rows = fit_model(task, pick(train), pick(val), n_out, fs, on_epoch=on_epoch,
                                log=log)  # fmt: skip
        fold_dir = out_dir / f"fold{i}"
        fold_dir.mkdir(exist_ok=True)
        save_model(model, fold_dir / "model.safetensors")
        write_csv(fold_dir / "log.csv", rows)
        all_rows += [{"fold": i, **r} for r in rows]
        oof[test] = predict_items(model, task, pick(test)[0], fs)
        fold_metrics.append({"fold": i, "n_test": len(test),
                             **_safe_metrics(task, oof[test], labels.targets[test])})  # fmt: skip

    preds = prediction_rows(task, labels.classes, oof, labels.slides)
    for j, row in enumerate(preds):
        target = task.target_columns(labels.targets[j], labels.classes)
        row.update({"fold": int(fold_of[j]), **target})
    write_csv(out_dir / "predictions.csv", preds)
    overall = _safe_metrics(task, oof, labels.targets)
    lo, hi = bootstrap_ci(
        lambda y, o: task.metrics(o, y)[task.primary], labels.targets, oof, n=n_bootstrap,
        seed=settings.seed, stratify=task.bootstrap_strata(labels.targets),
    )  # fmt: skip
    metrics = {"task": labels.task, "primary": task.primary, "out_of_fold": overall,
               "ci95": {task.primary: [lo, hi]}, "per_fold": fold_metrics,
               "n_slides": len(items)}  # fmt: skip
    metrics.update(task.report(oof, labels.targets, fold_of, out_dir))
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


# -- using a finished run ------------------------------------------------------------------


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[list[torch.nn.Module], dict]:
    from safetensors.torch import load_file

    from . import build_slide_model

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
    task = build_task(config["task"])
    outs = [predict_items(m, task, items, settings) for m in models]
    return np.mean(outs, axis=0), config


def heatmap_run(run_dir: str | Path, item: GridItem, device: str = "cpu") -> np.ndarray:
    """Grad-CAM on the whole grid (the CNN takes any size), averaged over fold models."""
    from .gradcam import grad_cam

    models, config = load_run(run_dir, device)
    check_grid_fits(config, item)
    x = torch.from_numpy(np.ascontiguousarray(item.features.transpose(2, 0, 1)))[None].to(device)
    mask = torch.from_numpy(item.mask)[None].to(device)
    target = build_task(config["task"]).cam_target(config["n_outputs"])
    maps = [grad_cam(m, x, mask=mask, target=target) for m in models]
    m = np.mean(maps, axis=0)
    return (m / m.max() if m.max() > 0 else m).astype(np.float32)
