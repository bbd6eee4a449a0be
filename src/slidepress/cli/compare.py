"""`slidepress compare`: what compression does to the NIC grid of a whole slide."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, guarded, progress_bars


def compare(
    original: Annotated[str, typer.Argument(help="The original slide (or @sample).")],
    compressed: Annotated[
        str, typer.Argument(help="Its compressed version: a container (.spz) or any slide.")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the outputs.")],
    encoder: Annotated[str, typer.Option(help="Encoder whose grid is compared.")] = "nic-multitask",
    tissue_threshold: Annotated[
        float, typer.Option(help="Cells with at least this tissue fraction are compared.")
    ] = 0.5,
    overwrite: Annotated[
        bool, typer.Option(help="Replace outputs of an earlier comparison.")
    ] = False,
) -> None:
    """Encode the same grid of both slides; write the per-cell cosine similarity (cosine.npy,
    aligned with the grid), a heat map over the thumbnail (heatmap.png) and compare.json;
    print mean / 5th percentile / worst cells and the PSNR over tissue at the grid's mpp."""

    def body() -> None:
        from ..pipeline.compare import compare_grids
        from ..slide import resolve_slide_path

        with progress_bars(unit="cells") as start:
            r = compare_grids(
                resolve_slide_path(original), resolve_slide_path(compressed), output,
                encoder=encoder, tissue_threshold=tissue_threshold, progress_start=start,
                overwrite=overwrite,
            )  # fmt: skip
        console.print(f"{Path(r.compressed).name} vs {Path(r.original).name} ({r.encoder}): "
                      f"{r.summary()}")  # fmt: skip
        for w in r.worst[:5]:
            console.print(f"  cell ({w['row']}, {w['col']}) at x={w['x']} y={w['y']}: "
                          f"{w['cosine']:.5f}")  # fmt: skip
        console.print(f"outputs: {', '.join(r.outputs)}")

    guarded(body)
