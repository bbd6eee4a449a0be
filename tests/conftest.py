"""Shared fixtures and markers. Tests on real slides skip with a reason when ../shared/data is
absent; reader and tiling tests also write their own small pyramids (`synthetic.slides`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from .browser_helpers import keep_copy

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Test models are tiny: one OpenMP thread is as fast, and on a busy machine two spinning
# threads made a 6-step CNN fit 100x slower (9.5 s vs 0.07 s). Set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SLIDEPRESS_SHARED_DATA", REPO.parent / "shared" / "data"))
SLIDES = SHARED / "slides"
TILES = SHARED / "tiles"  # lossless H&E tiles (codec tests)

MARKERS = {"slow": "long tests, deselected by default (pyproject addopts); run with -m slow"}


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers here, next to the tests that use them (strict runs reject unknown
    ones)."""
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


needs_shared = pytest.mark.skipif(
    not SLIDES.is_dir(), reason=f"shared test data not found at {SHARED} (see README)"
)


needs_tiles = pytest.mark.skipif(
    not TILES.is_dir(), reason=f"shared lossless H&E tiles not found at {TILES} (see README)"
)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of uint8 images in dB (capped, so identical images give a finite 120 dB)."""
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


def check_refuses_damaged(codec, good: bytes) -> None:
    """A tile codec's decoder refuses a truncated stream, a wrong magic and a stream whose
    declared size differs from the expected shape (with its CodecError, not a crash)."""
    from slidepress.errors import CodecError

    with pytest.raises(CodecError):
        codec.decode(good[:5])
    with pytest.raises(CodecError):
        codec.decode(b"XX" + good[2:])
    with pytest.raises(CodecError, match="is not"):
        codec.decode(good, shape=(32, 32, 3))


@pytest.fixture
def sample_svs() -> Path:
    from slidepress.slide import sample_slide_path

    return sample_slide_path()


@pytest.fixture
def shared_slides() -> Path:
    if not SLIDES.is_dir():
        pytest.skip(f"shared test data not found at {SHARED}")
    return SLIDES


# -- real Chromium (Debian's package) driven by Playwright: the page and deployment tests ------
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    """Chromium once per module; without it the test is skipped with the reason, except on
    CI, where that is an error (.ci/run installs it)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            raise RuntimeError("CI needs Debian's chromium for the browser tests")
        pytest.skip("no Chromium here: apt-get install chromium (CI installs it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


SHOTS_COPY = Path(os.environ.get("SLIDEPRESS_VIEWER_SHOTS", "/tmp/viewer_shots"))


@pytest.fixture(scope="module")
def shot(tmp_path_factory):
    """`shot(name, png)`: a browser test's screenshot, saved in the test's tmp dir and copied
    to SLIDEPRESS_VIEWER_SHOTS (default /tmp/viewer_shots/) to be looked at."""
    folder = tmp_path_factory.mktemp("shots")

    def save(name: str, png: bytes) -> Path:
        path = folder / f"{name}.png"
        path.write_bytes(png)
        return keep_copy(path, SHOTS_COPY)

    return save


@pytest.fixture
def page(browser):
    """A fresh browser context per test."""
    ctx = browser.new_context(accept_downloads=True)
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    # a route handler still fetching when the test ends (the page polls every second) would
    # fail at teardown with "Fetch response has been disposed": drop handlers first
    pg.unroute_all(behavior="ignoreErrors")
    ctx.close()
