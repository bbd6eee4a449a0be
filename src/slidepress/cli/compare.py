"""`slidepress compare`: what compression does to the NIC grid of a whole slide (options from
the `compare` job spec, as the service's compare jobs take them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..jobs.options import CLI, COMPARE, MPP_OVERRIDE
from .common import console, guarded, progress_bars
from .options import with_options


@with_options([*COMPARE.for_target(CLI), MPP_OVERRIDE])
def compare(
    original: Annotated[str, typer.Argument(help="The original slide (or @sample).")],
    compressed: Annotated[
        str, typer.Argument(help="Its compressed version: a container (.spz) or any slide.")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the outputs.")],
    *,
    options: dict[str, Any],
) -> None:
    """Encode the same grid of both slides; write the per-cell cosine similarity (cosine.npy,
    aligned with the grid), a heat map over the thumbnail (heatmap.png) and compare.json;
    print mean / 5th percentile / worst cells and the PSNR over tissue at the grid's mpp.
    --mpp-override is the original's (a container records its own)."""

    def body() -> None:
        from ..pipeline.compare import compare_grids
        from ..slide import resolve_slide_path

        COMPARE.check({k: v for k, v in options.items() if k != MPP_OVERRIDE.name})
        MPP_OVERRIDE.check(options[MPP_OVERRIDE.name])
        with progress_bars(unit="cells") as start:
            r = compare_grids(
                resolve_slide_path(original), resolve_slide_path(compressed), output,
                encoder=options["encoder"], tissue_threshold=options["tissue_threshold"],
                batch_size=options["batch_size"], original_mpp=options[MPP_OVERRIDE.name],
                progress_start=start, overwrite=options["overwrite"],
            )  # fmt: skip
        console.print(f"{Path(r.compressed).name} vs {Path(r.original).name} ({r.encoder}): "
                      f"{r.summary()}")  # fmt: skip
        for w in r.worst[:5]:
            console.print(f"  cell ({w['row']}, {w['col']}) at x={w['x']} y={w['y']}: "
                          f"{w['cosine']:.5f}")  # fmt: skip
        console.print(f"outputs: {', '.join(r.outputs)}")

    guarded(body)
