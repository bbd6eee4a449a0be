"""`eval downstream`: does a codec's loss of fidelity cost a pathology task? (PathAE, section 3.4)

Protocol (CPU-sized, documented in the report):
1. The PCam probe of `eval probe` (MLP on frozen encoder features) is trained once on the
   embeddings of ORIGINAL training patches (a seeded subset, `train_limit_per_class`).
2. The test patches (a seeded subset of pcam/valid, `test_limit_per_class`) are coded and
   decoded by every codec at every quality, each 96 px patch as one tile; the decoded patches
   are embedded and scored by the same probe: accuracy and ROC AUC (bootstrap 95 % CI), next
   to bits per pixel, the embedding similarity (mean cosine of original vs decoded embeddings,
   the probe's encoder, as the probe sees the patches), the feature similarity (shipped
   network) and PSNR (of the pooled MSE; infinite for a lossless codec), the last two scored
   by `metrics.similarity` as `compress` and `bench codecs` score them. "original" is the
   uncoded reference row. A model trained on original pixels that meets an archive of
   decompressed ones is the deployment the number answers for.
3. The NIC grid of the bundled sample slide (CMU-1-Small-Region, level 0, the central
   `slide_max_side` px square): the slide is cut into 256 px tiles as a container stores them, each
   coded and decoded, and the encoder's grid of the decoded pixels is compared with that of
   the original (`metrics.embsim`, every cell, glass included): mean cosine similarity. The
   slide must know its resolution (`MppError` otherwise).
Writes downstream.csv / .json / .md / .png to the report folder; the JSON also holds the
rank correlation (Spearman, scipy: tied values share their mean rank) of embedding / feature
similarity and PSNR with the AUC drop.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..progress import ProgressStart

COLUMNS = [
    "codec", "quality", "bpp", "bytes_per_patch", "psnr", "featsim_mean", "embsim", "accuracy",
    "auc", "auc_ci_low", "auc_ci_high", "auc_drop", "slide_grid_cosine", "n_test", "seconds",
]  # fmt: skip
TILE = 256  # container tile side for the slide grid


@dataclass
class CodecSpec:
    """`NAME` or `NAME:key=value,key=value` (e.g. `ae-kl:weights=DIR`), shown as `label`."""

    label: str
    name: str
    params: dict[str, Any]

    @classmethod
    def parse(cls, spec: str) -> CodecSpec:
        name, _, rest = spec.partition(":")
        params: dict[str, Any] = {}
        for item in filter(None, rest.split(",")):
            k, sep, v = item.partition("=")
            if not sep:
                raise UsageError(f"codec {spec!r}: expected NAME:key=value[,key=value]")
            params[k] = _value(v)
        if not params:
            return cls(spec, name, params)
        shown = (Path(str(params["weights"])).name if "weights" in params
                 else ",".join(f"{k}={v}" for k, v in params.items()))  # fmt: skip
        return cls(f"{name}[{shown}]", name, params)


def _value(text: str) -> Any:
    """A codec parameter from the command line: an int or a float when it reads as one
    (`effort=7`, `speed=4`), else the text (`weights=DIR`)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_qualities(
    text: str | Sequence[str] | None, codecs: Sequence[CodecSpec]
) -> dict[str, list[float]]:
    """Each codec's sweep by label: `--qualities 'jpeg=10,50;ae-kl=1,2'` (the syntax of
    `slidepress.jobs.qualities`, keyed by a codec's label or name), else its default."""
    from ..jobs.qualities import parse_qualities as parse_sweeps

    per = parse_sweeps(text)
    known = {k for c in codecs for k in (c.label, c.name)}
    extra = sorted(set(per) - known)
    if extra:
        raise UsageError(f"--qualities given for {', '.join(extra)}, not among the codecs")
    out = {}
    for c in codecs:
        qs = per.get(c.label) or per.get(c.name) or default_sweep(c.name)
        if not qs:
            raise UsageError(f"no qualities for codec {c.label}: give --qualities {c.name}=Q1,Q2")
        out[c.label] = qs
    return out


