"""Deployment concerns in a real server and real Chromium: the API docs render (OpenAPI 3.1,
offline assets), and the service works behind a reverse proxy at a sub-path (`/slidepress/`,
through a small proxy on loopback that strips the prefix and sends X-Forwarded-Prefix)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .service_fixtures import ServerProcess, create_token

sync_api = pytest.importorskip("playwright.sync_api")
httpx = pytest.importorskip("httpx")

PREFIX = "/slidepress"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("deploy")
    token = create_token(data, "alice")
    srv = ServerProcess(data, workers=1).start()
    yield srv, token
    srv.stop()


class _Proxy(BaseHTTPRequestHandler):
    """`/slidepress/...` -> the service's `/...`, with X-Forwarded-Prefix; others 404."""

    upstream = ""
    protocol_version = "HTTP/1.1"

    def _forward(self) -> None:
        if not (self.path == PREFIX or self.path.startswith(PREFIX + "/")):
            self.send_error(404)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        skip = {"host", "connection", "content-length", "accept-encoding"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        headers["X-Forwarded-Prefix"] = PREFIX
        path = self.path[len(PREFIX) :] or "/"
        r = httpx.request(self.command, self.upstream + path, headers=headers, content=body,
                          timeout=120)  # fmt: skip
        self.send_response(r.status_code)
        for k, v in r.headers.items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection",
                                 "content-encoding"):  # fmt: skip
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)

    do_GET = do_POST = do_DELETE = _forward

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def proxy(server):
    srv, token = server
    handler = type("Proxy", (_Proxy,), {"upstream": srv.url})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}{PREFIX}", token
    httpd.shutdown()


def test_swagger_ui_renders_the_operations_and_response_schemas(server, page):
    srv, _ = server
    failed = []
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.goto(srv.url + "/docs")
    ops = page.locator(".opblock")
    sync_api.expect(ops.first).to_be_visible()
    assert ops.count() >= 12
    assert "Unable to render" not in page.content()
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/api/jobs/{job_id}" in p.replace("\u200b", "") for p in paths)
    page.locator(".opblock-get .opblock-summary-path", has_text="/api/me").first.click()
    responses = page.locator(".opblock.is-open .responses-table")
    sync_api.expect(responses).to_contain_text("max_upload_bytes")  # Me's schema, not {}
    sync_api.expect(page.locator(".models")).to_contain_text("JobOut")
    assert not [u for u in failed if srv.url in u]  # every asset served by the service


def test_redoc_renders_offline(server, page):
    srv, _ = server
    outside = []  # ReDoc's footer links a logo on its CDN: the CSP blocks it, never loaded
    page.on("requestfinished", lambda r: outside.append(r.url) if not r.url.startswith(
        (srv.url, "data:", "blob:")) else None)  # fmt: skip
    page.goto(srv.url + "/redoc")
    sync_api.expect(page.locator("[data-section-id^='operation/']").first).to_be_attached()
    sync_api.expect(page.locator("body")).to_contain_text("Queue an `encode`".replace("`", ""))
    assert outside == []  # no CDN, no fonts from elsewhere


def test_behind_a_proxy_at_a_sub_path_urls_carry_the_prefix(proxy):
    base, token = proxy
    page = httpx.get(base + "/")
    assert page.status_code == 200
    assert f'<base href="{PREFIX}/">' in page.text
    assert httpx.get(base + "/static/app.css").status_code == 200
    docs = httpx.get(base + "/docs").text
    assert f"{PREFIX}/openapi.json" in docs and f"{PREFIX}/docs-assets/" in docs
    spec = httpx.get(base + "/openapi.json").json()
    assert spec.get("servers", [{}])[0].get("url") == PREFIX
    me = httpx.get(base + "/api/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["user"] == "alice"


def test_page_behind_the_proxy_is_styled_and_signs_in(proxy, page):
    base, token = proxy
    loaded = []
    page.on("response", lambda r: loaded.append((r.url, r.status)))
    page.goto(base)  # no trailing slash: the <base> still puts assets under the prefix
    page.wait_for_load_state("networkidle")
    assert (base + "/static/app.css", 200) in loaded and (base + "/static/app.js", 200) in loaded
    assert not [u for u, status in loaded if status >= 400], loaded
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    sync_api.expect(page.locator("#who")).to_contain_text("alice")
