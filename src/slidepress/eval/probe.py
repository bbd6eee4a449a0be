"""Probe evaluation of frozen patch encoders (Tellez et al., TPAMI 2019, Table 1 protocol).

An encoder is only worth its bits if its embedding keeps what pathologists look for. The
protocol: embed labelled patches with the frozen encoder, train a small MLP on the features,
and report accuracy and ROC AUC on held-out patches. PCam (tumour vs not) has a fixed
train/valid split; the tiny Kather 2016 sample is cross-validated. `mean-rgb` is the floor
every learned encoder has to clear; the report claims a win only when the paired bootstrap
interval of the AUC difference excludes zero.

torch (for the MLP) is imported lazily, inside functions.
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..encoders import Encoder, get_encoder
from ..errors import EncoderError, UsageError
from ..imagefolder import list_image_folder, prepare_image, read_rgb
from ..store.atomic import atomic_path

BASELINE = "mean-rgb"
CSV_COLUMNS = [
    "encoder", "encoder_version", "dim", "patch_size", "mpp", "dataset", "n_train", "n_test",
    "accuracy", "auc", "auc_ci_low", "auc_ci_high", "seconds",
]  # fmt: skip

# start(name, total) -> advance(n), the shape of `cli.common.progress_bars`
ProgressStart = Callable[[str, int], Callable[[int], None]]


class ResampleWarning(UserWarning):
    """A dataset's patches had to be enlarged to reach the encoder's input size."""


# --------------------------------------------------------------------------- images


def _encode(encoder: Encoder, batch: list[np.ndarray]) -> np.ndarray:
    """Encode a list of patches, grouping equal shapes (encoders taking any size)."""
    out: list[np.ndarray | None] = [None] * len(batch)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(batch):
        groups.setdefault(a.shape, []).append(i)
    for idx in groups.values():
        feats = np.asarray(encoder.encode(np.stack([batch[i] for i in idx])))
        if feats.ndim != 2 or feats.shape[0] != len(idx):
            raise EncoderError(
                f"encoder {encoder.name}: returned shape {feats.shape} for {len(idx)} patches"
            )
        for j, i in enumerate(idx):
            out[i] = feats[j]
    return np.stack(out).astype(np.float32)  # type: ignore[arg-type]


def embed_folder(
    encoder: Encoder,
    root: str | Path,
    dataset_mpp: float,
    *,
    limit_per_class: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    progress: ProgressStart | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Embed an ImageFolder with a frozen encoder -> (features (N, C), labels (N,), classes).

    Each patch is brought to the encoder's mpp and patch size first (`prepare_image`), so the
    encoder sees tissue at the scale it was trained on. Warns once (ResampleWarning) when
    patches had to be enlarged.
    """
    if not dataset_mpp > 0:
        raise UsageError(f"dataset mpp must be > 0, got {dataset_mpp}")
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    files, labels, classes = list_image_folder(root, limit_per_class=limit_per_class, seed=seed)
    advance = progress(f"{encoder.name} {Path(root).name}", len(files)) if progress else None
    feats: list[np.ndarray] = []
    n_up = 0
    first: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    for s in range(0, len(files), batch_size):
        batch = []
        for p in files[s : s + batch_size]:
            raw = read_rgb(p)
            img, up = prepare_image(raw, dataset_mpp, encoder.mpp, encoder.patch_size)
            n_up += up
            if up and first is None:
                first = (raw.shape[:2], img.shape[:2])
            batch.append(img)
        feats.append(_encode(encoder, batch))
        if advance:
            advance(len(batch))
    x = np.concatenate(feats)
    if not np.isfinite(x).all():
        raise EncoderError(f"encoder {encoder.name}: non-finite features on {root}")
    if n_up and first is not None:
        warnings.warn(
            f"{encoder.name} on {root}: {n_up}/{len(files)} patches of {first[0][1]}x"
            f"{first[0][0]} px at {dataset_mpp} um/px are smaller than the encoder's "
            f"{encoder.patch_size} px at {encoder.mpp} um/px; they were enlarged to it "
            "(smaller field of view than the encoder expects)",
            ResampleWarning,
            stacklevel=2,
        )
    return x, labels, classes


# --------------------------------------------------------------------------- MLP probe


