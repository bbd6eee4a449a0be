"""Slide-level models on embedding grids: `train slide-model`, `predict`, `heatmap`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ..slidemodel import SLIDE_MODELS, TASKS
from .common import console, guarded, progress_bars


def _choices(registry) -> str:
    """`name (summary)` per entry: help texts from the registries, without importing torch."""
    return "; ".join(f"{n}: {registry.entry(n).summary}" for n in registry)


def train_slide_model(
    grids: Annotated[Path, typer.Argument(help="Folder of embedding grids (from `encode`).")],
    labels: Annotated[
        Path,
        typer.Argument(help="CSV: slide, then label | value | time,event; optional fold."),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Run folder to create.")],
    task: Annotated[str, typer.Option(help=f"{_choices(TASKS)}.")] = "classify",
    model: Annotated[str, typer.Option(help=f"{_choices(SLIDE_MODELS)}.")] = "nic-cnn",
    folds: Annotated[int, typer.Option(help="k for cross-validation (>= 3).")] = 5,
    crop: Annotated[int, typer.Option(help="Crop side R in grid cells.")] = 64,
    epochs: Annotated[int, typer.Option(help="Maximum epochs per fold.")] = 40,
    steps_per_epoch: Annotated[int, typer.Option(help="Batches per epoch.")] = 50,
    batch_size: Annotated[int, typer.Option(help="Crops per batch.")] = 16,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    patience: Annotated[int, typer.Option(help="Early stop after N epochs w/o gain.")] = 8,
    tta_crops: Annotated[int, typer.Option(help="Test-time crops T per slide.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed (folds, crops, init).")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda (default: GPU if any).")] = None,
) -> None:
    """Cross-validated slide-level model on grids with slide labels only (TPAMI 2019 NIC)."""

    def go() -> None:
        if task not in TASKS:
            raise TASKS.unknown(task)
        if model not in SLIDE_MODELS:
            raise SLIDE_MODELS.unknown(model)
        from ..bounds import MAX_BATCH, MAX_PATCH, check_range

        check_range("--crop", crop, 1, MAX_PATCH)
        check_range("--epochs", epochs, 1, 100_000)
        check_range("--steps-per-epoch", steps_per_epoch, 1, 1_000_000)
        check_range("--batch-size", batch_size, 2, MAX_BATCH)
        check_range("--tta-crops", tta_crops, 1, 1024)
        check_range("--folds", folds, 3, 100)
        from ..store.atomic import check_output

        check_output(output, folder=True)
        from ..slidemodel.data import find_grids, load_grids, read_labels

        lab = read_labels(labels, task)
        items = load_grids(find_grids([grids]), lab)
        from ..slidemodel.cv import cross_validate  # torch from here on
        from ..slidemodel.fit import FitSettings

        settings = FitSettings(
            model=model, crop=crop, epochs=epochs, steps_per_epoch=steps_per_epoch,
            batch_size=batch_size, lr=lr, patience=patience, tta_crops=tta_crops, seed=seed,
            device=device,
        )  # fmt: skip
        with progress_bars("steps") as start:
            m = cross_validate(items, lab, folds, settings, output, progress=start,
                               log=lambda s: console.print(s, highlight=False))  # fmt: skip
        p = m["primary"]
        lo, hi = m["ci95"][p]
        console.print(
            f"out-of-fold {p} = {m['out_of_fold'].get(p, float('nan')):.3f} "
            f"(95% CI {lo:.3f}-{hi:.3f}) on {m['n_slides']} slides -> {output}"
        )
        if "risk_groups" in m:
            console.print(f"risk groups: log-rank p = {m['risk_groups']['logrank_p']:.3g}")

    guarded(go)


def predict(
    run: Annotated[Path, typer.Argument(help="Run folder from `train slide-model`.")],
    grids: Annotated[list[Path], typer.Argument(help="Grids or folders of grids.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Predictions CSV.")] = Path(
        "predictions.csv"
    ),
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
) -> None:
    """Predict slides with a trained run (ensemble of its fold models, test-time crops)."""

    def go() -> None:
        from ..slidemodel import build_task
        from ..slidemodel.cv import predict_run, prediction_rows
        from ..slidemodel.data import find_grids, load_grids
        from ..store.atomic import check_output, write_csv

        check_output(output, overwrite=overwrite, inputs=[run, *grids])
        items = load_grids(find_grids(grids))
        out, config = predict_run(run, items, device)
        task = build_task(config["task"])
        rows = prediction_rows(task, config["classes"], out, [it.slide for it in items])
        write_csv(output, rows)
        console.print(f"{len(rows)} slides -> {output}")

    guarded(go)


def heatmap(
    run: Annotated[Path, typer.Argument(help="Run folder from `train slide-model`.")],
    grid: Annotated[Path, typer.Argument(help="One embedding grid.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG overlay to write.")],
    slide: Annotated[
        Path | None,
        typer.Option(help="Slide for the background (default: the path stored in the grid)."),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
) -> None:
    """Grad-CAM heatmap (first conv layer) over the whole grid: PNG overlay + .npy array."""

    def go() -> None:
        from ..errors import UsageError
        from ..slidemodel.cv import heatmap_run
        from ..slidemodel.data import load_grid_item
        from ..store.atomic import atomic_path, check_output
        from ..viz import heatmap_overlay, pca_rgb, save_png

        if output.suffix.lower() != ".png":
            raise UsageError(f"--output {output}: must end in .png")
        inputs = [run, grid, *([slide] if slide else [])]
        check_output(output, overwrite=overwrite, inputs=inputs)
        check_output(output.with_suffix(".npy"), overwrite=overwrite, inputs=inputs)
        item = load_grid_item(grid)
        heat = heatmap_run(run, item, device)
        background = _slide_background(item, slide)
        if background is None:
            background = pca_rgb(item.features, item.mask)
        save_png(heatmap_overlay(background, heat, item.mask), output)
        npy = output.with_suffix(".npy")
        with atomic_path(npy) as tmp, open(tmp, "wb") as f:
            np.save(f, heat)
        console.print(f"heatmap {heat.shape[0]}x{heat.shape[1]} -> {output}, {npy}")

    guarded(go)


def _slide_background(item, slide: Path | None) -> np.ndarray | None:
    """Thumbnail of exactly the grid's extent (white beyond the slide), or None."""
    from PIL import Image

    from ..errors import SlidepressError
    from ..slide import open_slide

    path = slide or Path((item.metadata.get("slide") or {}).get("path", ""))
    if not str(path) or not path.exists():
        if slide is not None:
            from ..errors import UsageError

            raise UsageError(f"slide not found: {slide}")
        return None
    rows, cols = item.mask.shape
    try:
        with open_slide(path) as reader:
            thumb, ds = reader.thumbnail(2048)
    except SlidepressError:
        if slide is not None:
            raise
        return None
    cell0 = item.cell_level0
    ext_w, ext_h = round(cols * cell0 / ds), round(rows * cell0 / ds)
    canvas = np.full((max(ext_h, 1), max(ext_w, 1), 3), 255, np.uint8)
    h, w = min(ext_h, thumb.shape[0]), min(ext_w, thumb.shape[1])
    canvas[:h, :w] = thumb[:h, :w]
    if max(canvas.shape[:2]) < 512:  # small grids: enlarge so cells stay visible
        f = 512 / max(canvas.shape[:2])
        size = (round(canvas.shape[1] * f), round(canvas.shape[0] * f))
        canvas = np.asarray(Image.fromarray(canvas).resize(size, Image.Resampling.LANCZOS))
    return canvas
