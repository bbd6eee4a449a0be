"""Shared fixtures. Tests on real slides skip with a reason when ../shared/data is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SLIDEPRESS_SHARED_DATA", REPO.parent / "shared" / "data"))
SLIDES = SHARED / "slides"

needs_shared = pytest.mark.skipif(
    not SLIDES.is_dir(), reason=f"shared test data not found at {SHARED} (see README)"
)


@pytest.fixture
def sample_svs() -> Path:
    from slidepress.slide import sample_slide_path

    return sample_slide_path()


@pytest.fixture
def shared_slides() -> Path:
    if not SLIDES.is_dir():
        pytest.skip(f"shared test data not found at {SHARED}")
    return SLIDES