@dataclass
class MlpProbe:
    """A trained probe: standardisation (fit on train) + the MLP, on CPU."""

    mean: np.ndarray
    std: np.ndarray
    model: Any
    best_epoch: int  # 1-based; the last epoch when no validation split was possible
    used_validation: bool
    history: list[float] = field(default_factory=list)  # validation loss per epoch

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        import torch

        z = torch.from_numpy(((x - self.mean) / self.std).astype(np.float32))
        self.model.eval()
        with torch.inference_mode():
            return torch.softmax(self.model(z), dim=1).double().numpy()


def _validation_split(y: np.ndarray, fraction: float, seed: int) -> np.ndarray | None:
    """Seeded, stratified indices for validation; None when the set is too small for one."""
    n, k = len(y), int(y.max()) + 1
    n_val = round(fraction * n)
    counts = np.bincount(y, minlength=k)
    if fraction <= 0 or n_val < max(10, k) or counts.min() < 2:
        return None
    from sklearn.model_selection import StratifiedShuffleSplit

    split = StratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
    _, val = next(split.split(np.zeros(n), y))
    return np.sort(val)


def train_mlp_probe(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    epochs: int = 30,
    seed: int = 0,
    hidden: int = 256,
    lr: float = 1e-3,
    batch_size: int = 64,
    val_fraction: float = 0.1,
) -> MlpProbe:
    """Train the paper's probe: Linear(C, 256) -> BatchNorm -> LeakyReLU -> Linear(256, K).

    Softmax cross-entropy, Adam, a fixed number of epochs; a seeded, stratified 10 % of the
    training set picks the epoch with the lowest validation loss (too small a set: the last
    epoch). Deterministic for a seed: own RNG streams, one CPU thread.
    """
    try:
        import torch
        from torch import nn
    except ImportError:
        raise UsageError("the probe needs torch: pip install 'slidepress[torch]'") from None
    if epochs < 1:
        raise UsageError(f"epochs must be >= 1, got {epochs}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    val = _validation_split(y, val_fraction, seed)
    fit = np.setdiff1d(np.arange(len(y)), val) if val is not None else np.arange(len(y))
    mean = x[fit].mean(axis=0)
    std = x[fit].std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    z = torch.from_numpy(((x - mean) / std).astype(np.float32))
    yt = torch.from_numpy(y)
    z_fit, y_fit = z[fit], yt[fit]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = nn.Sequential(
                nn.Linear(x.shape[1], hidden),
                nn.BatchNorm1d(hidden),
                nn.LeakyReLU(),
                nn.Linear(hidden, n_classes),
            )
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            loss_fn = nn.CrossEntropyLoss()
            gen = torch.Generator().manual_seed(seed)
            best_loss, best_epoch, best_state = math.inf, epochs, None
            history: list[float] = []
            for epoch in range(1, epochs + 1):
                model.train()
                order = torch.randperm(len(fit), generator=gen)
                for s in range(0, len(order), batch_size):
                    idx = order[s : s + batch_size]
                    if len(idx) < 2:  # BatchNorm needs two samples in training mode
                        continue
                    opt.zero_grad()
                    loss_fn(model(z_fit[idx]), y_fit[idx]).backward()
                    opt.step()
                if val is not None:
                    model.eval()
                    with torch.inference_mode():
                        v = float(loss_fn(model(z[val]), yt[val]))
                    history.append(v)
                    if v < best_loss:
                        best_loss, best_epoch = v, epoch
                        best_state = {k: t.clone() for k, t in model.state_dict().items()}
            if best_state is not None:
                model.load_state_dict(best_state)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return MlpProbe(mean, std, model, best_epoch, val is not None, history)


# --------------------------------------------------------------------------- metrics


def roc_auc(y: np.ndarray, proba: np.ndarray) -> float:
    """ROC AUC: binary on the positive (last) class's probability, else macro one-vs-rest."""
    from sklearn.metrics import roc_auc_score

    if proba.shape[1] == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    labels = list(range(proba.shape[1]))
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=labels))


