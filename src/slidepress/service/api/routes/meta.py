"""Health, the signed-in user, and what a job may use."""

# no `from __future__ import annotations`: FastAPI reads the dependency aliases at runtime

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import func, select, text

from .... import __version__
from ...auth import verify_token
from ...db import Job
from ...jobs import options
from ...storage import used_bytes
from ..deps import Config, Sessions, User, _bearer
from ..models import Health, Me, Options

router = APIRouter(prefix="/api", tags=["meta"])


@router.get("/health", response_model=Health, response_model_exclude_none=True)
def health(
    request: Request, cfg: Config, make: Sessions,
    creds: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> Health:  # fmt: skip
    """Liveness: the database answers and how many worker processes run (no auth). An
    admin's token (`--admins`) also gets the effective settings and where each came from."""
    supervisor = request.app.state.supervisor
    with make() as s:
        s.execute(text("SELECT 1"))
        queued = s.scalar(select(func.count()).where(Job.state == "queued"))
        ident = verify_token(s, creds.credentials) if creds else None
    admin = ident is not None and ident.name in cfg.admin_names
    return Health(
        status="ok", version=__version__, database=cfg.url.split(":", 1)[0],
        workers=supervisor.alive() if supervisor else 0, queued=queued,
        settings=cfg.settings() if admin else None,
    )  # fmt: skip


@router.get("/me", response_model=Me)
def me(ident: User, cfg: Config, make: Sessions) -> Me:
    """The token's user, the limits that apply and the storage used."""
    with make() as s:
        used = used_bytes(s, ident.user_id)
    return Me(user=ident.name, max_upload_bytes=cfg.max_upload_bytes,
              max_active_jobs=cfg.max_active_jobs_per_user, quota_bytes=cfg.quota_bytes or None,
              used_bytes=used, admin=ident.name in cfg.admin_names)  # fmt: skip


@router.get("/options", response_model=Options)
def job_options(ident: User) -> Options:
    """Encoders, codecs (with quality ranges) and grid formats a job may use."""
    return Options(**options())
