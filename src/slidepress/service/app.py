"""The FastAPI app: authentication, uploads, jobs, results, the web page. OpenAPI at /docs.

Every /api route but /api/health needs `Authorization: Bearer TOKEN`; a user sees only their
own uploads, jobs and results (another user's id is a 404, like an unknown one). Heavy work
never runs here: jobs are rows that worker processes claim (`worker.py`).
"""

# no `from __future__ import annotations`: FastAPI reads the local `User` alias at runtime

import shutil
import uuid
import zipfile
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from sqlalchemy import delete, func, select, text
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from swagger_ui_bundle import swagger_ui_path

from .. import __version__
from .auth import Identity, verify_token
from .config import ServiceConfig
from .db import ACTIVE_STATES, Job, Result, Upload, make_engine, new_id, sessions
from .jobs import JobRequest, batch_job, options
from .uploads import UploadRejected, extract_dicom_zip, receive, sanitize_filename
from .worker import Supervisor, job_dir

STATIC = Path(__file__).parent / "static"
ID = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$", description="an id from a listing")]
UNAUTHORIZED = (
    "missing or invalid API token: send 'Authorization: Bearer TOKEN' "
    "(an administrator creates one with 'slidepress token create NAME')"
)
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'"
)


def upload_json(u: Upload) -> dict[str, Any]:
    return {"id": u.id, "filename": u.filename, "kind": u.kind, "bytes": u.bytes,
            "sha256": u.sha256, "created_at": u.created_at}  # fmt: skip


def job_json(j: Job) -> dict[str, Any]:
    return {
        "id": j.id, "kind": j.kind, "state": j.state, "progress": j.progress,
        "message": j.message, "error": j.error, "params": j.params,
        "uploads": [e["upload"] for e in j.items], "attempts": j.attempts,
        "created_at": j.created_at, "started_at": j.started_at, "finished_at": j.finished_at,
        "outcomes": j.outcomes or [], "summary": j.summary or {},
    }  # fmt: skip


def result_path(r: Result) -> str:
    """Where the result sits inside its job (and inside the job's zip): `previews/x.png`,
    or `UPLOADID/x.npz` when two uploads of a job share a file name."""
    parts = Path(r.path).parts  # jobs/<job>/out/...
    return "/".join(parts[3:]) if len(parts) > 3 and parts[2] == "out" else r.name


def result_json(r: Result) -> dict[str, Any]:
    zipped = ".zip" if r.is_dir else ""
    return {
        "id": r.id, "job": r.job_id, "name": r.name + zipped, "path": result_path(r) + zipped,
        "role": r.role, "slide": r.slide, "bytes": r.bytes, "url": f"/api/results/{r.id}",
    }  # fmt: skip


