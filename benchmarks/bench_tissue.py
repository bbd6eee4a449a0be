"""Tissue detection: cells kept vs cells designed to be tissue, on slides with pale tissue.

Issue 9 part 3: on a mosaic built to be 55 % tissue, Otsu on saturation kept 38 % of the
cells, because with pale and dark tissue on one slide the Otsu cut falls between them. Here
synthetic slides are built from REAL tissue pixels with a known tissue layout:

- cells of one real patch each: PatchCamelyon patches (96 px, 0.97 um/px; only "filled" ones,
  < 5 % glass-like pixels, so a cell's designed tissue fraction is ~1) or Kather 2016 patches
  (150 px, 0.495 um/px; TUMOR, STROMA, COMPLEX, LYMPHO, DEBRIS, MUCOSA in the 8 dihedral
  orientations), inside an irregular tissue blob of a designed area on a glass colour
  ((236, 234, 240) or white-ish (246, 245, 243); for Kather also real glass: the EMPTY patches);
- a designed share of the tissue cells (0, 25, 50, 100 %; one contiguous region) is made pale:
  its real pixels are blended towards the glass colour by 50-75 % (drawn per cell), so texture
  and stain hue stay real and only the stain strength drops;
- sensor noise (Gaussian, sigma 2 levels) and optionally vignetting (brightness falling to
  88 % in the corners, multiplying glass and tissue alike).

Each slide goes through `detect_tissue` (in memory, at the slide's mpp) and `encode`'s rule:
a cell is kept when its mask fraction is >= 0.5. Reported per slide: designed tissue share,
kept share, kept/designed, recall on dark and on pale cells, false keeps on glass cells, for
the pre-issue-9 method (Otsu on HSV saturation, copied below as `old_segment_tissue`) and the
current one. Also: the mosaic of the issue (uncurated PCam mosaic from `synthetic.mosaic`, 64 px
cells; many of those patches are mostly fat or glass, so next to the designed share it shows
the share of cells whose patch has < 50 % glass-like pixels), Kather ADIPOSE cells (fat: thin
membranes around empty cells; no designed fraction, reported as kept share), the shared
slides' tissue fractions old vs new (and their agreement), and the time per 4096^2
thumbnail, old vs new alternating in the same run.

    python benchmarks/bench_tissue.py            # ~2-3 min on 2 busy cores
    python benchmarks/bench_tissue.py --quick    # fewer seeds, no 4096^2 timing

Writes .bench/tissue/results.json and results.md, and an overlay of one slide per method.

One file on purpose (over the ~450-line guide): tests/test_tissue.py loads this file's slide
builder by path, so it imports no other benchmark module.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

# Not from common.py: tests/test_tissue.py loads this file by path (benchmarks/ not on sys.path).
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SLIDEPRESS_SHARED_DATA", REPO.parent / "shared" / "data"))
PCAM = SHARED / "patches" / "pcam"
KATHER = SHARED / "patches" / "kather2016"
SLIDES = SHARED / "slides"
OUT = REPO / ".bench" / "tissue"

PCAM_MPP = 0.97
KATHER_MPP = 0.495
GLASS_LAVENDER = (236, 234, 240)  # the colour `synthetic.mosaic` renders glass with
GLASS_WHITE = (246, 245, 243)
KATHER_TISSUE = ("01_TUMOR", "02_STROMA", "03_COMPLEX", "04_LYMPHO", "05_DEBRIS", "06_MUCOSA")
KEEP_FRACTION = 0.5  # encode's default --tissue-threshold


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- real patches --------------------------------------------------------------------------


def glass_like_fraction(patch: np.ndarray) -> float:
    """Share of a patch's pixels that look like glass (bright and near-neutral)."""
    a = patch.astype(np.int16)
    mn, mx = a.min(axis=2), a.max(axis=2)
    return float(((mn >= 200) & (mx - mn <= 20)).mean())


def pcam_filled(limit: int = 600, max_glass: float = 0.05) -> np.ndarray:
    """(N, 96, 96, 3) PCam train patches (first `limit` files of each label, sorted) with
    fewer than `max_glass` glass-like pixels: every pixel of such a cell is tissue."""
    out = []
    for label in ("0", "1"):
        for f in sorted((PCAM / "train" / label).iterdir())[:limit]:
            p = np.asarray(Image.open(f).convert("RGB"))
            if p.shape == (96, 96, 3) and glass_like_fraction(p) < max_glass:
                out.append(p)
    return np.stack(out)


