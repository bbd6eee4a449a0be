"""The probe's report folder: probe.csv / probe.json / probe.md / probe.png, preview images of
generative encoders, and the plain sentences that say whether an encoder beats mean-rgb.

Nothing here trains or scores; it formats `ProbeResult`s (and the paired bootstrap AUCs they
carry) and writes them through `store.atomic`, so an interrupted run leaves no half file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..encoders import Encoder
from ..imagefolder import list_image_folder, prepare_image, read_rgb
from ..metrics.stats import paired_difference
from ..store.atomic import save_figure, write_csv, write_json, write_text
from .probe import BASELINE, CSV_COLUMNS, ProbeResult, pcam_splits

PROTOCOL = "Tellez et al. TPAMI 2019 Table 1: MLP probe on frozen encoder features"


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return str(v)


def _fmt(v: float, signed: bool = False) -> str:
    if not math.isfinite(v):
        return "n/a"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def write_probe_csv(path: Path, results: Sequence[ProbeResult]) -> Path:
    """One row per encoder and dataset, CSV_COLUMNS, floats to 6 significant digits."""
    if not results:  # the header alone
        return write_text(path, ",".join(CSV_COLUMNS) + "\r\n")
    return write_csv(path, [{c: _cell(v) for c, v in r.row().items()} for r in results])


def write_probe_json(
    path: Path,
    results: Sequence[ProbeResult],
    encoders: Sequence[Encoder],
    settings: dict[str, Any],
) -> Path:
    """Every result with its details and the encoder's own description (weights hash...)."""
    described = {e.name: e.describe() for e in encoders}
    doc = {
        "slidepress_version": __version__,
        "protocol": PROTOCOL,
        "settings": settings,
        "results": [
            {**r.row(), "details": r.details, "encoder_describe": described.get(r.encoder)}
            for r in results
        ],
    }
    return write_json(path, doc)


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
        lo = hi = math.nan
        if r.boot_auc is not None and base.boot_auc is not None:
            _, lo, hi = paired_difference(r.boot_auc, base.boot_auc)
        if math.isfinite(lo) and math.isfinite(hi):
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


def write_probe_md(
    path: Path, results: Sequence[ProbeResult], settings: dict[str, Any], notes: Sequence[str]
) -> Path:
    """The human report: the table, the baseline sentences, caveats and settings."""
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
    return write_text(path, "\n".join(lines))


def plot_probe(path: Path, results: Sequence[ProbeResult]) -> Path:
    """AUC (with its CI) and accuracy per encoder, one panel per dataset, chance lines."""
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
    return save_figure(fig, path)


def write_previews(
    encoders: Sequence[Encoder], pcam: str | Path | None, pcam_mpp: float, out_dir: Path, seed: int
) -> dict[str, Path]:
    """Real vs reconstructed / generated PCam patches for generative NIC encoders (VAE, BiGAN):
    a look at what the embedding keeps, next to the numbers."""
    out: dict[str, Path] = {}
    for enc in encoders:
        method = getattr(enc, "nic_method", None)
        if method is None or pcam is None or not enc.patch_size:
            continue
        import torch

        from ..viz import save_patch_rows

        files = list_image_folder(pcam_splits(Path(pcam))[1], limit_per_class=8, seed=seed)[0]
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
