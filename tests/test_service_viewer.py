"""Issue 22, part 4: DeepZoom tiles of an upload and of a compress result (service/deepzoom.py,
api/routes/deepzoom.py), and the page's side-by-side viewer (static/viewer.js) in real
Chromium: zoom in, both viewers show the same region, the canvases are not blank.
Screenshots go to the pytest tmp dir ("viewer-shots") and /tmp/viewer_shots/
(SLIDEPRESS_VIEWER_SHOTS)."""

from __future__ import annotations

import io
import math
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from .browser_helpers import sign_in, watch_errors
from .service_fixtures import ServerProcess, create_token

httpx = pytest.importorskip("httpx")

DZ = "{http://schemas.microsoft.com/deepzoom/2008}"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server, alice's token, her upload of the sample slide and a finished compress job."""
    from slidepress.slide import sample_slide_path

    data = tmp_path_factory.mktemp("viewer")
    alice, bob = create_token(data, "alice"), create_token(data, "bob")
    srv = ServerProcess(data, workers=1).start()
    http = httpx.Client(base_url=srv.url, timeout=60, headers={"Authorization": f"Bearer {alice}"})
    up = http.post("/api/uploads", params={"filename": "CMU-1-Small-Region.svs"},
                   content=sample_slide_path().read_bytes()).raise_for_status().json()  # fmt: skip
    body = {"kind": "compress", "uploads": [up["id"]], "codec": "jpeg", "quality": 60}
    job = http.post("/api/jobs", json=body).raise_for_status().json()
    deadline = time.monotonic() + 180
    while (j := http.get(f"/api/jobs/{job['id']}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, j
        time.sleep(0.2)
    assert j["state"] == "succeeded", j
    results = http.get(f"/api/jobs/{job['id']}/results").json()
    container = next(r for r in results if r["role"] == "container")
    report = next(r for r in results if r["role"] == "report")
    yield {"srv": srv, "http": http, "alice": alice, "bob": bob, "upload": up, "job": j,
           "container": container, "report": report}  # fmt: skip
    http.close()
    srv.stop()


def _levels(w: int, h: int) -> list[tuple[int, int]]:
    dims = [(w, h)]
    while dims[-1] != (1, 1):
        dims.append(tuple(max(1, math.ceil(v / 2)) for v in dims[-1]))
    return dims[::-1]


def _tile_size(dims, level, col, row, t=254, o=1) -> tuple[int, int]:
    w, h = dims[level]
    cols, rows = math.ceil(w / t), math.ceil(h / t)
    return (min(t, w - t * col) + (o if col else 0) + (o if col < cols - 1 else 0),
            min(t, h - t * row) + (o if row else 0) + (o if row < rows - 1 else 0))  # fmt: skip


def _jpeg(resp) -> np.ndarray:
    from PIL import Image

    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/jpeg"
    assert resp.headers["cache-control"] == "private, max-age=3600"
    return np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGB"))


def _bases(s) -> list[str]:
    return [
        f"/api/uploads/{s['upload']['id']}/deepzoom",
        f"/api/results/{s['container']['id']}/deepzoom",
    ]


def test_dzi_describes_upload_and_container(served):
    for base in _bases(served):
        r = served["http"].get(base + ".dzi")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/xml")
        assert r.headers["cache-control"] == "private, max-age=3600"
        img = ET.fromstring(r.text)
        assert img.tag == f"{DZ}Image"
        assert (img.get("TileSize"), img.get("Overlap"), img.get("Format")) == ("254", "1", "jpeg")
        size = img.find(f"{DZ}Size")
        assert (size.get("Width"), size.get("Height")) == ("2220", "2967")


def test_tile_sizes_at_several_levels(served):
    dims = _levels(2220, 2967)
    top = len(dims) - 1
    for base in _bases(served):
        for level in (0, 3, 8, top - 1, top):
            w, h = dims[level]
            last = (math.ceil(w / 254) - 1, math.ceil(h / 254) - 1)
            for col, row in {(0, 0), last, (last[0], 0), (0, last[1])}:
                px = _jpeg(served["http"].get(f"{base}_files/{level}/{col}_{row}.jpeg"))
                assert px.shape[1::-1] == _tile_size(dims, level, col, row), (base, level, col, row)


def test_out_of_range_is_404(served):
    dims = _levels(2220, 2967)
    top = len(dims) - 1
    cols, rows = math.ceil(2220 / 254), math.ceil(2967 / 254)
    for base in _bases(served):
        for tile in (f"{top + 1}/0_0", f"{top}/{cols}_0", f"{top}/0_{rows}", "0/1_0", "99999/0_0"):
            r = served["http"].get(f"{base}_files/{tile}.jpeg")
            assert r.status_code == 404, (tile, r.text)
            assert "outside" in r.json()["detail"]
        assert served["http"].get(f"{base}_files/0/-1_0.jpeg").status_code in (404, 422)


def test_owner_only_and_token_required(served):
    bob = httpx.Client(base_url=served["srv"].url, timeout=60,
                       headers={"Authorization": f"Bearer {served['bob']}"})  # fmt: skip
    anon = httpx.Client(base_url=served["srv"].url, timeout=60)
    with bob, anon:
        for base in _bases(served):
            for path in (base + ".dzi", base + "_files/12/0_0.jpeg"):
                assert anon.get(path).status_code == 401
                r = bob.get(path)
                assert r.status_code == 404 and "not found" in r.json()["detail"], r.text
    # a result that is not a container (the job's report.csv) has no tiles
    r = served["http"].get(f"/api/results/{served['report']['id']}/deepzoom.dzi")
    assert r.status_code == 404
    assert "not a slide container" in r.json()["detail"]


def test_container_tiles_are_its_decoded_pixels_resized(served):
    """Tiles of a result are the container's own decoded pixels (not the source's): read the
    same region through the container reader, resize, and compare with the JPEG q75 tile."""
    from PIL import Image

    from slidepress.slide import open_slide

    (spz,) = served["srv"].data_dir.glob("jobs/*/out/*.spz")
    dims = _levels(2220, 2967)
    top = len(dims) - 1
    base = _bases(served)[1]
    with open_slide(spz) as reader:
        for level, col, row in ((top, 3, 4), (top, 8, 11), (top - 1, 2, 2), (top - 2, 1, 1),
                                (top - 4, 0, 0)):  # fmt: skip
            ds = 2 ** (top - level)
            w, h = _tile_size(dims, level, col, row)
            x0, y0 = (254 * col - (1 if col else 0)) * ds, (254 * row - (1 if row else 0)) * ds
            slide_level = reader.best_level_for_downsample(ds)
            l_ds = reader.info.level_downsamples[slide_level]
            lw, lh = reader.info.level_dimensions[slide_level]
            rw = min(math.ceil(w * ds / l_ds), lw - math.ceil(x0 / l_ds))
            rh = min(math.ceil(h * ds / l_ds), lh - math.ceil(y0 / l_ds))
            region = reader.read_region((x0, y0), slide_level, (rw, rh))
            want = np.asarray(Image.fromarray(region).resize((w, h), Image.Resampling.LANCZOS))
            got = _jpeg(served["http"].get(f"{base}_files/{level}/{col}_{row}.jpeg"))
            assert got.shape == want.shape
            mse = np.mean((got.astype(float) - want.astype(float)) ** 2)
            psnr = 10 * math.log10(255**2 / max(mse, 1e-9))
            assert psnr > 30, (level, col, row, psnr)  # JPEG q75 of the same pixels


# -- the page ---------------------------------------------------------------------------------
def _not_blank(png: bytes) -> None:
    from PIL import Image

    px = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    colours = len(np.unique(px[:: max(1, len(px) // 20000)], axis=0))
    assert colours > 100 and px.std() > 10, f"canvas looks blank: {colours} colours"


VIEWPORTS = "() => window.slidepressViewers.map((v) => v.viewport())"
IDLE = ("() => window.slidepressViewers && window.slidepressViewers.length === 2 && "
        "window.slidepressViewers.every((v) => v.width && v.busy() === 0)")  # fmt: skip


def _same_region(page) -> list[dict]:
    """Both viewers' viewport rectangles (image-width units) agree to a screen pixel (their
    canvases may lay out a subpixel apart in size)."""
    a, b = page.evaluate(VIEWPORTS)
    px = page.evaluate("() => window.slidepressViewers[0].canvas.getBoundingClientRect().width")
    for k in ("x", "y", "width", "height"):
        assert abs(a[k] - b[k]) < a["width"] / px, (k, a, b)
    return [a, b]


def test_side_by_side_viewer_zooms_in_sync(served, browser, shot):
    sync_api = pytest.importorskip("playwright.sync_api")
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    errors = watch_errors(page)
    try:
        sign_in(page, served["srv"], served["alice"])
        short = served["job"]["id"][:8]
        page.get_by_role("button", name=f"show job {short}").click()
        sync_api.expect(page.locator("#fidelity")).to_be_hidden()
        page.get_by_role("button", name="View side by side").first.click()
        sync_api.expect(page.locator("#viewer")).to_be_visible()
        sync_api.expect(page.locator("#fidelity")).to_contain_text("PSNR")
        sync_api.expect(page.locator("#fidelity")).to_contain_text("tiles stored")
        sync_api.expect(page.locator("#fidelity")).to_contain_text("bits per pixel")
        page.wait_for_function(IDLE)
        fit = _same_region(page)
        assert fit[0]["width"] >= 0.99  # the whole slide shows
        shot("viewer-fit", page.screenshot(full_page=True))

        # zoom in with the UI: the + button twice, then the wheel over the compressed view
        page.get_by_role("button", name="zoom in").click()
        page.get_by_role("button", name="zoom in").click()
        box = page.locator("#dz-compressed canvas").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.4)
        page.mouse.wheel(0, -300)
        page.wait_for_timeout(400)  # the buttons' 250 ms animation
        page.wait_for_function(IDLE)
        zoomed = _same_region(page)
        assert zoomed[0]["width"] < fit[0]["width"] / 4, (fit, zoomed)

        # drag the original: the compressed view follows
        box = page.locator("#dz-original canvas").bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(cx, cy)
        page.mouse.down()
        page.mouse.move(cx - 120, cy - 80, steps=6)
        page.mouse.up()
        page.wait_for_function(IDLE)
        dragged = _same_region(page)
        assert dragged[0]["x"] > zoomed[0]["x"] and dragged[0]["y"] > zoomed[0]["y"]

        shot("viewer-zoomed", page.screenshot(full_page=True))
        for name in ("original", "compressed"):
            png = page.locator(f"#dz-{name} canvas").screenshot()
            shot(f"viewer-zoomed-{name}", png)
            _not_blank(png)
        assert not errors, errors
    finally:
        ctx.close()
