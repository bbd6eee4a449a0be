"""`slidepress eval ...`: is an encoder's embedding still useful for pathology tasks?"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import UsageError
from .common import QualitiesOpt, check_report_folder, console, guarded, progress_bars

if TYPE_CHECKING:
    from ..eval.run import ProbeReport

app = typer.Typer(
    help="Evaluate frozen patch encoders on labelled patches (MLP probe, Tellez et al. 2019).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _eval() -> None:
    """Evaluations that write a report folder: probe.csv/.json/.md/.png."""


@app.command("probe")
def probe_cmd(
    encoder: Annotated[
        list[str],
        typer.Option(
            "--encoder", "-e", help="Encoder spec (mean-rgb, torchscript:PATH, ...); repeatable."
        ),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Report folder.")],
    pcam: Annotated[
        Path | None, typer.Option(help="PCam folder with train/<0|1> and valid/<0|1>.")
    ] = None,
    pcam_mpp: Annotated[float, typer.Option(help="PCam resolution, um/px.")] = 0.97,
    kather: Annotated[
        Path | None, typer.Option(help="Kather 2016 folder: <class>/<images>.")
    ] = None,
    kather_mpp: Annotated[float, typer.Option(help="Kather resolution, um/px.")] = 0.495,
    train_limit: Annotated[
        int, typer.Option(help="PCam training patches per class (seeded subset).")
    ] = 2000,
    test_limit: Annotated[
        int | None, typer.Option(help="PCam test patches per class (default: all).")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Probe training epochs.")] = 30,
    folds: Annotated[int, typer.Option(help="Cross-validation folds on Kather.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed for subsets, splits, probe and bootstrap.")] = 0,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the AUC CI.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Patches per encoder call.")] = 256,
    device: Annotated[
        str | None, typer.Option(help="Device of torch encoders: cpu or cuda (default: auto).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a report already in --output.")] = False,
) -> None:
    """Embed PCam and/or Kather patches with each encoder, train an MLP probe on the features,
    report accuracy and ROC AUC (95 % CI) against the mean-rgb baseline."""

    def body() -> None:
        if pcam is None and kather is None:
            raise UsageError("give at least one dataset: --pcam DIR and/or --kather DIR")
        if device is not None and device != "cpu" and not device.startswith("cuda"):
            raise UsageError(f"--device must be cpu or cuda[:N], got {device!r}")
        from ..bounds import MAX_BATCH, check_range

        check_range("--batch-size", batch_size, 1, MAX_BATCH)
        check_range("--epochs", epochs, 1, 10_000)
        check_range("--folds", folds, 2, 100)
        check_range("--bootstrap", bootstrap, 0, 100_000)
        check_range("--train-limit", train_limit, 1, 10_000_000)
        check_range("--test-limit", test_limit, 1, 10_000_000)
        check_report_folder(output, "probe.json", overwrite)
        from ..eval import ResampleWarning, run_probe

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResampleWarning)
            with progress_bars("patches") as start:
                report = run_probe(
                    encoder, out_dir=output, pcam=pcam, kather=kather, pcam_mpp=pcam_mpp,
                    kather_mpp=kather_mpp, train_limit_per_class=train_limit,
                    test_limit_per_class=test_limit, epochs=epochs, seed=seed, folds=folds,
                    batch_size=batch_size, n_bootstrap=bootstrap, device=device, progress=start,
                )  # fmt: skip
        for msg in dict.fromkeys(str(w.message) for w in caught if _shown(w.category)):
            console.print(f"[yellow]warning:[/] {msg}", soft_wrap=True, markup=True)
        for w in caught:  # anything else goes on to Python's usual handling
            if not _shown(w.category):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        _print_table(report)

    guarded(body)


def _shown(category: type[Warning]) -> bool:
    from ..eval.embedding import ResampleWarning

    return issubclass(category, ResampleWarning)


def _f(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.3f}"


def _print_table(report: ProbeReport) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..eval.report import comparison_sentence

    out = Console(highlight=False)
    if not out.is_terminal:  # rich's 80-column default would squeeze the table
        out.width = max(out.width, 110)
    t = Table(title="Probe (MLP on frozen features)")
    for col in ("encoder", "dataset"):
        t.add_column(col, no_wrap=True)
    for col in ("dim", "n_train", "n_test", "acc", "AUC", "95 % CI", "s"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in report.results:
        t.add_row(
            r.encoder, r.dataset, str(r.dim), str(r.n_train), str(r.n_test), _f(r.accuracy),
            _f(r.auc), f"{_f(r.auc_ci_low)}-{_f(r.auc_ci_high)}", f"{r.seconds:.1f}",
        )  # fmt: skip
    out.print(t)
    for ds in dict.fromkeys(r.dataset for r in report.results):
        out.print(comparison_sentence(report.results, ds), soft_wrap=True)
    console.print(f"report -> {report.paths['md']} (probe.csv, probe.json, probe.png)")


@app.command("downstream")
def downstream_cmd(
    codecs: Annotated[
        list[str],
        typer.Option("--codecs", "-c", help="Codecs (comma list or repeat); NAME:weights=DIR."),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Report folder.")],
    pcam: Annotated[Path, typer.Option(help="PCam folder with train/<0|1> and valid/<0|1>.")],
    qualities: QualitiesOpt = None,
    encoder: Annotated[str, typer.Option(help="Encoder of the probe and the grids.")] = (
        "nic-multitask"
    ),
    train_limit: Annotated[int, typer.Option(help="PCam training patches per class.")] = 1000,
    test_limit: Annotated[int, typer.Option(help="PCam test patches per class.")] = 500,
    epochs: Annotated[int, typer.Option(help="Probe training epochs.")] = 30,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the AUC CI.")] = 200,
    featsim: Annotated[bool, typer.Option(help="Also the feature similarity.")] = True,
    slide: Annotated[
        str | None, typer.Option(help="Slide for the NIC-grid cosine (@sample; none: skip).")
    ] = "@sample",
    slide_max_side: Annotated[int, typer.Option(help="Central square of the slide, px.")] = 2048,
    seed: Annotated[int, typer.Option(help="Seed for subsets, probe and bootstrap.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace a report already in --output.")] = False,
) -> None:
    """Re-run the PCam probe on patches decoded by each codec at each quality: accuracy / AUC
    vs bits per pixel (downstream.png + table), next to embedding and feature similarity, and
    the NIC grid of a slide from original vs decoded pixels."""

    def body() -> None:
        from ..bounds import check_range

        check_range("--train-limit", train_limit, 2, 10_000_000)
        check_range("--test-limit", test_limit, 2, 10_000_000)
        check_range("--epochs", epochs, 1, 10_000)
        check_range("--bootstrap", bootstrap, 0, 100_000)
        check_range("--slide-max-side", slide_max_side, 256, 1_000_000)
        check_report_folder(output, "downstream.json", overwrite)
        from ..eval.downstream import run_downstream

        specs = [s for item in codecs for s in _split_codecs(item)]
        with progress_bars("items") as start:
            rep = run_downstream(
                specs, qualities, pcam=pcam, out_dir=output, encoder=encoder,
                train_limit_per_class=train_limit, test_limit_per_class=test_limit,
                epochs=epochs, seed=seed, n_bootstrap=bootstrap, featsim=featsim,
                slide=None if slide in (None, "none") else slide, slide_max_side=slide_max_side,
                progress=start,
            )  # fmt: skip
        for r in rep["rows"]:
            q = "" if r["quality"] is None else f" q{r['quality']:g}"
            console.print(f"{r['codec']}{q}: bpp {r['bpp']:.3f}, AUC {_f(r['auc'])}, acc "
                          f"{_f(r['accuracy'])}, embsim {_f(r['embsim'])}, slide grid "
                          f"{_f(r['slide_grid_cosine'])}", highlight=False)  # fmt: skip
        console.print(f"report -> {rep['paths']['md']} (downstream.csv, .json, .png)")

    guarded(body)


def _split_codecs(item: str) -> list[str]:
    """`jpeg,avif,ae-kl:weights=DIR` -> specs; a comma inside NAME:params belongs to it."""
    out: list[str] = []
    for part in item.split(","):
        if out and ":" in out[-1] and "=" in part and ":" not in part:
            out[-1] += "," + part
        else:
            out.append(part)
    return [p for p in out if p]
