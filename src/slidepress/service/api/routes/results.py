"""Results: a job's outputs, one file (a zarr folder as a zip) or the whole job as a zip, read
from the store (storage.py): files of the data dir sent as they are; objects of an object
store streamed through, or a redirect to a presigned URL when `presign_seconds` is set."""

# no `from __future__ import annotations`: FastAPI reads the dependency aliases at runtime

import shutil
import uuid
import zipfile
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from ...auth import Identity
from ...db import Job, Result
from ...storage import expires_at, storage, stream
from ..deps import ID, Config, Sessions, User, own
from ..models import ResultOut

router = APIRouter(prefix="/api", tags=["results"])
FILE = {200: {"content": {"application/octet-stream": {}, "image/png": {}, "application/zip": {}},
              "description": "the file"}}  # fmt: skip


def result_path(r: Result) -> str:
    """Where the result sits inside its job (and inside the job's zip): `previews/x.png`,
    or `UPLOADID/x.npz` when two uploads of a job share a file name."""
    parts = Path(r.path).parts  # jobs/<job>/out/...
    return "/".join(parts[3:]) if len(parts) > 3 and parts[2] == "out" else r.name


def result_out(r: Result, root: str = "", expires: float | None = None) -> ResultOut:
    zipped = ".zip" if r.is_dir else ""
    return ResultOut(
        id=r.id, job=r.job_id, name=r.name + zipped, path=result_path(r) + zipped, role=r.role,
        slide=r.slide, bytes=r.bytes, url=f"{root}/api/results/{r.id}", expires_at=expires,
    )  # fmt: skip


def _results(s: Session, job_id: str, ident: Identity) -> tuple[Job, list[Result]]:
    job = own(s, Job, job_id, ident, "job")
    return job, list(s.scalars(select(Result).where(Result.job_id == job_id)
                               .order_by(Result.created_at, Result.name)))  # fmt: skip


@router.get("/jobs/{job_id}/results", response_model=list[ResultOut])
def list_results(job_id: ID, request: Request, ident: User, cfg: Config,
                 make: Sessions) -> list[ResultOut]:  # fmt: skip
    """A job's outputs; empty until it succeeded (partial outputs are never listed)."""
    root = request.scope.get("root_path", "")
    with make() as s:
        job, rows = _results(s, job_id, ident)
    until = expires_at(cfg, job.finished_at)
    return [result_out(r, root, until) for r in rows]


def _zip(cfg, entries: list[tuple[str, str]]) -> Path:
    """A zip (stored) in the data dir's tmp of `(key, name in the zip)` entries, read from
    the store (a folder: each file under its name)."""
    st = storage(cfg)
    tmp = cfg.data_dir / "tmp" / f"{uuid.uuid4().hex}.zip"
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key, arc in entries:
                for sub, _ in st.files(key):
                    name = f"{arc}/{sub}" if sub else arc
                    with st.open(f"{key}/{sub}" if sub else key) as src, \
                            zf.open(name, "w", force_zip64=True) as dst:  # fmt: skip
                        shutil.copyfileobj(src, dst, 1 << 20)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _send_zip(cfg, entries: list[tuple[str, str]], name: str) -> FileResponse:
    tmp = _zip(cfg, entries)
    return FileResponse(tmp, filename=name, media_type="application/zip",
                        background=BackgroundTask(tmp.unlink, missing_ok=True))  # fmt: skip


@router.get("/results/{result_id}", response_class=FileResponse, responses={
    **FILE, 307: {"description": "a presigned URL of the object store (presign_seconds)"},
    410: {"description": "deleted from the server's storage"}})  # fmt: skip
def download_result(result_id: ID, ident: User, cfg: Config, make: Sessions):
    """One output file (a zarr folder comes as a zip)."""
    with make() as s:
        r = own(s, Result, result_id, ident, "result")
    st = storage(cfg)
    if not st.exists(r.path):
        raise HTTPException(410, f"result {result_id} is gone from the server's storage")
    if r.is_dir:
        return _send_zip(cfg, [(r.path, r.name)], r.name + ".zip")
    media = "image/png" if r.name.endswith(".png") else "application/octet-stream"
    if not st.remote:
        return FileResponse(st.local(r.path), filename=r.name, media_type=media)
    if cfg.presign_seconds and (url := st.presign(r.path, cfg.presign_seconds)):
        return RedirectResponse(url, status_code=307)
    size = st.files(r.path)[0][1]
    disposition = f"attachment; filename*=utf-8''{quote(r.name)}"
    return StreamingResponse(stream(cfg, r.path), media_type=media, headers={
        "Content-Length": str(size), "Content-Disposition": disposition})  # fmt: skip


@router.get("/jobs/{job_id}/download", response_class=FileResponse, responses={
    **FILE, 409: {"description": "the job has no results"}})  # fmt: skip
def download_job(job_id: ID, ident: User, cfg: Config, make: Sessions):
    """All of a job's results in one zip."""
    with make() as s:
        job, rows = _results(s, job_id, ident)
    if not rows:
        why = job.error or job.message if job.state != "succeeded" else "no outputs"
        raise HTTPException(409, f"job {job_id} is {job.state}: nothing to download ({why})")
    entries = [(r.path, result_path(r)) for r in rows]
    return _send_zip(cfg, entries, f"slidepress-{job_id[:8]}.zip")


@router.delete("/results/{result_id}", status_code=204, response_class=Response)
def delete_result(result_id: ID, ident: User, cfg: Config, make: Sessions) -> Response:
    with make() as s:
        r = own(s, Result, result_id, ident, "result")
        s.delete(r)
        s.commit()
    storage(cfg).delete(r.path)
    return Response(status_code=204)
