"""Issue 22 in the service: `compare` (what compression did to a slide's NIC grid) and `export`
(a container as pyramidal TIFF or DICOM WSI) as jobs over a compress job's result, through
the API and the Python client; the page's "use this result as input" and the heat-map
overlay of the side-by-side viewer in real Chromium (screenshots in the test output and
/tmp/viewer_shots/, SLIDEPRESS_VIEWER_SHOTS)."""

from __future__ import annotations

import io
import json
import time
import zipfile

import numpy as np
import pytest

from .browser_helpers import sign_in, watch_errors
from .service_fixtures import ServerProcess, create_token

httpx = pytest.importorskip("httpx")

SIZE = (2220, 2967)  # the sample slide's level 0


def _wait(http, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while (j := http.get(f"/api/jobs/{job_id}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, j
        time.sleep(0.2)
    return j


def _run(http, body: dict) -> tuple[dict, dict[str, dict]]:
    """Submit, wait, and the job with its results by name."""
    r = http.post("/api/jobs", json=body)
    assert r.status_code == 201, r.text
    j = _wait(http, r.json()["id"])
    assert j["state"] == "succeeded", j
    results = http.get(f"/api/jobs/{j['id']}/results").json()
    return j, {x["name"]: x for x in results}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server, alice's token, her upload of the sample slide, a JPEG compress job and a
    compare job of its container (the result's source, as the service recorded it)."""
    from slidepress.slide import sample_slide_path

    data = tmp_path_factory.mktemp("cmp-export")
    alice, bob = create_token(data, "alice"), create_token(data, "bob")
    srv = ServerProcess(data, workers=1).start()
    http = httpx.Client(base_url=srv.url, timeout=120, headers={"Authorization": f"Bearer {alice}"})
    up = http.post("/api/uploads", params={"filename": "CMU-1-Small-Region.svs"},
                   content=sample_slide_path().read_bytes()).raise_for_status().json()  # fmt: skip
    job, res = _run(http, {"kind": "compress", "uploads": [up["id"]], "codec": "jpeg",
                           "quality": 60})  # fmt: skip
    container = res["CMU-1-Small-Region.spz"]
    cmp_job, cmp_res = _run(http, {"kind": "compare", "results": [container["id"]]})
    yield {"srv": srv, "http": http, "alice": alice, "bob": bob, "upload": up, "job": job,
           "container": container, "compare": cmp_job, "compare_results": cmp_res}  # fmt: skip
    http.close()
    srv.stop()


# -- the API ------------------------------------------------------------------------------------
def test_openapi_offers_compare_and_export(served):
    schema = served["http"].get("/openapi.json").json()
    models = schema["components"]["schemas"]
    cmp, exp = models["CompareRequest"]["properties"], models["ExportRequest"]["properties"]
    assert cmp["encoder"]["default"] == "nic-multitask" and "originals" in cmp
    assert cmp["tissue_threshold"]["maximum"] == 1
    assert exp["format"]["enum"] == ["tiff", "dicom"] and exp["quality"]["maximum"] == 100
    assert "mpp_override" not in exp  # a container records its resolution
    body = schema["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]
    kinds = body["schema"]["discriminator"]["mapping"]
    assert set(kinds) == {"encode", "compress", "compare", "export"}


def test_compare_of_a_result_against_its_recorded_original(served):
    http, j, res = served["http"], served["compare"], served["compare_results"]
    assert j["originals"] == [{"upload": served["upload"]["id"],
                               "label": "CMU-1-Small-Region.svs"}]  # fmt: skip
    (o,) = j["outcomes"]
    assert o["status"] == "done" and o["units"] == "cells" and o["count"] > 100
    assert 0.99 < o["cosine_mean"] <= 1 and o["cosine_min"] <= o["cosine_p5"] <= o["cosine_mean"]
    assert o["result"] == served["container"]["id"]
    assert o["original_upload"] == served["upload"]["id"]
    assert "/" not in o["path"]  # no server path in the report
    roles = {name: r["role"] for name, r in res.items()}
    assert roles == {"cosine.npy": "cosine", "heatmap.png": "preview",
                     "compare.json": "summary", "report.csv": "report"}  # fmt: skip
    doc = http.get(res["compare.json"]["url"]).raise_for_status().json()
    cos = np.load(io.BytesIO(http.get(res["cosine.npy"]["url"]).raise_for_status().content))
    g = doc["grid"]
    assert cos.shape == (g["rows"], g["cols"]) and cos.dtype == np.float32
    assert np.isfinite(cos).sum() == o["count"] == doc["cells"]
    assert doc["mean"] == pytest.approx(o["cosine_mean"], abs=1e-6)
    # the geometry a viewer needs: cells on the original's level 0
    assert g["slide_size"] == list(SIZE) and g["slide_mpp"] == pytest.approx(0.499, abs=1e-3)
    assert g["cell_stride_px"] == pytest.approx(g["stride"] * g["effective_mpp"] / g["slide_mpp"])
    assert g["cols"] * g["cell_stride_px"] <= SIZE[0] < (g["cols"] + 1) * g["cell_stride_px"]
    assert not any(served["srv"].url in str(v) or "/jobs/" in str(v) for v in o.values())
    assert str(served["srv"].data_dir) not in json.dumps(doc)  # file names, no server paths
    # the container's own figures (its manifest) beside the grid's
    assert doc["container"]["codec"] == "jpeg" and doc["container"]["quality"] == 60
    assert o["container_psnr_db"] == pytest.approx(doc["container"]["psnr_db"])


def test_compare_with_the_original_named(served):
    http = served["http"]
    j, res = _run(http, {"kind": "compare", "results": [served["container"]["id"]],
                         "originals": [served["upload"]["id"]], "encoder": "mean-rgb"})  # fmt: skip
    (o,) = j["outcomes"]
    assert o["encoder"] == "mean-rgb" and o["cosine_mean"] > 0.999
    assert "cosine.npy" in res


@pytest.mark.parametrize("body, words", [
    ({"results": ["C"], "originals": ["U", "U"]}, "one per input"),
    ({"uploads": ["U"]}, "no recorded source"),
    ({"results": ["C"], "encoder": "torchscript:/etc/passwd"}, "unknown encoder"),
    ({"results": ["C"], "tissue_threshold": 2}, "less than or equal to 1"),
    ({"results": ["R"]}, "not a container"),
])  # fmt: skip
def test_compare_requests_refused_with_one_line(served, body, words):
    ids = {"C": served["container"]["id"], "U": served["upload"]["id"],
           "R": next(r["id"] for r in served["compare_results"].values()
                     if r["role"] == "report")}  # fmt: skip
    body = {k: ([ids[x] for x in v] if isinstance(v, list) else v) for k, v in body.items()}
    r = served["http"].post("/api/jobs", json={"kind": "compare", **body})
    assert r.status_code == 422, r.text
    assert words in json.dumps(r.json()["detail"]), r.text


def test_compare_of_another_users_result_is_404(served):
    bob = httpx.Client(base_url=served["srv"].url, timeout=60,
                       headers={"Authorization": f"Bearer {served['bob']}"})  # fmt: skip
    with bob:
        r = bob.post("/api/jobs", json={"kind": "compare", "results": [served["container"]["id"]]})
        assert r.status_code == 404 and "not found" in r.json()["detail"]


def test_export_tiff_opens_with_levels_and_mpp(served, tmp_path):
    import tiffslide

    http = served["http"]
    j, res = _run(http, {"kind": "export", "results": [served["container"]["id"]]})
    (o,) = j["outcomes"]
    assert o["format"] == "tiff" and o["tiles_copied"] > 0 and o["tiles_reencoded"] == 0
    r = res["CMU-1-Small-Region.tiff"]
    assert r["role"] == "export"
    path = tmp_path / r["name"]
    path.write_bytes(http.get(r["url"]).raise_for_status().content)
    with tiffslide.TiffSlide(path) as ts:
        assert ts.dimensions == SIZE
        assert ts.level_count >= 4 and ts.level_downsamples[1] == pytest.approx(2, rel=0.01)
        assert float(ts.properties["tiffslide.mpp-x"]) == pytest.approx(0.499, abs=1e-3)
        px = np.asarray(ts.read_region((1000, 1000), 0, (256, 256)).convert("RGB"))
        assert px.std() > 10  # tissue, not glass


def test_export_dicom_folder_as_zip_opens_with_wsidicom(served, tmp_path):
    from wsidicom import WsiDicom

    http = served["http"]
    j, res = _run(http, {"kind": "export", "results": [served["container"]["id"]],
                         "format": "dicom"})  # fmt: skip
    (o,) = j["outcomes"]
    assert o["format"] == "dicom" and "1.2.840.10008.1.2.4.50" in o["codestream"]
    r = res["CMU-1-Small-Region.dicom.zip"]
    assert r["role"] == "export"
    with zipfile.ZipFile(io.BytesIO(http.get(r["url"]).raise_for_status().content)) as zf:
        zf.extractall(tmp_path / "x")
    (folder,) = (tmp_path / "x").iterdir()
    with WsiDicom.open(folder) as wsi:
        assert (wsi.size.width, wsi.size.height) == SIZE
        assert len(wsi.levels) >= 4
        assert wsi.mpp.width == pytest.approx(0.499, abs=1e-3)


def test_export_refuses_what_is_not_a_container(served):
    http = served["http"]
    r = http.post("/api/jobs", json={"kind": "export", "uploads": [served["upload"]["id"]]})
    assert r.status_code == 422 and "not a container" in r.json()["detail"], r.text
    r = http.post("/api/jobs", json={"kind": "export", "results": [served["container"]["id"]],
                                     "format": "png"})  # fmt: skip
    assert r.status_code == 422 and "tiff" in r.text
    r = http.post("/api/jobs", json={"kind": "export", "results": [served["container"]["id"]],
                                     "mpp_override": 0.5})  # fmt: skip
    assert r.status_code == 422, r.text


def test_client_submits_compare_and_export(served, tmp_path):
    from slidepress.client import Client

    with Client(served["srv"].url, served["alice"]) as c:
        job = c.compare(served["container"]["id"], encoder="mean-rgb")
        c.wait(job["id"])
        (cos,) = c.download(job["id"], tmp_path / "cmp", roles=["cosine"])
        assert np.load(cos).ndim == 2
        job = c.export(served["container"]["id"], format="dicom")
        c.wait(job["id"])
        (folder,) = c.download(job["id"], tmp_path / "exp", roles=["export"])
        assert folder.is_dir() and folder.name == "CMU-1-Small-Region.dicom"
        assert len(list(folder.glob("*.dcm"))) >= 4


# -- the page -----------------------------------------------------------------------------------
IDLE = ("() => window.slidepressViewers && window.slidepressViewers.length === 2 && "
        "window.slidepressViewers.every((v) => v.width && v.busy() === 0)")  # fmt: skip
# the compressed canvas's pixel at the centre of every grid cell (rows x cols x RGBA)
CELL_PIXELS = """([rows, cols]) => {
  const v = window.slidepressViewers[1], o = v.overlay, k = v.width / o.slideWidth;
  const r = v.canvas.getBoundingClientRect(), dpr = window.devicePixelRatio || 1, out = [];
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) {
    const x = (((j + 0.5) * o.cell * k - v.cx) * v.scale + r.width / 2) * dpr;
    const y = (((i + 0.5) * o.cell * k - v.cy) * v.scale + r.height / 2) * dpr;
    out.push([...v.ctx.getImageData(Math.floor(x), Math.floor(y), 1, 1).data]);
  }
  return out;
}"""


def _job_done(page, sync_api, job_id: str) -> None:
    row = page.locator(f"#jobs tbody tr[data-job='{job_id}']")
    sync_api.expect(row).to_have_attribute("data-state", "succeeded", timeout=180_000)


def _newest_job(http) -> dict:
    return http.get("/api/jobs").json()[-1]


def test_page_uses_a_result_as_input_and_overlays_the_heat_map(served, browser, shot):
    sync_api = pytest.importorskip("playwright.sync_api")
    http = served["http"]
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    errors = watch_errors(page)
    try:
        sign_in(page, served["srv"], served["alice"])
        # the form's compare and export options come from /openapi.json
        page.get_by_label("compare (grid of a container vs its original)").check()
        sync_api.expect(page.locator("#cmp-encoder")).to_have_value("nic-multitask")
        assert page.locator("#cmp-tissue").get_attribute("max") == "1"
        page.get_by_label("export (container as TIFF or DICOM)").check()
        sync_api.expect(page.locator("#exp-format option")).to_have_text(["tiff", "dicom"])
        sync_api.expect(page.locator("#mpp")).to_be_hidden()

        # "Use this result as input" on the compress job's container, then compare it
        page.get_by_role("button", name=f"show job {served['job']['id'][:8]}").click()
        page.get_by_role("button", name="use CMU-1-Small-Region.spz as the input").click()
        sync_api.expect(page.locator("#result-list")).to_have_text("CMU-1-Small-Region.spz×")
        assert page.locator("#uploads tbody input:checked").count() == 0
        page.get_by_label("compare (grid of a container vs its original)").check()
        shot("compare-form-prefilled", page.screenshot(full_page=True))
        page.get_by_role("button", name="Start job").click()
        sync_api.expect(page.locator("#result-inputs")).to_be_hidden()  # used, cleared
        job = _newest_job(http)
        assert job["kind"] == "compare" and job["results"] == [served["container"]["id"]]
        assert job["uploads"] == []
        _job_done(page, sync_api, job["id"])
        sync_api.expect(page.locator("#metrics")).to_contain_text("cosine mean")
        sync_api.expect(page.locator("#previews img")).to_have_attribute(
            "alt", "per-cell cosine of the grid over the original (blue: 1, red: 0.95 or less): "
            "CMU-1-Small-Region.spz")  # fmt: skip
        shot("compare-results", page.screenshot(full_page=True))

        # the side-by-side viewer of the compare job: heat map on over the compressed view
        page.get_by_role("button", name="View side by side").first.click()
        sync_api.expect(page.locator("#overlay")).to_be_checked()
        sync_api.expect(page.locator("#fidelity")).to_contain_text("cosine mean")
        sync_api.expect(page.locator("#fidelity")).to_contain_text("from the container")
        sync_api.expect(page.locator("#overlay-legend")).to_contain_text("cosine 1 (blue)")
        page.wait_for_function(IDLE)
        page.wait_for_timeout(300)
        results = {r["name"]: r for r in http.get(f"/api/jobs/{job['id']}/results").json()}
        cos = np.load(io.BytesIO(http.get(results["cosine.npy"]["url"]).content))
        on = np.array(page.evaluate(CELL_PIXELS, list(cos.shape)), float)
        shot("compare-overlay-on", page.screenshot(full_page=True))
        page.get_by_label("heat map of the per-cell cosine (compressed view)").uncheck()
        page.wait_for_timeout(300)
        page.wait_for_function(IDLE)
        off = np.array(page.evaluate(CELL_PIXELS, list(cos.shape)), float)
        shot("compare-overlay-off", page.screenshot(full_page=True))
        kept = np.isfinite(cos).reshape(-1)
        change = np.abs(on - off)[:, :3].max(axis=1)
        # drawn exactly on the compared cells: each one tinted (jet blue: red down, blue
        # up), every cell left out (glass) untouched
        assert (change[kept] > 20).all(), change[kept].min()
        assert (change[~kept] == 0).all(), change[~kept].max()
        assert (on[kept, 0] < off[kept, 0] - 20).mean() > 0.9
        # the original view never carries it
        assert page.evaluate("() => window.slidepressViewers[0].overlay") is None
        page.get_by_label("heat map of the per-cell cosine (compressed view)").check()
        page.get_by_role("button", name="zoom in").click()
        page.get_by_role("button", name="zoom in").click()
        page.wait_for_timeout(400)
        page.wait_for_function(IDLE)
        shot("compare-overlay-zoomed", page.screenshot(full_page=True))

        # the compress job's own viewer offers the same heat map, off until asked
        page.get_by_role("button", name=f"show job {served['job']['id'][:8]}").click()
        page.get_by_role("button", name="View side by side").first.click()
        sync_api.expect(page.locator("#overlay-choice")).to_be_visible()
        sync_api.expect(page.locator("#overlay")).not_to_be_checked()
        sync_api.expect(page.locator("#fidelity")).to_contain_text("PSNR")

        # export the same result to DICOM from the page
        page.get_by_role("button", name="use CMU-1-Small-Region.spz as the input").click()
        page.get_by_label("export (container as TIFF or DICOM)").check()
        page.locator("#exp-format").select_option("dicom")
        page.get_by_role("button", name="Start job").click()
        sync_api.expect(page.locator("#result-inputs")).to_be_hidden()  # submitted
        job = _newest_job(http)
        assert job["kind"] == "export" and job["params"]["format"] == "dicom"
        _job_done(page, sync_api, job["id"])
        sync_api.expect(page.locator("#downloads")).to_contain_text("CMU-1-Small-Region.dicom.zip")
        sync_api.expect(page.locator("#metrics")).to_contain_text("copied")
        shot("export-results", page.screenshot(full_page=True))
        assert not errors, errors
    finally:
        ctx.close()
