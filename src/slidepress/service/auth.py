"""API tokens: `sp_<key>_<secret>`, shown once, stored as SHA-256, looked up by key.

Tokens are 256-bit random strings, so a fast hash is enough (no password stretching needed);
comparison is constant-time. A user is a name; a user may hold several tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import UsageError
from .db import Token, User, now

PREFIX = "sp"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_TOKEN = re.compile(r"^sp_([0-9a-f]{16})_([A-Za-z0-9_-]{20,100})$")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Identity:
    user_id: int
    name: str


def create_token(session: Session, name: str) -> tuple[str, str]:
    """A new token for user `name` (created if new): (token, key). The token is not stored."""
    if not _NAME.match(name or ""):
        raise UsageError(
            f"user name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        user = User(name=name)
        session.add(user)
        session.flush()
    key = secrets.token_hex(8)
    token = f"{PREFIX}_{key}_{secrets.token_urlsafe(32)}"
    session.add(Token(user_id=user.id, key=key, hash=_digest(token)))
    session.commit()
    return token, key


def verify_token(session: Session, token: str | None) -> Identity | None:
    """The token's user, or None for a missing, malformed, unknown or revoked token."""
    m = _TOKEN.match(token or "")
    if not m:
        return None
    row = session.scalar(select(Token).where(Token.key == m.group(1)))
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.hash, _digest(token)):
        return None
    user = session.get(User, row.user_id)
    if user is None:
        return None
    if row.last_used_at is None or now() - row.last_used_at > 60:  # not a write per request
        row.last_used_at = now()
        session.commit()
    return Identity(user.id, user.name)


def revoke(session: Session, key_or_name: str) -> int:
    """Revoke one token (by key) or every token of a user (by name); how many were revoked."""
    rows = list(session.scalars(select(Token).where(Token.key == key_or_name)))
    if not rows:
        user = session.scalar(select(User).where(User.name == key_or_name))
        if user is not None:
            rows = list(session.scalars(select(Token).where(Token.user_id == user.id)))
    n = 0
    for row in rows:
        if row.revoked_at is None:
            row.revoked_at = now()
            n += 1
    session.commit()
    if not rows:
        raise UsageError(f"no token or user {key_or_name!r}")
    return n


def list_tokens(session: Session) -> list[dict]:
    out = []
    for tok, user in session.execute(
        select(Token, User).join(User, User.id == Token.user_id).order_by(Token.id)
    ):
        out.append({
            "key": tok.key, "user": user.name, "created_at": tok.created_at,
            "revoked": tok.revoked_at is not None, "last_used_at": tok.last_used_at,
        })  # fmt: skip
    return out
