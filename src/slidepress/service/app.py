"""The FastAPI app: routes (`api/routes/`, by resource), security headers, the web page and the
API docs (/docs: Swagger UI 5, /redoc: ReDoc; both from the fastapi-offline package, no CDN).

Every /api route but /api/health needs `Authorization: Bearer TOKEN`; a user sees only their
own uploads, jobs and results (another user's id is a 404, like an unknown one). Heavy work
never runs here: jobs are rows that worker processes claim (`worker.py`).

Behind a reverse proxy at a sub-path, `root_path` (`--root-path /slidepress`) or the proxy's
`X-Forwarded-Prefix` header makes every URL the service hands out (docs, result links, the
page's assets) carry the prefix.
"""

from __future__ import annotations

import re
import shutil
from contextlib import asynccontextmanager
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from .. import __version__
from .api.routes import ROUTERS
from .config import ServiceConfig
from .db import make_engine, sessions
from .logs import setup as setup_logs
from .storage import check_storage
from .supervisor import Supervisor

STATIC = Path(__file__).parent / "static"
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"  # Swagger UI 5, ReDoc 2
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)
# the docs pages run their own inline set-up script and ReDoc a blob worker
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'none'"
)
_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")  # a plain path: no host, no query, no dots only


def _prefix(request: Request) -> str:
    """The sub-path the client sees the service under ('' at the root)."""
    return request.scope.get("root_path", "") or ""


def create_app(cfg: ServiceConfig, *, start_workers: bool = True) -> FastAPI:
    """The app for `cfg`; `start_workers=False` serves the API without running jobs (nor
    registering an instance). With `cfg.workers == 0` the supervisor runs without workers:
    the instance is registered and requeues dead instances' jobs; others run them."""
    cfg.prepare()
    setup_logs(cfg.log_format)
    make = sessions(make_engine(cfg.url))  # migrates the schema before any worker starts
    check_storage(cfg)
    supervisor = Supervisor(cfg) if start_workers else None
    tmp_dir = cfg.data_dir / "tmp"

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        shutil.rmtree(tmp_dir, ignore_errors=True)  # zips of downloads a killed run left
        tmp_dir.mkdir(parents=True, exist_ok=True)
        if supervisor:
            supervisor.start()
        yield
        if supervisor:
            await run_in_threadpool(supervisor.stop)

    app = FastAPI(
        title="slidepress",
        version=__version__,
        description="Upload whole-slide images, run encode (NIC grids) and compress (tile "
        "containers) jobs, download the results. Authenticate with 'Authorization: Bearer "
        "TOKEN' (the Authorize button here).",
        lifespan=lifespan,
        docs_url=None,  # served below from fastapi-offline's files, not from a CDN
        redoc_url=None,
    )
    app.state.config = cfg
    app.state.sessions = make
    app.state.supervisor = supervisor

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        root = cfg.root_path
        forwarded = request.headers.get("x-forwarded-prefix", "").rstrip("/")
        if not root and forwarded and _PREFIX.match(forwarded):
            root = forwarded
        if root:  # ASGI: `path` holds `root_path`; a proxy that strips the prefix sent less
            scope = request.scope
            if not (scope["path"] == root or scope["path"].startswith(root + "/")):
                scope["path"] = root + scope["path"]
                scope["raw_path"] = root.encode() + scope.get("raw_path", b"")
            scope["root_path"] = root
        response = await call_next(request)
        path = request.url.path.removeprefix(_prefix(request))
        h = response.headers
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("Referrer-Policy", "no-referrer")
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        docs = path.startswith(("/docs", "/redoc"))
        h.setdefault("Content-Security-Policy", DOCS_CSP if docs else CSP)
        if path.startswith("/api/") or path == "/openapi.json":
            h.setdefault("Cache-Control", "no-store")  # tokens' answers stay out of caches
        return response

    for router in ROUTERS:
        app.include_router(router)

    # -- web page -------------------------------------------------------------------------------
    page = (STATIC / "index.html").read_text()

    @app.get("/", include_in_schema=False)
    def index(request: Request) -> HTMLResponse:
        """The page; its relative URLs (`static/...`, `api/...`) resolve under the proxy's
        prefix through a `<base>` (also at `/slidepress` without the trailing slash), asset
        URLs from the site root are prefixed, and the prefix is in a meta tag for its
        script."""
        root = _prefix(request)
        # no prefix known: no <base>, so the relative URLs still follow whatever path a
        # proxy that says nothing serves the page under
        base = f'\n<base href="{root}/">' if root else ""
        head = f'<head>{base}\n<meta name="root-path" content="{root}">'
        html = page.replace("<head>", head, 1)
        if root:  # asset URLs written from the site root still get the prefix
            html = re.sub(r'((?:href|src)=")/(static|docs|redoc)/', rf"\1{root}/\2/", html)
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        root = _prefix(request)
        return get_swagger_ui_html(
            openapi_url=root + app.openapi_url, title="slidepress API",
            swagger_js_url=f"{root}/docs-assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs-assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs-assets/favicon.png",
            swagger_ui_parameters={"persistAuthorization": False},
        )  # fmt: skip

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = _prefix(request)
        return get_redoc_html(
            openapi_url=root + app.openapi_url, title="slidepress API",
            redoc_js_url=f"{root}/docs-assets/redoc.standalone.js",
            redoc_favicon_url=f"{root}/docs-assets/favicon.png", with_google_fonts=False,
        )  # fmt: skip

    return app
