"""What a Dask worker runs: the pipeline's batch runner on plain data, one slide or one band.

Every function takes and returns plain data (dicts, lists, strings) and never raises for a
slide's own failure: `pipeline.batch.run_slide` turns bad input into a `failed` outcome. A
result is `{"outcome": Outcome.to_dict(), "split": ..., "worker": ...}`; `split` is set when a
slide above the region threshold was handed on to region tasks (see regions.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import remote
from ..errors import SlidepressError
from ..pipeline.batch import Outcome, job_from_dict, run_slide
from ..pipeline.items import SlideItem


def _worker() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return ""


def _result(outcome: Outcome, split: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"outcome": outcome.to_dict(), "split": split, "worker": _worker()}


def _item(item: dict[str, Any]) -> SlideItem | Outcome:
    try:
        return SlideItem.from_dict(item)
    except SlidepressError as e:
        path = str(item.get("path", "?"))
        return Outcome(path.rsplit("/", 1)[-1], path, "failed", error=str(e))


def check_job(job: dict[str, Any]) -> str:
    """Build the job and load what it needs (an encoder, a codec) on a worker: a job that
    cannot run (unknown encoder or codec, bad weights, a quality out of range, patch size
    against the encoder) fails the whole batch once, with its one-line error, instead of
    once per slide."""
    job_from_dict(job).prepare()
    return _worker()


def _with_overwrite(job: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    return {**job, "options": {**(job.get("options") or {}), "overwrite": overwrite}}


def _stale(outcome: Outcome) -> bool:
    """Failed only because an output of other content or parameters is in the way."""
    return outcome.status == "failed" and outcome.output_exists


def slide_task(
    item: dict[str, Any], job: dict[str, Any], out_dir: str, region_px: float, band_rows: int
) -> dict[str, Any]:
    """One slide through the batch runner; a slide larger than
    `region_px` level-0 pixels is planned and handed on to region tasks instead.

    `overwrite` in a batch replaces outputs of other slide content or parameters, but an
    output that is up to date is still skipped: the slide is first run without overwrite
    (skip when done), and again with it only when a stale output is in the way. So an
    interrupted `--overwrite` run resumes instead of starting over."""
    it = _item(item)
    if isinstance(it, Outcome):
        return _result(it)
    try:  # a sub-folder mirroring the input's layout (compress writes a file into it)
        if not remote.is_url(out_dir):
            Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return _result(Outcome(it.name, it.location, "failed", error=f"{out_dir}: {e}"))
    overwrite = bool((job.get("options") or {}).get("overwrite"))
    res = _slide_once(it, _with_overwrite(job, False), out_dir, region_px, band_rows)
    if overwrite and _stale(Outcome.from_dict(res["outcome"])):
        res = _slide_once(it, _with_overwrite(job, True), out_dir, region_px, band_rows)
    return res


def _slide_once(
    it: SlideItem, job: dict[str, Any], out_dir: str, region_px: float, band_rows: int
) -> dict[str, Any]:
    j = job_from_dict(job)
    # bands write part files beside the output: a slide for object storage runs whole
    if region_px > 0 and not remote.is_url(out_dir):  # a kind that cannot split runs whole
        from .regions import split_job

        sj = split_job(j, region_px, band_rows)
        outcome = run_slide(it, sj, out_dir)
        split = sj.split if outcome.status != "failed" else None
        if split is not None:
            split["overwrite"] = j.options.get("overwrite", False)
        return _result(outcome, split)
    return _result(run_slide(it, j, out_dir))


def region_task(
    item: dict[str, Any], job: dict[str, Any], out_dir: str, split: dict[str, Any], band: list
) -> dict[str, Any]:
    """One band of rows of a split slide, saved as a part."""
    from .regions import region_job

    it = SlideItem.from_dict(item)
    j = job_from_dict(_with_overwrite(job, bool(split.get("overwrite"))))
    return _result(run_slide(it, region_job(j, split, band), out_dir))


def merge_task(
    item: dict[str, Any],
    job: dict[str, Any],
    out_dir: str,
    split: dict[str, Any],
    regions: list[dict[str, Any]],
    plan_seconds: float = 0.0,
) -> dict[str, Any]:
    """The parts of a split slide merged into its output; a failed band fails the slide. Its
    `seconds` are those of all its tasks: planning, bands and merge."""
    from .regions import merge_job

    it = SlideItem.from_dict(item)
    bad = [r["outcome"] for r in regions if r["outcome"]["status"] == "failed"]
    if bad:
        return _result(Outcome.from_dict(bad[0]))
    j = job_from_dict(_with_overwrite(job, bool(split.get("overwrite"))))
    outcome = run_slide(it, merge_job(j, split), out_dir)
    outcome.seconds += plan_seconds + sum(r["outcome"]["seconds"] for r in regions)
    return _result(outcome)