def _dihedral(p: np.ndarray) -> list[np.ndarray]:
    rots = [np.rot90(p, k) for k in range(4)]
    return [np.ascontiguousarray(q) for r in rots for q in (r, r[:, ::-1])]


def kather_patches(classes: tuple[str, ...] = KATHER_TISSUE) -> np.ndarray:
    """(N, 150, 150, 3): every Kather patch of `classes`, in its 8 dihedral orientations."""
    out = []
    for c in classes:
        for f in sorted((KATHER / c).iterdir()):
            out += _dihedral(np.asarray(Image.open(f).convert("RGB")))
    return np.stack(out)


# -- synthetic slides ----------------------------------------------------------------------


@dataclass
class Design:
    """A synthetic slide and its ground truth."""

    image: np.ndarray  # (n * P, n * P, 3) uint8
    tissue: np.ndarray  # (n, n) bool: cells holding a real tissue patch
    pale: np.ndarray  # (n, n) bool, inside `tissue`: cells blended towards glass
    cell: int  # cell side, px
    mpp: float  # um/px of `image`
    glass: tuple[int, int, int]

    @property
    def designed(self) -> float:
        return float(self.tissue.mean())


def _blob(n: int, fraction: float, rng: np.random.Generator, inside: np.ndarray | None = None):
    """An irregular region of round(fraction x available) cells: smoothed noise (plus a pull
    to the centre when `inside` is None), ranked; within `inside` when given."""
    yy, xx = np.mgrid[0:n, 0:n]
    c = (n - 1) / 2
    field_ = ndimage.gaussian_filter(rng.standard_normal((n, n)), 2.0, mode="reflect")
    field_ = field_ / (field_.std() + 1e-12)
    avail = np.ones((n, n), bool) if inside is None else inside
    if inside is None:
        field_ = field_ - 2.5 * ((yy - c) ** 2 + (xx - c) ** 2) / (n / 2) ** 2
    k = round(fraction * int(avail.sum()))
    out = np.zeros((n, n), bool)
    if k > 0:
        order = np.argsort(np.where(avail, -field_, np.inf), axis=None)[:k]
        out.flat[order] = True
    return out


def make_slide(
    patches: np.ndarray,
    mpp: float,
    *,
    n: int = 16,
    tissue_fraction: float = 0.55,
    pale_share: float = 0.25,
    blend: tuple[float, float] = (0.5, 0.75),
    glass: tuple[int, int, int] = GLASS_LAVENDER,
    glass_patches: np.ndarray | None = None,
    noise: float = 2.0,
    vignette: float = 0.0,
    seed: int = 0,
) -> Design:
    """An n x n slide of real `patches` (one per tissue cell) on `glass` (or on real glass
    patches), a contiguous `pale_share` of the tissue blended towards the glass colour."""
    rng = np.random.default_rng(seed)
    p = patches.shape[1]
    tissue = _blob(n, tissue_fraction, rng)
    pale = _blob(n, pale_share, rng, inside=tissue)
    cells = np.empty((n, n, p, p, 3), np.float32)
    if glass_patches is None:
        cells[...] = np.asarray(glass, np.float32)
    else:
        cells[...] = glass_patches[rng.integers(0, len(glass_patches), (n, n))]
    ids = rng.choice(len(patches), int(tissue.sum()), replace=int(tissue.sum()) > len(patches))
    cells[tissue] = patches[ids]
    if pale.any():
        b = rng.uniform(*blend, int(pale.sum()))[:, None, None, None].astype(np.float32)
        cells[pale] = cells[pale] * (1 - b) + np.asarray(glass, np.float32) * b
    img = cells.transpose(0, 2, 1, 3, 4).reshape(n * p, n * p, 3)
    if vignette:
        yy, xx = np.mgrid[0 : n * p, 0 : n * p].astype(np.float32)
        c = (n * p - 1) / 2
        img *= (1 - vignette * ((yy - c) ** 2 + (xx - c) ** 2) / (2 * c * c))[..., None]
    if noise:
        img += noise * rng.standard_normal(img.shape, dtype=np.float32)
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return Design(img, tissue, pale, p, mpp, glass)


def array_slide(image: np.ndarray, mpp: float):
    """An in-memory one-level SlideReader of `image` (no file, no codec)."""
    from slidepress.slide.base import SlideInfo, SlideReader

    class ArraySlide(SlideReader):
        name = "array"

        def __init__(self) -> None:
            super().__init__("<memory>")
            h, w = image.shape[:2]
            self.info = SlideInfo(
                "<memory>", self.name, None, (w, h), ((w, h),), (1.0,), (mpp, mpp)
            )

        def _read_level(self, lx: int, ly: int, level: int, width: int, height: int):
            return np.ascontiguousarray(image[ly : ly + height, lx : lx + width])

    return ArraySlide()


