"""What the routes depend on, in one place: the service's settings, database sessions, the
signed-in user, and the ownership check that makes another user's id a 404."""

# no `from __future__ import annotations`: FastAPI reads these aliases at runtime

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from ..auth import Identity, verify_token
from ..config import ServiceConfig

ID = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$", description="an id from a listing")]
UNAUTHORIZED = (
    "missing or invalid API token: send 'Authorization: Bearer TOKEN' "
    "(an administrator creates one with 'slidepress token create NAME')"
)
_bearer = HTTPBearer(auto_error=False)


def config(request: Request) -> ServiceConfig:
    return request.app.state.config


def session_maker(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions


Config = Annotated[ServiceConfig, Depends(config)]
Sessions = Annotated[sessionmaker[Session], Depends(session_maker)]


def current_user(
    make: Sessions, creds: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> Identity:
    with make() as s:
        ident = verify_token(s, creds.credentials if creds else None)
    if ident is None:
        raise HTTPException(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
    return ident


User = Annotated[Identity, Depends(current_user)]


def own(s: Session, model: Any, id_: str, ident: Identity, what: str) -> Any:
    """The row if `ident` owns it; else 404, as for an unknown id (ids reveal nothing)."""
    row = s.get(model, id_)
    if row is None or row.user_id != ident.user_id:
        raise HTTPException(404, f"{what} {id_} not found")
    return row
