"""Service settings: command-line options over environment variables over defaults.

The settings `slidepress serve` takes are declared once in `SETTINGS` (the same `Option`s as
the job specs, slidepress.jobs.options): its typer options, their environment variables and
the defaults of `ServiceConfig` come from there.

Secrets (a PostgreSQL URL with a password) come from the environment
(`SLIDEPRESS_DATABASE_URL`) or from `--database`, never from code.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..bounds import MAX_WORKERS
from ..errors import UsageError
from ..jobs.options import Option

GB = 1024**3

DATA_DIR = Option(
    "data_dir", Path, None, "Folder for uploads, results and the SQLite database.",
    optional=True, envvar="SLIDEPRESS_DATA_DIR",
)  # fmt: skip
DATABASE = Option(
    "database", str, None,
    "SQLAlchemy URL, e.g. postgresql://user@/db?host=/run/postgresql (default: SQLite in the "
    "data dir). Put passwords in the environment.",
    optional=True, envvar="SLIDEPRESS_DATABASE_URL", key="database_url",
)  # fmt: skip
WORKERS = Option("workers", int, 2, "Worker processes running jobs.", min=1, max=MAX_WORKERS)
MAX_UPLOAD_GB = Option(
    "max_upload_gb", float, 20.0, "Largest upload accepted, in GB (2^30 bytes).",
    min=0, min_exclusive=True, envvar="SLIDEPRESS_MAX_UPLOAD_GB",
)  # fmt: skip
MAX_JOBS_PER_USER = Option(
    "max_jobs_per_user", int, 8, "Jobs one user may have queued or running.", min=1,
    key="max_active_jobs_per_user",
)  # fmt: skip
THREADS_PER_JOB = Option(
    "threads_per_job", int, 1, "Threads working on one slide of a job (the jobs' --threads).",
    min=1, max=MAX_WORKERS,
)  # fmt: skip
# what `slidepress serve` takes besides where it listens (data dir and database are shared
# with `slidepress token ...`)
SETTINGS = (DATA_DIR, DATABASE, WORKERS, MAX_UPLOAD_GB, MAX_JOBS_PER_USER, THREADS_PER_JOB)


def _from_env(option: Option) -> Any:
    raw = os.environ.get(option.envvar or "")
    if raw in (None, ""):
        return None
    try:
        value = option.type(raw)
    except ValueError:
        raise UsageError(f"{option.envvar} must be a number, got {raw!r}") from None
    option.check(value)
    return value


@dataclass
class ServiceConfig:
    data_dir: Path
    database_url: str | None = None  # None: SQLite file DATA_DIR/slidepress.db
    workers: int = WORKERS.default  # worker processes running jobs
    threads_per_job: int = THREADS_PER_JOB.default  # threads on one slide inside one job
    max_upload_bytes: int = int(MAX_UPLOAD_GB.default * GB)
    max_active_jobs_per_user: int = MAX_JOBS_PER_USER.default  # queued + running
    max_slides_per_job: int = 100
    max_zip_bytes: int = 40 * GB  # a DICOM folder unpacked
    max_zip_members: int = 20_000
    poll_seconds: float = 0.5  # idle workers look for queued jobs this often
    heartbeat_seconds: float = 2.0  # a running job's worker says it is alive this often
    stale_seconds: float = 30.0  # a running job silent this long is orphaned
    max_attempts: int = 2  # runs of one job (a restart resumes it once, then it fails)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        WORKERS.check(self.workers)
        THREADS_PER_JOB.check(self.threads_per_job)
        MAX_JOBS_PER_USER.check(self.max_active_jobs_per_user)
        if self.max_upload_bytes <= 0:
            raise UsageError("the upload limit must be positive")

    def prepare(self) -> Path:
        """Create the data dir, or say in one line why it cannot be used."""
        from ..store.atomic import check_output

        check_output(self.data_dir, folder=True)  # a file, /proc, read-only: UsageError
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.data_dir

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'slidepress.db'}"

    @classmethod
    def from_env(cls, data_dir: str | Path | None = None, **overrides: Any) -> ServiceConfig:
        """Defaults, then the SETTINGS' environment variables (SLIDEPRESS_*), then explicit
        overrides (ServiceConfig field names; None: not given)."""
        values: dict[str, Any] = {}
        for given in (
            {o.field: _from_env(o) for o in SETTINGS if o.envvar},
            overrides,
        ):  # fmt: skip
            given = {k: v for k, v in given.items() if v is not None}
            if MAX_UPLOAD_GB.field in given:  # settings say GB, the config counts bytes
                given["max_upload_bytes"] = int(given.pop(MAX_UPLOAD_GB.field) * GB)
            values.update(given)
        data = data_dir or values.pop(DATA_DIR.field, None)
        values.pop(DATA_DIR.field, None)
        if not data:
            raise UsageError(f"give --data-dir DIR (or set {DATA_DIR.envvar})")
        return cls(Path(data), **values)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a worker process (spawned, so nothing is inherited)."""
        d = asdict(self)
        d["data_dir"] = str(self.data_dir)
        return d

    def describe(self) -> dict[str, Any]:
        """What the health endpoint shows: no database URL (it may hold a password)."""
        d = self.to_dict()
        d.pop("database_url")
        d["database"] = self.url.split(":", 1)[0]
        return d