def _rank_auc(pos: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Binary AUC of each row of `scores` (B, n) against boolean rows `pos` (B, n); ties 1/2."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=1)
    n1 = pos.sum(axis=1)
    n0 = pos.shape[1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * pos).sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def bootstrap_indices(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """(n, len(y)) resample indices, stratified by class so that every class is in every
    resample (a tiny test set would otherwise lose classes). Same labels + seed -> same
    indices, so bootstrap AUCs of different encoders on one dataset are paired."""
    rng = np.random.default_rng(seed)
    cols = [rng.choice(np.flatnonzero(y == c), size=(n, int((y == c).sum()))) for c in np.unique(y)]
    return np.concatenate(cols, axis=1)


def bootstrap_auc(y: np.ndarray, proba: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """AUC (same definition as `roc_auc`) on each resample (rows of `idx`)."""
    yb = y[idx]
    if proba.shape[1] == 2:
        return _rank_auc(yb == 1, proba[idx, 1])
    per_class = [_rank_auc(yb == c, proba[idx, c]) for c in range(proba.shape[1])]
    return np.mean(per_class, axis=0)


@dataclass
class ProbeResult:
    """Metrics of one encoder on one dataset (+ the bootstrap AUCs, for paired comparisons)."""

    encoder: str
    encoder_version: str
    dim: int
    patch_size: int | None
    mpp: float | None
    dataset: str
    n_train: int
    n_test: int
    accuracy: float
    auc: float
    auc_ci_low: float
    auc_ci_high: float
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    boot_auc: np.ndarray | None = field(default=None, repr=False)

    def row(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in CSV_COLUMNS}


def _ci(boot: np.ndarray | None) -> tuple[float, float]:
    if boot is None or not np.isfinite(boot).any():
        return math.nan, math.nan
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return float(lo), float(hi)


def _result(
    encoder: Encoder,
    dataset: str,
    y: np.ndarray,
    proba: np.ndarray,
    accuracy: float,
    n_train: int,
    n_bootstrap: int,
    seed: int,
    t0: float,
    details: dict[str, Any],
) -> ProbeResult:
    boot = None
    if n_bootstrap > 0:
        boot = bootstrap_auc(y, proba, bootstrap_indices(y, n_bootstrap, seed))
    lo, hi = _ci(boot)
    return ProbeResult(
        encoder=encoder.name,
        encoder_version=str(encoder.version),
        dim=int(encoder.dim),
        patch_size=encoder.patch_size,
        mpp=encoder.mpp,
        dataset=dataset,
        n_train=n_train,
        n_test=len(y),
        accuracy=float(accuracy),
        auc=roc_auc(y, proba),
        auc_ci_low=lo,
        auc_ci_high=hi,
        seconds=time.perf_counter() - t0,
        details=details,
        boot_auc=boot,
    )


# --------------------------------------------------------------------------- datasets


def _pcam_splits(root: Path) -> tuple[Path, Path]:
    if not root.is_dir():
        raise UsageError(f"{root}: PCam folder not found")
    train = root / "train"
    test = next((root / s for s in ("valid", "test") if (root / s).is_dir()), None)
    if not train.is_dir() or test is None:
        raise UsageError(f"{root}: expected PCam splits {root}/train/<0|1> and {root}/valid/<0|1>")
    return train, test


def probe_pcam(
    encoder: Encoder,
    pcam_root: str | Path,
    *,
    dataset_mpp: float = 0.97,
    train_limit_per_class: int | None = 2000,
    test_limit_per_class: int | None = None,
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 256,
    n_bootstrap: int = 1000,
    progress: ProgressStart | None = None,
) -> ProbeResult:
    """Train the probe on pcam/train, test on pcam/valid: accuracy, AUC of P(tumour), and a
    stratified-bootstrap 95 % CI of the AUC (test-set sampling only, one probe seed)."""
    t0 = time.perf_counter()
    train_dir, test_dir = _pcam_splits(Path(pcam_root))
    opts = {"seed": seed, "batch_size": batch_size, "progress": progress}
    x_tr, y_tr, cls_tr = embed_folder(
        encoder, train_dir, dataset_mpp, limit_per_class=train_limit_per_class, **opts
    )
    x_te, y_te, cls_te = embed_folder(
        encoder, test_dir, dataset_mpp, limit_per_class=test_limit_per_class, **opts
    )
    if cls_tr != cls_te:
        raise UsageError(f"{pcam_root}: train classes {cls_tr} differ from test classes {cls_te}")
    if len(cls_tr) != 2:
        raise UsageError(f"{pcam_root}: PCam needs two classes (0, 1), found {cls_tr}")
    probe = train_mlp_probe(x_tr, y_tr, 2, epochs=epochs, seed=seed)
    proba = probe.predict_proba(x_te)
    acc = float((proba.argmax(axis=1) == y_te).mean())
    details = {
        "classes": cls_tr,
        "positive_class": cls_tr[1],
        "test_split": test_dir.name,
        "best_epoch": probe.best_epoch,
        "used_validation": probe.used_validation,
    }
    return _result(encoder, "pcam", y_te, proba, acc, len(y_tr), n_bootstrap, seed, t0, details)


def probe_kather(
    encoder: Encoder,
    kather_root: str | Path,
    *,
    dataset_mpp: float = 0.495,
    folds: int = 3,
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 256,
    n_bootstrap: int = 1000,
    progress: ProgressStart | None = None,
) -> ProbeResult:
    """Stratified k-fold CV on Kather 2016: mean fold accuracy, and macro one-vs-rest AUC (with
    a bootstrap CI) on the pooled out-of-fold probabilities. n_train = mean fold training size."""
    from sklearn.model_selection import StratifiedKFold

    t0 = time.perf_counter()
    root = Path(kather_root)
    if not root.is_dir():
        raise UsageError(f"{root}: Kather folder not found")
    x, y, classes = embed_folder(
        encoder, root, dataset_mpp, seed=seed, batch_size=batch_size, progress=progress
    )
    k = len(classes)
    if k < 2:
        raise UsageError(f"{root}: needs at least two class folders, found {classes}")
    if folds < 2:
        raise UsageError(f"folds must be >= 2, got {folds}")
    smallest = int(np.bincount(y).min())
    if smallest < folds:
        raise UsageError(f"{root}: a class has {smallest} images, fewer than {folds} folds")
    oof = np.zeros((len(y), k))
    accs, n_trains, epochs_used = [], [], []
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for tr, te in cv.split(np.zeros(len(y)), y):
        probe = train_mlp_probe(x[tr], y[tr], k, epochs=epochs, seed=seed)
        oof[te] = probe.predict_proba(x[te])
        accs.append(float((oof[te].argmax(axis=1) == y[te]).mean()))
        n_trains.append(len(tr))
        epochs_used.append(probe.best_epoch)
    details = {
        "classes": classes,
        "folds": folds,
        "fold_accuracy": accs,
        "best_epoch": epochs_used,
        "auc_definition": "macro one-vs-rest on pooled out-of-fold probabilities",
    }
    n_train = round(float(np.mean(n_trains)))
    acc = float(np.mean(accs))
    return _result(encoder, "kather2016", y, oof, acc, n_train, n_bootstrap, seed, t0, details)


# --------------------------------------------------------------------------- report


@dataclass
class ProbeReport:
    results: list[ProbeResult]
    out_dir: Path
    paths: dict[str, Path]
    warnings: list[str]
    settings: dict[str, Any]


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

    Inputs and encoders are all checked before any embedding, so a typo fails in seconds.
    """
    if not encoder_specs:
        raise UsageError("give at least one encoder (--encoder mean-rgb)")
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
        for split in _pcam_splits(Path(pcam)):
            list_image_folder(split)
    if kather is not None:
        list_image_folder(kather)
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
        jobs: list[tuple[str, Callable[[], ProbeResult]]] = []
        if pcam is not None:
            jobs.append(("pcam", lambda enc=enc: probe_pcam(
                enc, pcam, dataset_mpp=pcam_mpp, train_limit_per_class=train_limit_per_class,
                test_limit_per_class=test_limit_per_class, n_bootstrap=n_bootstrap, **common,
            )))  # fmt: skip
        if kather is not None:
            jobs.append(("kather2016", lambda enc=enc: probe_kather(
                enc, kather, dataset_mpp=kather_mpp, folds=folds, n_bootstrap=n_bootstrap,
                **common,
            )))  # fmt: skip
        for _, job in jobs:
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
        "probe": "Linear(C,256)-BatchNorm1d-LeakyReLU-Linear(256,K), softmax CE, Adam 1e-3, "
        "batch 64, best epoch by loss on a seeded stratified 10 % of train",
        "ci": "95 % percentile, class-stratified bootstrap of the test set",
    }
    paths = {
        **_previews(encoders, pcam, pcam_mpp, out_dir, seed),
        "csv": _write_csv(out_dir / "probe.csv", results),
        "json": _write_json(out_dir / "probe.json", results, encoders, settings),
        "md": _write_md(out_dir / "probe.md", results, settings, notes),
        "png": _plot(out_dir / "probe.png", results),
    }
    return ProbeReport(results, out_dir, paths, notes, settings)


def _previews(
    encoders: Sequence[Encoder], pcam: str | Path | None, pcam_mpp: float, out_dir: Path, seed: int
) -> dict[str, Path]:
    """Real vs reconstructed / generated PCam patches for generative NIC encoders (VAE, BiGAN)."""
    out: dict[str, Path] = {}
    for enc in encoders:
        method = getattr(enc, "nic_method", None)
        if method is None or pcam is None or not enc.patch_size:
            continue
        import torch

        from ..viz import save_patch_rows

        files = list_image_folder(_pcam_splits(Path(pcam))[1], limit_per_class=8, seed=seed)[0]
        x = np.stack(
            [prepare_image(read_rgb(f), pcam_mpp, enc.mpp, enc.patch_size)[0] for f in files]
        )
        t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed)
            panels = method.preview(t.to(next(method.parameters()).device))
        if panels:
            safe = re.sub(r"[^A-Za-z0-9._-]+", "_", enc.name)
            out[f"preview:{enc.name}"] = save_patch_rows(panels, out_dir / f"preview-{safe}.png")
    return out


def _clean(v: Any) -> Any:
    """JSON-safe: NaN -> null, numpy scalars -> Python."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return str(v)


def _write_csv(path: Path, results: list[ProbeResult]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in results:
            w.writerow([_cell(v) for v in r.row().values()])
    return path


def _write_json(
    path: Path, results: list[ProbeResult], encoders: list[Encoder], settings: dict[str, Any]
) -> Path:
    described = {e.name: e.describe() for e in encoders}
    doc = {
        "slidepress_version": __version__,
        "protocol": "Tellez et al. TPAMI 2019 Table 1: MLP probe on frozen encoder features",
        "settings": settings,
        "results": [
            {**r.row(), "details": r.details, "encoder_describe": described.get(r.encoder)}
            for r in results
        ],
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_clean(doc), indent=2) + "\n")
    return path


def _fmt(v: float, signed: bool = False) -> str:
    if not math.isfinite(v):
        return "n/a"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def comparison_sentence(results: Sequence[ProbeResult], dataset: str) -> str:
    """Plain sentences, one per encoder, on whether it beats mean-rgb's AUC on `dataset`.

    The test is paired (both encoders scored on the same bootstrap resamples of the same test
    patches): a win needs the 95 % interval of the AUC difference to lie above 0, a loss below
    0; otherwise no difference is claimed. Without paired resamples, only non-overlapping
    95 % CIs count.
    """
    rows = [r for r in results if r.dataset == dataset]
    base = next((r for r in rows if r.encoder == BASELINE), None)
    others = [r for r in rows if r.encoder != BASELINE]
    if base is None:
        return f"{dataset}: {BASELINE} was not run, so there is no baseline comparison."
    if not others:
        return f"{dataset}: only {BASELINE} was run (AUC {_fmt(base.auc)}); nothing to compare."
    sentences, wins = [], 0
    for r in others:
        lo = hi = None
        if r.boot_auc is not None and base.boot_auc is not None:
            d = r.boot_auc - base.boot_auc
            if np.isfinite(d).any():
                lo, hi = (float(v) for v in np.nanpercentile(d, [2.5, 97.5]))
        if lo is not None and hi is not None:
            nums = (
                f"(AUC {_fmt(r.auc)} vs {_fmt(base.auc)}; paired bootstrap difference "
                f"{_fmt(r.auc - base.auc, True)} [{_fmt(lo, True)}, {_fmt(hi, True)}])"
            )
            better, worse = lo > 0, hi < 0
        else:
            nums = f"(AUC {_fmt(r.auc)} vs {_fmt(base.auc)}; unpaired CIs)"
            better, worse = r.auc_ci_low > base.auc_ci_high, r.auc_ci_high < base.auc_ci_low
        if better:
            wins += 1
            sentences.append(f"{r.encoder} beats {BASELINE} {nums}.")
        elif worse:
            sentences.append(f"{r.encoder} does worse than {BASELINE} {nums}.")
        else:
            sentences.append(
                f"{r.encoder} is not distinguishable from {BASELINE} {nums}; no win is claimed."
            )
    if not wins:
        sentences.append(f"No encoder beats {BASELINE}.")
    return f"{dataset}: " + " ".join(sentences)


def _write_md(
    path: Path, results: list[ProbeResult], settings: dict[str, Any], notes: list[str]
) -> Path:
    lines = [
        "# Probe evaluation of frozen patch encoders",
        "",
        "Protocol of Tellez et al. (TPAMI 2019, Table 1): embed labelled patches with the frozen "
        "encoder, train an MLP probe on the features, report accuracy and ROC AUC on held-out "
        "patches. PCam: train on `train`, test on `valid`, AUC of P(tumour). Kather 2016: "
        f"{settings['folds']}-fold stratified CV, mean fold accuracy, macro one-vs-rest AUC on "
        "the pooled out-of-fold probabilities (n_train = mean fold training size).",
        "",
        "| encoder | version | dim | patch | mpp | dataset | n_train | n_test | accuracy "
        "| AUC | AUC 95 % CI | seconds |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        ci = f"[{_fmt(r.auc_ci_low)}, {_fmt(r.auc_ci_high)}]"
        lines.append(
            f"| {r.encoder} | {r.encoder_version} | {r.dim} | {r.patch_size or 'any'} | "
            f"{r.mpp if r.mpp is not None else 'any'} | {r.dataset} | {r.n_train} | {r.n_test} | "
            f"{_fmt(r.accuracy)} | {_fmt(r.auc)} | {ci} | {r.seconds:.1f} |"
        )
    lines += ["", "## Against the mean-rgb baseline", ""]
    for ds in dict.fromkeys(r.dataset for r in results):
        lines.append(f"- {comparison_sentence(results, ds)}")
    small = [r for r in results if r.n_test < 100]
    lines += ["", "## Caveats", ""]
    lines.append(
        f"- The CI is a {settings['ci']} ({settings['n_bootstrap']} resamples): it covers test-set "
        "sampling only, not the variance of training the probe (one probe seed, "
        f"{settings['seed']})."
    )
    for r in small:
        lines.append(
            f"- {r.encoder} on {r.dataset}: only {r.n_test} test patches; a smoke test, not a "
            "measurement."
        )
    if settings["pcam"] and (settings["train_limit_per_class"] or settings["test_limit_per_class"]):
        lines.append(
            f"- PCam subsets: {settings['train_limit_per_class'] or 'all'} train and "
            f"{settings['test_limit_per_class'] or 'all'} test patches per class (seeded)."
        )
    lines += [f"- {n}" for n in notes]
    lines += [
        "",
        f"Settings: epochs {settings['epochs']}, seed {settings['seed']}, PCam "
        f"{settings['pcam_mpp']} um/px, Kather {settings['kather_mpp']} um/px; probe "
        f"{settings['probe']}. slidepress {__version__}.",
        "",
    ]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
    return path


def _plot(path: Path, results: list[ProbeResult]) -> Path:
    from matplotlib.figure import Figure

    datasets = list(dict.fromkeys(r.dataset for r in results))
    n_enc = len(dict.fromkeys(r.encoder for r in results))
    fig = Figure(figsize=(max(5.0, 1.2 * n_enc + 2.5) * len(datasets), 4.5), layout="tight")
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    for ax, ds in zip(axes, datasets, strict=True):
        rows = [r for r in results if r.dataset == ds]
        x = np.arange(len(rows))
        auc = np.array([r.auc for r in rows])
        lo = np.array([r.auc - r.auc_ci_low for r in rows])
        hi = np.array([r.auc_ci_high - r.auc for r in rows])
        has_ci = np.isfinite(lo).all() and np.isfinite(hi).all()
        yerr = np.vstack([lo, hi]) if has_ci else None
        ax.bar(x - 0.2, auc, 0.38, yerr=yerr, capsize=4, label="AUC (95 % CI)" if has_ci else "AUC")
        ax.bar(x + 0.2, [r.accuracy for r in rows], 0.38, label="accuracy")
        ax.axhline(0.5, color="grey", ls="--", lw=1, label="AUC chance")
        k = len(rows[0].details.get("classes", ())) or 2
        ax.axhline(1 / k, color="grey", ls=":", lw=1, label=f"accuracy chance (1/{k})")
        ax.set_xticks(x, [r.encoder for r in rows], rotation=20, ha="right")
        ax.set_ylim(0, 1.25)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_title(f"{ds} (n_test={rows[0].n_test})")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(loc="upper center", ncols=2, fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path
