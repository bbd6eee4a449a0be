"""Patch sources for encoder training, all brought to the model's resolution first.

A source is an in-memory stack of uint8 "context" images (S x S, S >= patch size): the
augmentation rotates/scales the context and the patch is cropped from its centre region, so
rotations never show padded corners. Images of every dataset are resampled from their own
mpp to the model's mpp, so an encoder trained on PCam (0.97 um/px) and Kather (0.495 um/px)
sees one physical scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import UsageError
from ...imagefolder import list_image_folder, prepare_image, read_rgb
from ...progress import Advance, ProgressStart


@dataclass
class PatchSource:
    """uint8 images (N, S, S, 3) at the model mpp, with optional integer labels."""

    name: str
    images: np.ndarray
    labels: np.ndarray | None = None
    classes: list[str] = field(default_factory=list)
    origin: str = ""  # where the images came from, for the model card

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: np.ndarray, name: str | None = None) -> PatchSource:
        labels = None if self.labels is None else self.labels[idx]
        return PatchSource(name or self.name, self.images[idx], labels, self.classes, self.origin)

    def describe(self) -> dict:
        d = {
            "name": self.name,
            "n": len(self),
            "size": int(self.images.shape[1]),
            "origin": self.origin,
        }
        if self.labels is not None:
            d["classes"] = {c: int((self.labels == i).sum()) for i, c in enumerate(self.classes)}
        return d


@dataclass
class DataSpec:
    """`[NAME=]DIR@MPP` from the command line."""

    name: str
    path: Path
    mpp: float

    @classmethod
    def parse(cls, spec: str) -> DataSpec:
        name, sep, rest = spec.partition("=")
        if not sep:
            name, rest = "", spec
        path_s, at, mpp_s = rest.rpartition("@")
        if not at:
            raise UsageError(f"--data {spec!r}: give the patches' resolution as DIR@MPP (um/px)")
        try:
            mpp = float(mpp_s)
        except ValueError:
            raise UsageError(f"--data {spec!r}: {mpp_s!r} is not a number (um/px)") from None
        if not 0.05 <= mpp <= 100:
            raise UsageError(f"--data {spec!r}: implausible resolution {mpp} um/px")
        path = Path(path_s)
        if not path.is_dir():
            raise UsageError(f"--data {spec!r}: folder not found: {path}")
        return cls(name or path.name, path, mpp)


def context_size(patch_size: int) -> int:
    """Side of the stored context: 1.5 x the patch (room for rotation and scale jitter)."""
    return int(math.ceil(patch_size * 1.5 / 2) * 2)


def splits_of(root: Path) -> tuple[Path, Path | None]:
    """`root/train` + `root/valid` (or `val`) when present, else the folder itself."""
    for val_name in ("valid", "val", "validation"):
        if (root / "train").is_dir() and (root / val_name).is_dir():
            return root / "train", root / val_name
    return root, None


def load_image_folder(
    root: Path,
    src_mpp: float,
    dst_mpp: float,
    patch: int,
    *,
    context: int | None = None,
    name: str | None = None,
    limit_per_class: int | None = None,
    seed: int = 0,
    progress: Advance | None = None,
    keep: Callable[[Path], bool] | None = None,
) -> PatchSource:
    """An ImageFolder at `dst_mpp`, optional seeded subset per class.

    Contexts are as large as the images allow, up to `context` (default 1.5 x patch), never
    below the patch: smaller images are upsized to the patch, and the origin says so.
    `keep` filters the files before the per-class subset is drawn (e.g. leaving out a
    held-out test split)."""
    if keep is None:
        files, labels, classes = list_image_folder(root, limit_per_class=limit_per_class,
                                                   seed=seed)  # fmt: skip
    else:
        files, labels, classes = _filtered_folder(root, keep, limit_per_class, seed)
    context = context or context_size(patch)
    first = read_rgb(files[0])
    side = round(min(first.shape[:2]) * src_mpp / dst_mpp)
    size = max(patch, min(context, side))
    out = np.empty((len(files), size, size, 3), np.uint8)
    for j, f in enumerate(files):
        out[j] = prepare_image(read_rgb(f), src_mpp, dst_mpp, size)[0]
        if progress:
            progress(1)
    origin = f"{root} ({src_mpp} um/px, {len(files)} images used)"
    if side < patch:
        origin += f" [upsized: {side} px at {dst_mpp} um/px < patch {patch}]"
    return PatchSource(name or root.name, out, labels, classes, origin)


def _filtered_folder(root: Path, keep: Callable[[Path], bool], limit: int | None, seed: int):
    """`list_image_folder` restricted to the files `keep` accepts (the same seeded per-class
    draw, over the kept files)."""
    files, labels, classes = list_image_folder(root)
    sel = np.asarray([keep(f) for f in files], bool)
    files, labels = [f for f, k in zip(files, sel, strict=True) if k], labels[sel]
    if limit is not None:
        idx = []
        for k in range(len(classes)):
            cls = np.flatnonzero(labels == k)
            if len(cls) > limit:
                cls = cls[
                    np.sort(np.random.default_rng([seed, k]).choice(len(cls), limit, replace=False))
                ]
            idx.append(cls)
        order = np.concatenate(idx)
        files, labels = [files[i] for i in order], labels[order]
    return files, labels, classes


def holdout(source: PatchSource, fraction: float, seed: int) -> tuple[PatchSource, PatchSource]:
    """Seeded split, stratified when labelled; at least one validation image per class."""
    rng = np.random.default_rng(seed)
    groups = (
        [np.arange(len(source))]
        if source.labels is None
        else [np.flatnonzero(source.labels == i) for i in range(len(source.classes))]
    )
    val = []
    for g in groups:
        g = rng.permutation(g)
        k = max(1, round(len(g) * fraction)) if len(g) > 1 else 0
        val.append(g[:k])
    val_idx = np.sort(np.concatenate(val))
    train_idx = np.setdiff1d(np.arange(len(source)), val_idx)
    return source.subset(train_idx), source.subset(val_idx, source.name)


def pool(sources: list[PatchSource], name: str, pad: bool = False) -> PatchSource:
    """Unlabelled union of several sources, centre-cropped to the smallest context (`pad`:
    smaller contexts are reflection-padded to the largest instead, so one small source, e.g.
    Kather's 77 px contexts, does not shrink the others' room for rotation)."""
    side = (max if pad else min)(s.images.shape[1] for s in sources)

    def centre(a: np.ndarray) -> np.ndarray:
        if a.shape[1] < side:
            lo = (side - a.shape[1]) // 2
            hi = side - a.shape[1] - lo
            return np.pad(a, ((0, 0), (lo, hi), (lo, hi), (0, 0)), mode="reflect")
        o = (a.shape[1] - side) // 2
        return a[:, o : o + side, o : o + side]

    images = np.concatenate([centre(s.images) for s in sources])
    return PatchSource(name, images, None, [], "; ".join(s.origin for s in sources))


@dataclass
class FeedInputs:
    """What the command line gives training: patch folders, slides and how much to use.
    Each feed takes the part its method needs (see `training.nic.feeds`)."""

    data: list[DataSpec] = field(default_factory=list)
    slides: list[Path] = field(default_factory=list)
    mpp_override: float | None = None  # level-0 um/px for slides lacking a plausible one
    limit_per_class: int | None = None
    val_limit_per_class: int | None = 256
    val_fraction: float = 0.15  # held out of folders without a train/valid split
    tissue_per_class: int = 2000  # multitask: tissue-task contexts per class
    val_pairs: int = 512  # contrastive: validation pairs
    # "class/file" names never loaded (the issue-24 held-out probe split: `probe.heldout_files`)
    exclude: frozenset[str] = frozenset()
    # "class/file" names that alone make up a folder's validation split (None: all of valid/)
    val_include: frozenset[str] | None = None
    # image feeds (VAE, BiGAN, SimCLR): also tissue contexts cut from --slides
    slide_contexts: bool = False
    slide_stride: int = 16  # px at the model mpp between slide contexts
    slide_min_tissue: float = 0.5
    # contrastive "different" partners: shares of adjacent / distant same-slide / other image
    # (None: the shipped sampler: 75 % adjacent, 25 % other image)
    pair_mix: dict[str, float] | None = None
    pair_other_anchor: float = 0.25  # share of anchors drawn from the --data images

    def split(
        self, spec: DataSpec, patch: int, mpp: float, seed: int, progress: ProgressStart | None
    ) -> tuple[PatchSource, PatchSource]:
        """Training and validation images of one `--data` folder at `mpp`."""
        train_root, val_root = splits_of(spec.path)

        def load(root: Path, lim: int | None, tag: str, only=None) -> PatchSource:
            def keep_file(f: Path) -> bool:
                name = f"{f.parent.name}/{f.name}"
                return name not in self.exclude and (only is None or name in only)

            filtered = bool(self.exclude) or only is not None
            files, labels, _ = list_image_folder(root)
            if filtered:
                sel = np.asarray([keep_file(f) for f in files], bool)
                labels = labels[sel]
            n = len(labels)
            if lim:
                n = int(sum(min(lim, (labels == i).sum()) for i in np.unique(labels)))
            advance = progress(f"loading {spec.name}/{tag}", n) if progress else None
            return load_image_folder(root, spec.mpp, mpp, patch, name=spec.name,
                                     limit_per_class=lim, seed=seed, progress=advance,
                                     keep=keep_file if filtered else None)  # fmt: skip

        if val_root is not None:
            return (
                load(train_root, self.limit_per_class, "train"),
                load(val_root, self.val_limit_per_class, "valid", self.val_include),
            )
        return holdout(load(train_root, self.limit_per_class, "all"), self.val_fraction, seed)

    def canvases(self, mpp: float) -> list[Canvas]:
        return [load_canvas(s, mpp, self.mpp_override) for s in self.slides]


# -- slides -------------------------------------------------------------------------------


@dataclass
class Canvas:
    """A whole slide (capped) at the model mpp, with a per-pixel tissue test."""

    name: str
    rgb: np.ndarray
    tissue: Callable[[np.ndarray], np.ndarray]  # boxes (N,4) in canvas px -> tissue fraction


MAX_CANVAS_SIDE = 8192  # larger slides are read at this side (a documented training cap)


def load_canvas(path: str | Path, dst_mpp: float, mpp_override: float | None = None) -> Canvas:
    """The slide at `dst_mpp`; `mpp_override` replaces its level-0 um/px (MppError when the
    slide has no plausible one and none is given)."""
    from ...slide import open_slide
    from ...slide.tissue import detect_tissue

    with open_slide(path, mpp_override=mpp_override) as reader:
        mpp = reader.require_mpp()
        w0, h0 = reader.info.dimensions
        side = min(MAX_CANVAS_SIDE, round(max(w0, h0) * mpp / dst_mpp))
        rgb, ds = reader.thumbnail(side)  # ds: level-0 px per canvas px
        mask = detect_tissue(reader, mpp)

    def tissue(boxes: np.ndarray) -> np.ndarray:
        return mask.fraction_in_boxes(np.asarray(boxes, np.float64) * ds)

    return Canvas(Path(path).name, rgb, tissue)


def grid_boxes(canvas: Canvas, size: int, stride: int) -> np.ndarray:
    h, w = canvas.rgb.shape[:2]
    ys, xs = np.mgrid[0 : h - size + 1 : stride, 0 : w - size + 1 : stride]
    n = xs.size
    return np.stack([xs.ravel(), ys.ravel(), np.full(n, size), np.full(n, size)], 1)


def crop(canvas: Canvas, box: np.ndarray) -> np.ndarray:
    x, y, w, h = (int(v) for v in box)
    return canvas.rgb[y : y + h, x : x + w]


def tissue_task(canvases: list[Canvas], size: int, per_class: int, seed: int) -> PatchSource:
    """Tissue (>= 60% tissue) vs background (<= 2%) contexts from slides, balanced."""
    rng = np.random.default_rng(seed)
    pools: dict[int, list[np.ndarray]] = {0: [], 1: []}
    for c in canvases:
        boxes = grid_boxes(c, size, max(8, size // 4))
        frac = c.tissue(boxes)
        for label, sel in ((0, frac <= 0.02), (1, frac >= 0.6)):
            pools[label] += [crop(c, b) for b in boxes[sel]]
    if min(len(pools[0]), len(pools[1])) < 4:
        raise UsageError("tissue task: the slides give too few tissue or background patches")
    images, labels = [], []
    for label in (0, 1):
        pick = rng.permutation(len(pools[label]))[:per_class]
        images += [pools[label][i] for i in pick]
        labels += [label] * len(pick)
    origin = ", ".join(c.name for c in canvases)
    return PatchSource(
        "tissue", np.stack(images), np.asarray(labels, np.int64), ["background", "tissue"], origin
    )


def slide_contexts(
    canvases: list[Canvas], size: int, stride: int, min_tissue: float
) -> PatchSource:
    """Unlabelled contexts on a grid over the tissue of every slide (image feeds)."""
    images = []
    for c in canvases:
        boxes = grid_boxes(c, size, stride)
        images += [crop(c, b) for b in boxes[c.tissue(boxes) >= min_tissue]]
    if not images:
        raise UsageError("the slides give no tissue contexts")
    origin = f"{', '.join(c.name for c in canvases)} ({len(images)} contexts, stride {stride})"
    return PatchSource("slides", np.stack(images), None, [], origin)


class PairSampler:
    """Contrastive pairs (Tellez et al. 2019, A.2): same location, or a different one.

    `same`: one context from a slide (or from the other-image pool), both views augmented
    independently later. `different`: 75% the location next to it (non-overlapping, any of
    the 8 neighbours, still on tissue), 25% a context from another image.

    `mix` (issue 24) sets the "different" partners deliberately instead: shares of
    `adjacent` (hard: next to the anchor, often the same tissue), `far` (a tissue location of
    the same slide at least `FAR` patches away: medium) and `other` (another image: easy);
    `other_anchor` is the share of anchors drawn from the other-image pool (whose partners
    are then other images).
    """

    FAR = 4  # patches: a "far" partner is at least this far from the anchor (Chebyshev)

    def __init__(self, canvases: list[Canvas], others: PatchSource | None, size: int, patch: int,
                 mix: dict[str, float] | None = None, other_anchor: float = 0.25):  # fmt: skip
        self.canvases, self.others, self.size, self.patch = canvases, others, size, patch
        self.mix, self.other_anchor = mix, other_anchor
        if mix is not None:
            unknown = set(mix) - {"adjacent", "far", "other"}
            if unknown or not sum(mix.values()) > 0:
                raise UsageError(f"pair mix {mix}: shares of adjacent, far, other (sum > 0)")
        self.anchors = []  # (canvas index, box) on tissue with a tissue neighbour
        for ci, c in enumerate(canvases):
            boxes = grid_boxes(c, size, max(8, patch // 4))
            keep = c.tissue(boxes) >= 0.5
            self.anchors += [(ci, b) for b in boxes[keep]]
        if len(self.anchors) < 8:
            raise UsageError("contrastive: the slides give fewer than 8 tissue locations")

    def _neighbour(self, ci: int, box: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        c = self.canvases[ci]
        h, w = c.rgb.shape[:2]
        for k in rng.permutation(8):
            dy, dx = divmod(int(k if k < 4 else k + 1), 3)  # skip the centre (4)
            nb = box.copy()
            nb[0] += (dx - 1) * self.patch
            nb[1] += (dy - 1) * self.patch
            if 0 <= nb[0] <= w - self.size and 0 <= nb[1] <= h - self.size:
                if c.tissue(nb[None])[0] >= 0.5:
                    return nb
        return None

    def _far(self, ci: int, box: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        for _ in range(16):
            cj, other = self.anchors[rng.integers(len(self.anchors))]
            if cj == ci and np.abs(other[:2] - box[:2]).max() >= self.FAR * self.patch:
                return other
        return None

    def _sample_mix(self, n: int, rng: np.random.Generator):
        a = np.empty((n, self.size, self.size, 3), np.uint8)
        b = np.empty_like(a)
        same = (np.arange(n) % 2 == 0).astype(np.int64)
        rng.shuffle(same)
        kinds = list(self.mix)
        shares = np.asarray([self.mix[k] for k in kinds], np.float64)
        shares /= shares.sum()
        n_other = 0 if self.others is None else len(self.others)
        for i in range(n):
            ci, box = self.anchors[rng.integers(len(self.anchors))]
            from_other = n_other and rng.random() < self.other_anchor
            a[i] = (
                self.others.images[rng.integers(n_other)]
                if from_other
                else crop(self.canvases[ci], box)
            )
            if same[i]:
                b[i] = a[i]
                continue
            kind = "other" if from_other else kinds[rng.choice(len(kinds), p=shares)]
            nb = None
            if kind == "adjacent":
                nb = self._neighbour(ci, box, rng)
            elif kind == "far":
                nb = self._far(ci, box, rng)
            if nb is not None:
                b[i] = crop(self.canvases[ci], nb)
            elif n_other:
                b[i] = self.others.images[rng.integers(n_other)]
            else:
                cj, box_j = self.anchors[rng.integers(len(self.anchors))]
                b[i] = crop(self.canvases[cj], box_j)
        return a, b, same

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.mix is not None:
            return self._sample_mix(n, rng)
        a = np.empty((n, self.size, self.size, 3), np.uint8)
        b = np.empty_like(a)
        same = (np.arange(n) % 2 == 0).astype(np.int64)
        rng.shuffle(same)
        n_other = 0 if self.others is None else len(self.others)
        for i in range(n):
            ci, box = self.anchors[rng.integers(len(self.anchors))]
            anchor_from_other = n_other and rng.random() < 0.25
            anchor = (
                self.others.images[rng.integers(n_other)]
                if anchor_from_other
                else crop(self.canvases[ci], box)
            )
            a[i] = anchor
            if same[i]:
                b[i] = anchor
                continue
            nb = None if anchor_from_other or rng.random() < 0.25 else self._neighbour(ci, box, rng)
            if nb is not None:
                b[i] = crop(self.canvases[ci], nb)
            elif n_other:
                b[i] = self.others.images[rng.integers(n_other)]
            else:  # another slide's location
                cj, box_j = self.anchors[rng.integers(len(self.anchors))]
                b[i] = crop(self.canvases[cj], box_j)
        return a, b, same