def create_app(cfg: ServiceConfig, *, start_workers: bool = True) -> FastAPI:
    """The app for `cfg`; `start_workers=False` serves the API without running jobs."""
    cfg.prepare()
    make = sessions(make_engine(cfg.url))
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
        "TOKEN'.",
        lifespan=lifespan,
        docs_url=None,  # served below from swagger-ui-bundle, not from a CDN
        redoc_url=None,
    )
    app.state.config = cfg
    app.state.supervisor = supervisor
    bearer = HTTPBearer(auto_error=False)

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if not request.url.path.startswith(("/docs", "/redoc", "/openapi")):
            response.headers.setdefault("Content-Security-Policy", CSP)
        return response

    def user(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Identity:
        with make() as s:
            ident = verify_token(s, creds.credentials if creds else None)
        if ident is None:
            raise HTTPException(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
        return ident

    User = Annotated[Identity, Depends(user)]

    def own(s, model, id_: str, ident: Identity, what: str):
        row = s.get(model, id_)
        if row is None or row.user_id != ident.user_id:
            raise HTTPException(404, f"{what} {id_} not found")
        return row

    # -- meta ---------------------------------------------------------------------------------
    @app.get("/api/health", tags=["meta"])
    def health() -> dict[str, Any]:
        """Liveness: the database answers and how many worker processes run (no auth)."""
        with make() as s:
            s.execute(text("SELECT 1"))
            queued = s.scalar(select(func.count()).where(Job.state == "queued"))
        return {
            "status": "ok", "version": __version__, "database": cfg.url.split(":", 1)[0],
            "workers": supervisor.alive() if supervisor else 0, "queued": queued,
        }  # fmt: skip

    @app.get("/api/me", tags=["meta"])
    def me(ident: User) -> dict[str, Any]:
        return {"user": ident.name, "max_upload_bytes": cfg.max_upload_bytes,
                "max_active_jobs": cfg.max_active_jobs_per_user}  # fmt: skip

    @app.get("/api/options", tags=["meta"])
    def job_options(ident: User) -> dict[str, Any]:
        """Encoders, codecs (with quality ranges) and grid formats a job may use."""
        return options()

    # -- uploads --------------------------------------------------------------------------------
    @app.post("/api/uploads", status_code=201, tags=["uploads"])
    async def upload(
        request: Request,
        ident: User,
        filename: Annotated[str, Query(max_length=1000, description="the file's name")],
    ) -> dict[str, Any]:
        """Send the file as the raw request body (streamed to disk, never held in memory).
        A DICOM slide goes as a zip of its folder. Types are sniffed from the content."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cfg.max_upload_bytes:
            raise HTTPException(413, f"upload larger than the limit of {cfg.max_upload_bytes} "
                                "bytes")  # fmt: skip
        uid = new_id()
        folder = cfg.data_dir / "uploads" / str(ident.user_id) / uid
        name = sanitize_filename(filename)
        try:
            got = await receive(request.stream(), folder, name, cfg.max_upload_bytes)
            if got.kind == "zip":
                target = folder / (Path(name).stem or "dicom")
                await run_in_threadpool(
                    extract_dicom_zip, got.path, target, cfg.max_zip_bytes, cfg.max_zip_members
                )
                got.path.unlink()
                got.path, got.kind = target, "dicom"
        except UploadRejected as e:
            shutil.rmtree(folder, ignore_errors=True)
            raise HTTPException(e.status, str(e)) from None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        row = Upload(id=uid, user_id=ident.user_id, filename=name, kind=got.kind,
                     path=str(got.path.relative_to(cfg.data_dir)), bytes=got.bytes,
                     sha256=got.sha256)  # fmt: skip
        with make() as s:
            s.add(row)
            s.commit()
        return upload_json(row)

    @app.get("/api/uploads", tags=["uploads"])
    def list_uploads(ident: User) -> list[dict[str, Any]]:
        with make() as s:
            rows = s.scalars(select(Upload).where(Upload.user_id == ident.user_id)
                             .order_by(Upload.created_at)).all()  # fmt: skip
        return [upload_json(u) for u in rows]

    @app.get("/api/uploads/{upload_id}", tags=["uploads"])
    def get_upload(upload_id: ID, ident: User) -> dict[str, Any]:
        with make() as s:
            return upload_json(own(s, Upload, upload_id, ident, "upload"))

    @app.delete("/api/uploads/{upload_id}", status_code=204, tags=["uploads"])
    def delete_upload(upload_id: ID, ident: User) -> Response:
        with make() as s:
            u = own(s, Upload, upload_id, ident, "upload")
            for j in s.scalars(select(Job).where(Job.user_id == ident.user_id,
                                                 Job.state.in_(ACTIVE_STATES))):  # fmt: skip
                if any(e["upload"] == upload_id for e in j.items):
                    raise HTTPException(409, f"upload {upload_id} is in use by job {j.id}")
            s.delete(u)
            s.commit()
        shutil.rmtree((cfg.data_dir / u.path).parent, ignore_errors=True)
        return Response(status_code=204)

    # -- jobs -----------------------------------------------------------------------------------
    @app.post("/api/jobs", status_code=201, tags=["jobs"])
    def create_job(req: Annotated[JobRequest, Body()], ident: User) -> dict[str, Any]:
        """Queue an `encode` (NIC grids) or `compress` (tile container) job over uploads."""
        try:
            spec = batch_job(req, cfg.threads_per_job)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        if len(req.uploads) > cfg.max_slides_per_job:
            raise HTTPException(422, f"at most {cfg.max_slides_per_job} slides per job")
        from ..pipeline.items import SlideItem

        with make() as s:
            active = s.scalar(select(func.count()).where(
                Job.user_id == ident.user_id, Job.state.in_(ACTIVE_STATES)))  # fmt: skip
            if active >= cfg.max_active_jobs_per_user:
                limit = cfg.max_active_jobs_per_user
                msg = f"{active} jobs queued or running (limit {limit}); wait or cancel one"
                raise HTTPException(429, msg)
            items = []
            for uid in req.uploads:
                u = own(s, Upload, uid, ident, "upload")
                item = SlideItem(cfg.data_dir / u.path, req.mpp_override)
                items.append({"upload": uid, "item": item.to_dict()})
            job = Job(user_id=ident.user_id, kind=req.kind, params=req.model_dump(),
                      batch_job=spec, items=items, message="queued")  # fmt: skip
            s.add(job)
            s.commit()
            return job_json(job)

    @app.get("/api/jobs", tags=["jobs"])
    def list_jobs(ident: User, state: str | None = None) -> list[dict[str, Any]]:
        with make() as s:
            q = select(Job).where(Job.user_id == ident.user_id)
            if state:
                q = q.where(Job.state == state)
            return [job_json(j) for j in s.scalars(q.order_by(Job.created_at)).all()]

    @app.get("/api/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: ID, ident: User) -> dict[str, Any]:
        with make() as s:
            return job_json(own(s, Job, job_id, ident, "job"))

    @app.post("/api/jobs/{job_id}/cancel", tags=["jobs"])
    def cancel_job(job_id: ID, ident: User) -> dict[str, Any]:
        """A queued job is cancelled at once; a running one within seconds."""
        with make() as s:
            job = own(s, Job, job_id, ident, "job")
            if job.state == "queued":
                s.execute(Job.__table__.update()
                          .where(Job.id == job_id, Job.state == "queued")
                          .values(state="cancelled", message="cancelled by the user"))  # fmt: skip
            elif job.state == "running":
                job.cancel_requested = True
                job.message = "cancelling"
            else:
                raise HTTPException(409, f"job {job_id} already {job.state}")
            s.commit()
            s.refresh(job)
            return job_json(job)

    @app.delete("/api/jobs/{job_id}", status_code=204, tags=["jobs"])
    def delete_job(job_id: ID, ident: User) -> Response:
        """Delete a finished job with all its results."""
        with make() as s:
            job = own(s, Job, job_id, ident, "job")
            if job.state in ACTIVE_STATES:
                raise HTTPException(409, f"job {job_id} is {job.state}; cancel it first")
            s.execute(delete(Result).where(Result.job_id == job_id))
            s.execute(delete(Job).where(Job.id == job_id))
            s.commit()
        shutil.rmtree(job_dir(cfg, job_id), ignore_errors=True)
        return Response(status_code=204)

    # -- results --------------------------------------------------------------------------------
    def _results(s, job_id: str, ident: Identity) -> list[Result]:
        own(s, Job, job_id, ident, "job")
        return list(s.scalars(select(Result).where(Result.job_id == job_id)
                              .order_by(Result.created_at, Result.name)))  # fmt: skip

    @app.get("/api/jobs/{job_id}/results", tags=["results"])
    def list_results(job_id: ID, ident: User) -> list[dict[str, Any]]:
        """A job's outputs; empty until it succeeded (partial outputs are never listed)."""
        with make() as s:
            return [result_json(r) for r in _results(s, job_id, ident)]

    def _zip(entries: list[tuple[Path, str]]) -> Path:
        tmp = tmp_dir / f"{uuid.uuid4().hex}.zip"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for path, arc in entries:
                if path.is_dir():
                    for f in sorted(path.rglob("*")):
                        if f.is_file():
                            zf.write(f, f"{arc}/{f.relative_to(path)}")
                elif path.exists():
                    zf.write(path, arc)
        return tmp

    def _send_zip(entries: list[tuple[Path, str]], name: str) -> FileResponse:
        tmp = _zip(entries)
        return FileResponse(tmp, filename=name, media_type="application/zip",
                            background=BackgroundTask(tmp.unlink, missing_ok=True))  # fmt: skip

    @app.get("/api/results/{result_id}", tags=["results"])
    def download_result(result_id: ID, ident: User):
        """One output file (a zarr folder comes as a zip)."""
        with make() as s:
            r = own(s, Result, result_id, ident, "result")
        path = cfg.data_dir / r.path
        if not path.exists():
            raise HTTPException(410, f"result {result_id} is gone from the server's disk")
        if r.is_dir:
            return _send_zip([(path, r.name)], r.name + ".zip")
        media = "image/png" if path.suffix == ".png" else "application/octet-stream"
        return FileResponse(path, filename=r.name, media_type=media)

    @app.get("/api/jobs/{job_id}/download", tags=["results"])
    def download_job(job_id: ID, ident: User):
        """All of a job's results in one zip."""
        with make() as s:
            rows = _results(s, job_id, ident)
        if not rows:
            raise HTTPException(409, f"job {job_id} has no results (yet)")
        entries = [(cfg.data_dir / r.path, result_path(r)) for r in rows]
        return _send_zip(entries, f"slidepress-{job_id[:8]}.zip")

    @app.delete("/api/results/{result_id}", status_code=204, tags=["results"])
    def delete_result(result_id: ID, ident: User) -> Response:
        with make() as s:
            r = own(s, Result, result_id, ident, "result")
            s.delete(r)
            s.commit()
        p = cfg.data_dir / r.path
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        return Response(status_code=204)

    # -- web page -------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title="slidepress API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )  # fmt: skip

    return app
