"""What the browser tests of the web page share: signing in, collecting page errors and
failed requests, keeping a screenshot where a person can look at it."""

from __future__ import annotations

import shutil
from pathlib import Path


def sign_in(page, srv, token: str) -> None:
    """Open the page of server `srv` and sign in with `token`; returns once the app shows."""
    from playwright.sync_api import expect

    page.goto(srv.url + "/")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#app")).to_be_visible()


def watch_errors(page) -> list[str]:
    """A list that fills with the page's script errors and its 4xx/5xx responses (the
    favicon aside): a test asserts it is empty at the end."""
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)  # fmt: skip
    return errors


def keep_copy(path: Path, folder: Path) -> Path:
    """Copy a screenshot into `folder` (e.g. /tmp/viewer_shots/) for a look; best effort."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)
    except OSError:
        pass
    return path
