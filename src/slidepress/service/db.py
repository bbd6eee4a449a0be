"""The job database: users, tokens, uploads, jobs, results (SQLAlchemy; SQLite or PostgreSQL).

SQLite runs in WAL mode with a busy timeout, so the web process and the worker processes
read and write it concurrently; the same code runs on PostgreSQL given a URL. State changes
that must not race (a worker claiming a job, a job finishing with its results) are single
conditional UPDATEs or one transaction.

The schema is made and changed by Alembic migrations (`migrations/versions/`), applied by
`migrate` when the web process or an admin command opens the database; a database made
before migrations existed (by `create_all`) is recognised and stamped as the first revision.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from ..errors import UsageError

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")


def new_id() -> str:
    """Random ids: nothing guessable, nothing counting other users' work."""
    return uuid.uuid4().hex


def now() -> float:
    return time.time()


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class Token(Base):
    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    key: Mapped[str] = mapped_column(String(32), unique=True)  # public part, to look up
    hash: Mapped[str] = mapped_column(String(64))  # SHA-256 of the whole token
    created_at: Mapped[float] = mapped_column(Float, default=now)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Upload(Base):
    __tablename__ = "uploads"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    filename: Mapped[str] = mapped_column(String(200))  # sanitised
    path: Mapped[str] = mapped_column(String(500))  # relative to the data dir
    kind: Mapped[str] = mapped_column(String(20))  # tiff | dicom | image
    bytes: Mapped[int] = mapped_column(BigInteger)  # multi-GB slides: 64 bits
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float, default=now)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # encode | compress
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # as the user sent them
    batch_job: Mapped[dict[str, Any]] = mapped_column(JSON)  # pipeline.batch job dict
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # upload id + slide item dicts
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str] = mapped_column(Text, default="")
    outcomes: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str] = mapped_column(String(100), default="")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Result(Base):
    __tablename__ = "results"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(300))  # file name as downloaded
    path: Mapped[str] = mapped_column(String(500))  # relative to the data dir
    role: Mapped[str] = mapped_column(String(20))  # grid | container | preview | report
    slide: Mapped[str] = mapped_column(String(200), default="")
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    is_dir: Mapped[bool] = mapped_column(Boolean, default=False)  # zarr: served as a zip
    created_at: Mapped[float] = mapped_column(Float, default=now)


class UploadSession(Base):
    """A resumable upload in progress: the bytes so far sit in `path` (relative to the data
    dir); `offset` of `size` have arrived."""

    __tablename__ = "upload_sessions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    filename: Mapped[str] = mapped_column(String(200))  # sanitised
    path: Mapped[str] = mapped_column(String(500))
    size: Mapped[int] = mapped_column(BigInteger)
    offset: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    updated_at: Mapped[float] = mapped_column(Float, default=now)


class Instance(Base):
    """A running `slidepress serve` (web + workers, API only, or workers only): it says it
    is alive every few seconds (`seen_at`); its workers' ids start with its id. Another
    instance requeues the running jobs of one that went silent (supervisor.release_orphans)."""

    __tablename__ = "instances"
    id: Mapped[str] = mapped_column(String(80), primary_key=True)  # host:pid:random
    host: Mapped[str] = mapped_column(String(64))
    pid: Mapped[int] = mapped_column(Integer)
    machine: Mapped[str] = mapped_column(String(32))  # same value: its pid can be checked here
    workers: Mapped[int] = mapped_column(Integer, default=0)
    http: Mapped[bool] = mapped_column(Boolean, default=True)
    started_at: Mapped[float] = mapped_column(Float, default=now)
    seen_at: Mapped[float] = mapped_column(Float, default=now)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


MIGRATIONS = Path(__file__).parent / "migrations"
BASELINE = "0001"  # the schema create_all made before migrations
MIGRATION_LOCK = 0x5D1DE  # PostgreSQL advisory lock key held while migrating


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def migrate(engine: Engine, revision: str = "head") -> str | None:
    """Bring the database to `revision` (default: the newest); return the revision it was at
    (None: empty). A pre-migration database (tables, no alembic_version) is stamped as the
    baseline first, its rows kept."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import inspect

    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # instances starting together: one migrates
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        before = MigrationContext.configure(conn).get_current_revision()
        cfg = _alembic_config(conn)
        if before is None and inspect(conn).has_table("users"):
            command.stamp(cfg, BASELINE)
            before = BASELINE
        command.upgrade(cfg, revision)
    return before


def make_engine(url: str, *, migrate_schema: bool = True) -> Engine:
    """An engine for `url`, its schema migrated to the newest revision (`migrate_schema=False`
    in worker processes: the web process migrated it before they start)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        if migrate_schema:
            migrate(engine)
    except ModuleNotFoundError as e:
        raise UsageError(
            f"database driver missing ({e.name}): pip install 'slidepress[postgres]'"
        ) from None
    except Exception as e:  # noqa: BLE001 - connection errors of any driver
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"cannot open the job database: {first}") from None
    return engine


def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
