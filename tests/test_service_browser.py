"""The web page end to end in real Chromium (Debian's package) driven by Playwright: sign in,
upload the sample slide, run an encode job, see the PCA preview, download a result; a wrong
token shows an error."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .service_fixtures import ServerProcess, create_token

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api")

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium for the browser tests (.ci/run installs it)")
    pytest.skip("no Chromium here: apt-get install chromium (CI installs it)",
                allow_module_level=True)  # fmt: skip

ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("web")
    token = create_token(data, "alice")
    srv = ServerProcess(data, workers=1).start()
    yield srv, token
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(accept_downloads=True)
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    ctx.close()


def test_wrong_token_shows_an_error(server, page):
    srv, _ = server
    page.goto(srv.url + "/")
    page.get_by_label("API token").fill("sp_0123456789abcdef_wrongwrongwrongwrongwrong")
    page.keyboard.press("Enter")  # keyboard only
    alert = page.get_by_role("alert")
    sync_api.expect(alert).to_be_visible()
    sync_api.expect(alert).to_contain_text("wrong or revoked")
    assert page.locator("#app").is_hidden()


def test_sign_in_upload_encode_preview_download(server, page, tmp_path):
    from slidepress.slide import sample_slide_path

    srv, token = server
    page.goto(srv.url + "/")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    sync_api.expect(page.locator("#who")).to_contain_text("alice")

    page.locator("#file").set_input_files(str(sample_slide_path()))
    page.get_by_role("button", name="Upload").click()
    sync_api.expect(page.locator("#upload-status")).to_contain_text("uploaded")
    assert page.locator("#upload-progress").evaluate("e => e.value") == 1
    sync_api.expect(page.locator("#uploads tbody tr")).to_have_count(1)

    # the form's defaults and ranges are the request schema's (the CLI's options spec)
    sync_api.expect(page.get_by_label("Format")).to_have_value("zarr")
    sync_api.expect(page.get_by_label("Augment")).to_have_value("none")
    assert page.locator("#patch").get_attribute("max") == "4096"
    assert "Range: 1-4096" in page.locator("#patch").get_attribute("title")
    page.get_by_label("Augment").select_option("dihedral")
    page.get_by_label("Format").select_option("npz")
    page.get_by_role("button", name="Start job").click()
    row = page.locator("#jobs tbody tr").first
    sync_api.expect(row).to_have_attribute("data-state", "succeeded", timeout=120_000)

    pca = page.locator("img[data-result$='.pca.png']")
    sync_api.expect(pca).to_be_visible(timeout=30_000)
    page.wait_for_function(
        "() => { const i = document.querySelector(\"img[data-result$='.pca.png']\");"
        " return i && i.complete && i.naturalWidth > 0; }"
    )
    assert pca.evaluate("i => i.naturalWidth") >= 17
    sync_api.expect(page.locator("img[data-result$='.tissue.png']")).to_be_visible()

    link = page.get_by_role("link", name="CMU-1-Small-Region.d0.npz")
    with page.expect_download() as info:
        link.click()
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    from slidepress.store import read_grid

    assert saved.name == "CMU-1-Small-Region.d0.npz"
    assert read_grid(saved).features.shape == (23, 17, 3)


def test_bad_job_options_show_a_readable_error(server, page):
    srv, token = server
    page.goto(srv.url + "/")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    sync_api.expect(page.locator("#app")).to_be_visible()
    page.get_by_label("compress (coded tile container)").check()
    page.get_by_label("mpp override (level-0 um/px instead of the file's)").fill("0")
    page.get_by_role("button", name="Start job").click()  # the service answers 422
    alert = page.get_by_role("alert")
    sync_api.expect(alert).to_contain_text("mpp_override: Input should be greater than 0")
