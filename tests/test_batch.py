"""The batch runner: one outcome per slide for good, bad and already-done slides, the same
records in report.csv, plain data across process boundaries, content-keyed re-runs."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from slidepress.errors import EncoderError, UsageError
from slidepress.pipeline.batch import (
    CompressJob,
    EncodeJob,
    Outcome,
    job_from_dict,
    run_batch,
    run_slide_plain,
    write_report,
)
from slidepress.pipeline.items import SlideItem


@pytest.fixture
def slides(tmp_path, sample_svs):
    good = tmp_path / "in" / "good.svs"
    good.parent.mkdir()
    shutil.copy(sample_svs, good)
    bad = tmp_path / "in" / "bad.svs"
    bad.write_bytes(b"not a slide at all")
    blank = tmp_path / "in" / "blank.png"
    Image.new("RGB", (600, 400), (244, 244, 244)).save(blank)
    return good, bad, blank


def _items(good, bad, blank):
    return [
        SlideItem(good, fields={"case": "A1"}),
        SlideItem(bad, fields={"case": "B2"}),
        SlideItem(blank, mpp_override=0.5, mpp_source="table", fields={"case": "C3"}),
    ]


def test_encode_batch_records_and_report(tmp_path, slides):
    out = tmp_path / "out"
    job = EncodeJob(encoder="mean-rgb", options={"workers": 1})
    first = list(run_batch(_items(*slides), job, out))
    assert [o.status for o in first] == ["done", "failed", "failed"]
    assert first[0].units == "cells" and first[0].count > 0 and first[0].bytes_out > 0
    assert "bad.svs" in first[1].error and not first[1].internal
    assert "no tissue" in first[2].error
    assert [o.fields["case"] for o in first] == ["A1", "B2", "C3"]  # passed through
    # a re-run: the done slide is skipped (content-keyed), the bad ones fail again
    second = list(run_batch(_items(*slides), job, out))
    assert [o.status for o in second] == ["skipped", "failed", "failed"]
    report = write_report(out / "report.csv", second)
    with open(report, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["slide"] for r in rows] == [o.slide for o in second]
    assert [r["status"] for r in rows] == [o.status for o in second]
    assert [r["error"] for r in rows] == [o.error for o in second]
    assert [r["case"] for r in rows] == ["A1", "B2", "C3"]
    assert rows[0]["outputs"].split(";")[0].endswith("good.zarr")


def test_cli_encode_writes_report_and_exit_code(tmp_path, slides):
    good, bad, blank = slides
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "slidepress", "encode", str(good), str(bad), "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, r.stderr  # one slide had bad input
    with open(out / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(x["slide"], x["status"]) for x in rows] == [
        ("good.svs", "done"),
        ("bad.svs", "failed"),
    ]
    assert int(rows[0]["count"]) > 0 and float(rows[0]["ratio"]) > 0


def test_compress_batch_skips_same_and_refuses_changed(tmp_path, slides):
    good, _, _ = slides
    out = tmp_path / "c"
    out.mkdir()
    job = CompressJob(options={"codec": "jpeg", "quality": 70})
    (o,) = run_batch([good], job, out)
    assert o.status == "done" and o.units == "tiles" and o.metrics["psnr_db"] > 25
    (again,) = run_batch([good], job, out)
    assert again.status == "skipped" and again.outputs == o.outputs
    other = CompressJob(options={"codec": "jpeg", "quality": 60})
    (changed,) = run_batch([good], other, out)
    assert changed.status == "failed" and "--overwrite" in changed.error
    redo = CompressJob(options={"codec": "jpeg", "quality": 60, "overwrite": True})
    (done,) = run_batch([good], redo, out)
    assert done.status == "done"


def test_plain_data_round_trip(tmp_path, slides):
    """What another process gets: dicts in, a dict out (JSON-serialisable)."""
    good, _, _ = slides
    job = EncodeJob(encoder="mean-rgb", options={"workers": 1})
    d = json.loads(json.dumps(job.to_dict()))
    assert job_from_dict(d).to_dict() == job.to_dict()
    item = json.loads(json.dumps(SlideItem(good, mpp_override=0.5, fields={"x": 1}).to_dict()))
    row = run_slide_plain(item, d, str(tmp_path / "o"))
    json.dumps(row)
    assert row["status"] == "done" and row["x"] == 1 and row["internal"] is False
    assert Outcome.from_dict({**row, "outputs": []}).status == "done"


def test_bad_jobs_fail_before_any_slide():
    with pytest.raises(EncoderError, match="unknown encoder 'nope'.*mean-rgb"):
        EncodeJob(encoder="nope")
    with pytest.raises(UsageError, match="batch size"):
        EncodeJob(options={"batch_size": 10**9})
    with pytest.raises(UsageError, match="unknown job kind"):
        job_from_dict({"kind": "print"})


def test_items_from_csv_table_carry_their_source(tmp_path, sample_svs):
    from slidepress.cli.common import slide_items

    table = tmp_path / "mpp.csv"
    table.write_text(f"slide,mpp\n{sample_svs.name},0.25\n")
    (item,) = slide_items([str(sample_svs)], mpp_csv=table)
    assert item.mpp_override == 0.25 and item.mpp_source == "table"
    with item.open() as reader:
        assert reader.mpp == 0.25 and reader.mpp_source == "table"
    (plain,) = slide_items([str(sample_svs)])
    with plain.open() as reader:
        assert reader.mpp == pytest.approx(0.499, abs=1e-3) and reader.mpp_source == "file"
    assert np.isfinite(reader.require_mpp())


def test_job_kinds_are_a_registry_and_split_by_their_own_bands(tmp_path, sample_svs):
    """JOBS lists the kinds by name (unknown: the names, exit 2); a kind with no `bands()` runs
    whole under the Dask runner's split wrapper, which dispatches on no kind; a compress job
    refuses an out-of-range quality once, in `prepare`."""
    from dataclasses import dataclass
    from typing import Any, ClassVar

    from slidepress.distributed.regions import split_job
    from slidepress.errors import CodecError
    from slidepress.pipeline.batch import JOBS, Job

    assert JOBS.names() == ["encode", "compress", "compare", "export"]
    assert JOBS.get("compress") is CompressJob and JOBS.entry("encode").summary
    with pytest.raises(
        UsageError, match="unknown job kind 'print'; choose from encode, compress, compare, export"
    ):
        job_from_dict({"kind": "print"})
    with pytest.raises(CodecError, match="outside its range"):
        CompressJob(options={"codec": "jpeg", "quality": 500}).prepare()

    @dataclass
    class Count(Job):
        kind: ClassVar[str] = "count"
        runs: int = 0

        def run(self, item: SlideItem, out_dir: Any, progress: Any) -> Outcome:
            self.runs += 1
            return Outcome(item.name, str(item.path), "done", units="slides", count=1)

        def to_dict(self) -> dict[str, Any]:
            return {"kind": self.kind}

    JOBS.add("count", Count)
    try:
        assert job_from_dict({"kind": "count"}).kind == "count"
        count = Count()
        sj = split_job(count, region_px=1, band_rows=8)
        assert sj.run(SlideItem.of(sample_svs), tmp_path, None).status == "done"
        assert count.runs == 1 and sj.split is None
    finally:
        JOBS.remove("count")
    assert EncodeJob(encoder="mean-rgb").bands().units == "cells"
    assert CompressJob().bands().part_name((0, 8)) == "tiles-000000-000008.zip"