def default_sweep(codec: str) -> list[float]:
    """A codec's default sweep here (its class's `sweeps["downstream"]`; empty: none)."""
    from ..codecs import CODECS

    return list(CODECS[codec].sweeps.get("downstream", ()))


def _embed(encoder: Any, patches: list[np.ndarray], mpp: float, batch: int) -> np.ndarray:
    from ..imagefolder import prepare_image
    from .embedding import _encode

    prepared = [prepare_image(p, mpp, encoder.mpp, encoder.patch_size)[0] for p in patches]
    return np.concatenate([_encode(encoder, prepared[i : i + batch])
                           for i in range(0, len(prepared), batch)])  # fmt: skip


def _coded(codec: Any, tiles: list[np.ndarray], batch: int = 64) -> tuple[list[np.ndarray], int]:
    """Decoded tiles and total bytes, in batches (batched codecs gain)."""
    out, nbytes = [], 0
    for i in range(0, len(tiles), batch):
        blobs = codec.encode_batch(tiles[i : i + batch])
        nbytes += sum(map(len, blobs))
        out += codec.decode_batch([bytes(b) for b in blobs])
    return out, nbytes


def _slide_tiles(path: Path, max_side: int) -> tuple[np.ndarray, float]:
    """The central square of level 0 and its um/px (MppError when the slide does not say)."""
    from ..slide import open_slide

    with open_slide(path) as r:
        mpp = r.require_mpp()
        fw, fh = r.info.dimensions
        w, h = min(fw, max_side), min(fh, max_side)
        return r.read_region(((fw - w) // 2, (fh - h) // 2), 0, (w, h)), float(mpp)


def _tiled_roundtrip(codec: Any, img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    boxes = [(y, x) for y in range(0, h, TILE) for x in range(0, w, TILE)]
    tiles = [np.ascontiguousarray(img[y : y + TILE, x : x + TILE]) for y, x in boxes]
    dec, _ = _coded(codec, tiles, 32)
    out = np.empty_like(img)
    for (y, x), t in zip(boxes, dec, strict=True):
        out[y : y + t.shape[0], x : x + t.shape[1]] = t
    return out


def _spearman(a: list[float], b: list[float]) -> float:
    """scipy's Spearman rank correlation (tied values share their mean rank) over the pairs
    where both are finite; NaN for fewer than 3 or a constant side."""
    from scipy.stats import spearmanr

    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a_) & np.isfinite(b_)
    if ok.sum() < 3 or np.ptp(a_[ok]) == 0 or np.ptp(b_[ok]) == 0:
        return math.nan
    return float(spearmanr(a_[ok], b_[ok]).statistic)


def run_downstream(
    codec_specs: Sequence[str],
    qualities: str | Sequence[str] | None = None,
    *,
    pcam: str | Path,
    out_dir: str | Path,
    encoder: str = "nic-multitask",
    pcam_mpp: float = 0.97,
    train_limit_per_class: int = 1000,
    test_limit_per_class: int = 500,
    epochs: int = 30,
    seed: int = 0,
    n_bootstrap: int = 200,
    batch_size: int = 256,
    featsim: bool = True,
    slide: str | Path | None = "@sample",
    slide_max_side: int = 2048,
    progress: ProgressStart | None = None,
) -> dict[str, Any]:
    """Run the protocol of the module docstring; return the JSON report (also written)."""
    from ..codecs import get_codec
    from ..encoders import get_encoder
    from ..imagefolder import list_image_folder, read_rgb
    from ..metrics.featsim import cosine_rows
    from ..metrics.similarity import SimilarityScorer
    from ..metrics.stats import bootstrap_auc, bootstrap_indices, percentile_ci, roc_auc
    from .mlp import train_mlp_probe
    from .probe import pcam_splits

    specs = [CodecSpec.parse(s) for s in dict.fromkeys(codec_specs)]
    if not specs:
        raise UsageError("give at least one codec (--codecs jpeg,pathae)")
    quals = parse_qualities(qualities, specs)
    codecs = {(c.label, q): get_codec(c.name, q, **c.params) for c in specs for q in quals[c.label]}
    train_dir, test_dir = pcam_splits(Path(pcam))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    enc = get_encoder(encoder)
    t0 = time.perf_counter()

    f_tr, y_tr, cls = list_image_folder(train_dir, limit_per_class=train_limit_per_class, seed=seed)
    f_te, y_te, cls_te = list_image_folder(
        test_dir, limit_per_class=test_limit_per_class, seed=seed
    )
    if cls != cls_te or len(cls) != 2:
        raise UsageError(f"{pcam}: PCam needs classes 0/1 in train and valid, got {cls}/{cls_te}")
    adv = progress("train patches", len(f_tr)) if progress else None
    x_tr = _embed(enc, [read_rgb(p) for p in f_tr], pcam_mpp, batch_size)
    if adv:
        adv(len(f_tr))
    probe = train_mlp_probe(x_tr, y_tr, 2, epochs=epochs, seed=seed)
    test = [read_rgb(p) for p in f_te]
    x0 = _embed(enc, test, pcam_mpp, batch_size)
    boot_idx = bootstrap_indices(y_te, n_bootstrap, seed) if n_bootstrap > 0 else None
    scorer = SimilarityScorer(pixels=True, featsim=featsim)
    ref = scorer.reference(test)  # the originals' features, once
    grid_scorer = SimilarityScorer(encoder=enc)
    slide_img = slide_mpp = None
    if slide is not None:
        from ..slide import resolve_slide_path

        slide_img, slide_mpp = _slide_tiles(resolve_slide_path(slide), slide_max_side)

    def score(x: np.ndarray) -> dict[str, Any]:
        proba = probe.predict_proba(x)
        auc = roc_auc(y_te, proba)
        lo = hi = math.nan
        if boot_idx is not None:
            lo, hi = percentile_ci(bootstrap_auc(y_te, proba, boot_idx))
        return {"accuracy": float((proba.argmax(1) == y_te).mean()), "auc": auc,
                "auc_ci_low": lo, "auc_ci_high": hi}  # fmt: skip

    base = {"codec": "original", "quality": None, "bpp": 24.0, "bytes_per_patch": None,
            "psnr": math.inf, "featsim_mean": 1.0 if featsim else math.nan, "embsim": 1.0,
            **score(x0), "slide_grid_cosine": 1.0 if slide_img is not None else math.nan,
            "n_test": len(y_te), "seconds": 0.0}  # fmt: skip
    base["auc_drop"] = 0.0
    rows = [base]
    adv = progress("codec settings", len(codecs)) if progress else None
    for (label, q), codec in codecs.items():
        t1 = time.perf_counter()
        dec, nbytes = _coded(codec, test)
        pixels = sum(t.shape[0] * t.shape[1] for t in test)
        x = _embed(enc, dec, pcam_mpp, batch_size)
        sim = scorer.score(ref, dec)
        assert sim.pixels is not None
        row = {"codec": label, "quality": q, "bpp": 8 * nbytes / pixels,
               "bytes_per_patch": nbytes / len(test), "psnr": sim.pixels.mean_psnr,
               "featsim_mean": sim.featsim.summary()["featsim_mean"] if sim.featsim else math.nan,
               # the probe's own view: its embeddings of the patches it classifies
               "embsim": float(cosine_rows(x0, x).mean()), **score(x),
               "n_test": len(y_te)}  # fmt: skip
        row["auc_drop"] = base["auc"] - row["auc"]
        row["slide_grid_cosine"] = math.nan
        if slide_img is not None:
            rec = _tiled_roundtrip(codec, slide_img)
            grid = grid_scorer.score([slide_img], [rec], tile_mpp=slide_mpp).embsim
            assert grid is not None
            row["slide_grid_cosine"] = float(grid[0])
        row["seconds"] = time.perf_counter() - t1
        rows.append(row)
        if adv:
            adv(1)

    coded = rows[1:]
    settings = {
        "pcam": str(pcam), "pcam_mpp": pcam_mpp, "encoder": enc.name,
        "train_patches": len(y_tr), "test_patches": len(y_te),
        "train_limit_per_class": train_limit_per_class,
        "test_limit_per_class": test_limit_per_class, "epochs": epochs, "seed": seed,
        "n_bootstrap": n_bootstrap, "slide": str(slide) if slide is not None else None,
        "slide_max_side": slide_max_side, "tile": TILE,
        "protocol": "probe trained on original PCam train embeddings; test patches coded "
                    "one 96 px tile each, decoded, embedded, scored by the same probe",
    }  # fmt: skip
    report = {
        "settings": settings,
        "codecs": {label: codecs[(label, q)].describe() for (label, q) in codecs},
        "rows": rows,
        "spearman_vs_auc_drop": {
            m: _spearman([-r[m] for r in coded], [r["auc_drop"] for r in coded])
            for m in ("embsim", "featsim_mean", "psnr", "slide_grid_cosine")
        },
        "seconds": time.perf_counter() - t0,
    }
    paths = write_report(out_dir, report)
    report["paths"] = {k: str(v) for k, v in paths.items()}
    return report


def write_report(out_dir: Path, report: dict[str, Any]) -> dict[str, Path]:
    """downstream.csv / .json / .md / .png."""
    from ..jsonsafe import json_safe

    rows = report["rows"]
    paths = {k: out_dir / f"downstream.{k}" for k in ("csv", "json", "md", "png")}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    paths["json"].write_text(json.dumps(json_safe(report), indent=1))
    s = report["settings"]

    def f(v: Any, nd: int = 3) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return "inf" if v == math.inf else ("n/a" if not math.isfinite(v) else f"{v:.{nd}f}")
        return str(v)

    lines = [
        "# Downstream effect of compression (PCam probe on decoded patches)", "",
        f"Encoder `{s['encoder']}`; probe trained on {s['train_patches']} original PCam train "
        f"patches, tested on {s['test_patches']} PCam valid patches (seed {s['seed']}), each "
        "coded as one 96 px tile. Slide grid: "
        f"{s['slide']} (central {s['slide_max_side']} px square, {s['tile']} px tiles).", "",
        "| codec | q | bpp | B/patch | PSNR | featsim | embsim | acc | AUC (95 % CI) | AUC drop "
        "| slide grid cos |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['codec']} | {f(r['quality'], 0) if r['quality'] is not None else '-'} | "
            f"{f(r['bpp'])} | {f(r['bytes_per_patch'], 0)} | {f(r['psnr'], 2)} | "
            f"{f(r['featsim_mean'], 4)} | {f(r['embsim'], 4)} | {f(r['accuracy'])} | "
            f"{f(r['auc'])} ({f(r['auc_ci_low'])}-{f(r['auc_ci_high'])}) | "
            f"{f(r['auc_drop'], 4)} | {f(r['slide_grid_cosine'], 4)} |"
        )
    lines += ["", "Rank correlation (Spearman) of 1 - metric with the AUC drop over all coded "
              "settings: " + ", ".join(f"{k} {f(v, 2)}" for k, v in
                                       report["spearman_vs_auc_drop"].items())]  # fmt: skip
    paths["md"].write_text("\n".join(lines) + "\n")
    plot(paths["png"], rows)
    return paths


def plot(path: Path, rows: list[dict[str, Any]]) -> Path:
    """AUC, accuracy and embedding similarity vs bpp, one line per codec."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullFormatter

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    base = rows[0]
    by: dict[str, list[dict]] = {}
    for r in rows[1:]:
        by.setdefault(r["codec"], []).append(r)
    for ax, key, title in zip(axes, ("auc", "accuracy", "embsim"),
                              ("PCam probe AUC", "PCam probe accuracy",
                               "embedding similarity (cosine)"), strict=True):  # fmt: skip
        for name, rs in by.items():
            rs = sorted(rs, key=lambda r: r["bpp"])
            ax.plot([r["bpp"] for r in rs], [r[key] for r in rs], "o-", label=name, ms=4)
        ax.axhline(base[key], color="k", ls="--", lw=1, label="original")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator([0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 24]))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("bits per pixel")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