# -- the method before issue 9 (for comparison; verbatim apart from the name) ---------------


def old_segment_tissue(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """Pre-issue-9 `segment_tissue`: Otsu on HSV saturation (floor 0.07), morphology, and
    small objects removed below max(16, pixels / 5000)."""
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk, remove_small_holes, remove_small_objects

    from slidepress.slide.tissue import saturation

    s = saturation(rgb)
    s = ndimage.median_filter(s, size=3)
    try:
        t = float(threshold_otsu(s))
    except ValueError:  # constant image
        t = 1.0
    t = max(t, 0.07)
    mask = s > t
    del s
    mask &= np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]) > 40
    mask = ndimage.binary_closing(mask, structure=disk(2))
    mask = ndimage.binary_opening(mask, structure=disk(1))
    min_size = max(16, mask.size // 5000)
    mask = remove_small_objects(mask, max_size=min_size)
    mask = remove_small_holes(mask, max_size=min_size * 4)
    return mask, t


def old_detect_tissue(reader, slide_mpp: float):
    """Pre-issue-9 `detect_tissue` (same thumbnail, old segmentation)."""
    from slidepress.slide import tissue as T

    w0, h0 = reader.info.dimensions
    downsample = max(1.0, T.MASK_MPP / slide_mpp, max(w0, h0) / T.MASK_MAX_SIDE)
    thumb, ds = reader.thumbnail(max(1, round(max(w0, h0) / downsample)))
    mask, t = old_segment_tissue(thumb)
    return T.TissueMask(mask=mask, downsample=ds, threshold=t, thumbnail=thumb)


def new_detect_tissue(reader, slide_mpp: float):
    from slidepress.slide.tissue import detect_tissue

    return detect_tissue(reader, slide_mpp)


METHODS = {"old": old_detect_tissue, "new": new_detect_tissue}


# -- scoring -------------------------------------------------------------------------------


def kept_cells(design: Design, detect=new_detect_tissue) -> np.ndarray:
    """(n, n) bool: cells `encode` would keep (mask fraction >= 0.5) on this slide."""
    n = design.tissue.shape[0]
    ys, xs = np.mgrid[0:n, 0:n]
    p = design.cell
    boxes = np.stack([xs.ravel() * p, ys.ravel() * p, np.full(n * n, p), np.full(n * n, p)], 1)
    tm = detect(array_slide(design.image, design.mpp), design.mpp)
    return tm.fraction_in_boxes(boxes.astype(np.float64)).reshape(n, n) >= KEEP_FRACTION


def score(design: Design, kept: np.ndarray) -> dict:
    """Designed vs kept tissue share, recall on dark / pale cells, false keeps on glass."""
    dark = design.tissue & ~design.pale

    def rate(sel: np.ndarray) -> float | None:
        return round(float(kept[sel].mean()), 4) if sel.any() else None

    return {
        "designed": round(design.designed, 4),
        "kept": round(float(kept.mean()), 4),
        "kept_over_designed": round(float(kept.mean()) / max(design.designed, 1e-9), 4),
        "recall_dark": rate(dark),
        "recall_pale": rate(design.pale),
        "false_keep": rate(~design.tissue),
    }


# -- the benchmark -------------------------------------------------------------------------


def synthetic_cases(seeds: list[int]) -> list[tuple[str, dict, int]]:
    cases = []
    for src in ("pcam", "kather"):
        for pale in (0.0, 0.25, 0.5, 1.0):
            for glass in ("lavender", "white"):
                for s in seeds:
                    cases.append((src, {"pale_share": pale, "glass": glass}, s))
        for s in seeds:
            cases.append((src, {"pale_share": 0.5, "glass": "lavender", "vignette": 0.12}, s))
    for s in seeds:
        cases.append(("kather", {"pale_share": 0.5, "glass": "empty"}, s))
    return cases


def run_synthetic(seeds: list[int], n: int) -> list[dict]:
    pools = {"pcam": (pcam_filled(), PCAM_MPP), "kather": (kather_patches(), KATHER_MPP)}
    empty = kather_patches(("08_EMPTY",)).astype(np.float32)
    log(f"patches: pcam {len(pools['pcam'][0])} filled, kather {len(pools['kather'][0])}")
    rows = []
    for src, cfg, seed in synthetic_cases(seeds):
        patches, mpp = pools[src]
        glass = {"lavender": GLASS_LAVENDER, "white": GLASS_WHITE, "empty": None}[cfg["glass"]]
        kw = {"glass": glass} if glass else {"glass": (243, 244, 243), "glass_patches": empty}
        d = make_slide(
            patches, mpp, n=n, pale_share=cfg["pale_share"], vignette=cfg.get("vignette", 0.0),
            seed=seed, **kw,
        )  # fmt: skip
        row = {"source": src, **cfg, "seed": seed}
        for name, fn in METHODS.items():
            row[name] = score(d, kept_cells(d, fn))
        rows.append(row)
    return rows


def issue_mosaic(seeds: list[int]) -> list[dict]:
    """The issue's case: `synthetic.mosaic` mosaics of uncurated PCam label-0 patches (64 px
    crops; many hold fat or glass, so 'designed' over-counts tissue there)."""
    from slidepress.synthetic import mosaic as M
    from slidepress.synthetic import pcam

    files = sorted((PCAM / "train" / "0").iterdir())[:1500]
    patches = pcam.load_patches(files, None, None)
    rows = []
    for s in seeds:
        rng = np.random.default_rng(s)
        m = M.make_mosaic(f"m{s}", 0, np.arange(len(files)), np.arange(0), rng, M.MosaicConfig())
        img = M.render(m, patches)
        d = Design(img, m.tissue, np.zeros_like(m.tissue), M.CELL_PX, M.PCAM_MPP, M.GLASS)
        gl = np.array([glass_like_fraction(patches[i]) for i in m.cells[m.tissue]])
        row = {
            "seed": s,
            "glass_like_share_of_patches": round(float(gl.mean()), 3),
            # cells whose own pixels are mostly not glass-like: a pixel-level reference
            "reference": round(float((gl < 0.5).sum() / m.tissue.size), 4),
        }
        for name, fn in METHODS.items():
            row[name] = score(d, kept_cells(d, fn))
        rows.append(row)
    return rows


def adipose(seeds: list[int], n: int) -> list[dict]:
    """Kather ADIPOSE (fat) cells on lavender glass: kept share of the fat cells."""
    fat = kather_patches(("07_ADIPOSE",))
    rows = []
    for s in seeds:
        d = make_slide(fat, KATHER_MPP, n=n, pale_share=0.0, seed=s)
        rows.append(
            {
                "seed": s,
                **{k: score(d, kept_cells(d, f))["recall_dark"] for k, f in METHODS.items()},
            }
        )
    return rows


def shared_slides(out: Path) -> list[dict]:
    from slidepress.slide import open_slide

    cases = [
        ("CMU-1-Small-Region.svs", 0.499),
        ("CMU-1-Small-Region_pyramid_jpeg90.tiff", 0.499),
        ("CMU-1-Small-Region-dicom", 0.499),
        ("CropBreastSlide.tiff", 1.0),  # bogus file mpp; 1.0 as in tests/test_cli.py
    ]
    rows = []
    for name, mpp in cases:
        path = SLIDES / name
        if not path.exists():
            continue
        with open_slide(path) as r:
            masks = {k: f(r, mpp) for k, f in METHODS.items()}
        a, b = masks["old"].mask, masks["new"].mask
        rows.append({
            "slide": name,
            "old_fraction": round(float(a.mean()), 4),
            "new_fraction": round(float(b.mean()), 4),
            "iou_old_new": round(float((a & b).sum() / max((a | b).sum(), 1)), 4),
            "new_only": round(float((b & ~a).mean()), 4),
            "old_only": round(float((a & ~b).mean()), 4),
            "new": masks["new"].describe(),
        })  # fmt: skip
        _save_overlay(masks, out / f"overlay_{name.split('.')[0]}.png")
    return rows


def _save_overlay(masks: dict, path: Path) -> None:
    from slidepress.viz import save_png, tissue_overlay

    thumb = masks["new"].thumbnail
    pics = [tissue_overlay(thumb, masks[k].mask, max_side=1024) for k in ("old", "new")]
    save_png(np.concatenate(pics, axis=1), path)


def timing(repeat: int) -> dict:
    """Seconds per 4096^2 thumbnail (a slide of real PCam patches, 25 % pale), old vs new
    alternating; the ratio is the comparable number on a shared machine."""
    from slidepress.slide.tissue import segment_tissue

    patches = pcam_filled(limit=300)
    d = make_slide(patches, PCAM_MPP, n=4096 // 96 + 1, pale_share=0.25, seed=0)
    thumb = np.ascontiguousarray(d.image[:4096, :4096])
    t = {"old": [], "new": []}
    for _ in range(repeat):
        for name, fn in (("old", old_segment_tissue), ("new", segment_tissue)):
            t0 = time.perf_counter()
            fn(thumb)
            t[name].append(time.perf_counter() - t0)
    old, new = float(np.median(t["old"])), float(np.median(t["new"]))
    return {"old_s": round(old, 3), "new_s": round(new, 3), "new_over_old": round(new / old, 3),
            "runs": t}  # fmt: skip


def summarise(rows: list[dict]) -> list[dict]:
    """Mean kept/designed etc. per (source, pale share, glass, vignette), old and new."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["source"], r["pale_share"], r["glass"], r.get("vignette", 0.0))
        groups.setdefault(key, []).append(r)
    out = []
    for (src, pale, glass, vig), rs in groups.items():
        item = {"source": src, "pale_share": pale, "glass": glass, "vignette": vig, "n": len(rs)}
        for m in METHODS:
            for k in ("kept_over_designed", "recall_dark", "recall_pale", "false_keep"):
                vals = [r[m][k] for r in rs if r[m][k] is not None]
                item[f"{m}_{k}"] = round(float(np.mean(vals)), 3) if vals else None
        out.append(item)
    return out


def _table(header: list[str], rows: list[list]) -> list[str]:
    def cell(v) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]


def to_markdown(res: dict) -> str:
    lines = ["# Tissue detection: kept vs designed", ""]
    cols = ("kept_over_designed", "recall_pale", "recall_dark", "false_keep")
    header = ["source", "pale", "glass", "vignette", "n"]
    header += [f"{c} {m}" for c in ("kept/designed", "pale recall", "dark recall", "false keep")
               for m in ("old", "new")]  # fmt: skip
    rows = [
        [s["source"], s["pale_share"], s["glass"], s["vignette"], s["n"]]
        + [s[f"{m}_{c}"] for c in cols for m in ("old", "new")]
        for s in res["summary"]
    ]
    lines += _table(header, rows)
    lines += ["", "## Issue mosaics (uncurated PCam label 0, 64 px cells)", ""]
    rows = [
        [r["seed"], r["new"]["designed"], r["reference"], r["old"]["kept"], r["new"]["kept"],
         r["glass_like_share_of_patches"]]
        for r in res["issue_mosaic"]
    ]  # fmt: skip
    header = [
        "seed",
        "designed",
        "cells < 50 % glass-like",
        "kept old",
        "kept new",
        "glass-like px",
    ]
    lines += _table(header, rows)
    lines += ["", "## Kather ADIPOSE cells kept (no designed fraction: fat is mostly empty)", ""]
    lines += _table(
        ["seed", "old", "new"], [[r["seed"], r["old"], r["new"]] for r in res["adipose"]]
    )
    lines += ["", "## Shared slides (mask fraction)", ""]
    rows = [
        [r["slide"], r["old_fraction"], r["new_fraction"], r["iou_old_new"], r["new_only"],
         r["old_only"], r["new"]["threshold"]]
        for r in res["shared"]
    ]  # fmt: skip
    lines += _table(["slide", "old", "new", "IoU", "new only", "old only", "cut"], rows)
    if res.get("timing"):
        t = res["timing"]
        lines += [
            "",
            f"Time per 4096^2 thumbnail: old {t['old_s']} s, new {t['new_s']} s, new/old "
            f"{t['new_over_old']} (median of {len(t['runs']['old'])}, alternating, same run; "
            "the machine may be shared).",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="slides per configuration")
    ap.add_argument("--grid", type=int, default=20, help="slide side in cells")
    ap.add_argument("--repeat", type=int, default=3, help="timing runs per method")
    ap.add_argument("--quick", action="store_true", help="1 seed, 12 x 12 cells, no timing")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if not (PCAM.is_dir() and KATHER.is_dir()):
        log(f"patches not found under {SHARED / 'patches'} (see README)")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = [0] if args.quick else list(range(args.seeds))
    n = 12 if args.quick else args.grid
    t0 = time.perf_counter()
    res: dict = {"grid": n, "seeds": seeds}
    rows = run_synthetic(seeds, n)
    res["summary"] = summarise(rows)
    res["synthetic"] = rows
    log(f"synthetic: {len(rows)} slides, {time.perf_counter() - t0:.0f} s")
    res["issue_mosaic"] = issue_mosaic(seeds)
    res["adipose"] = adipose(seeds, n)
    res["shared"] = shared_slides(args.out) if SLIDES.is_dir() else []
    if not args.quick:
        res["timing"] = timing(args.repeat)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    (args.out / "results.json").write_text(json.dumps(res, indent=1))
    md = to_markdown(res)
    (args.out / "results.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
