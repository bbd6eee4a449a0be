"""Service settings: command-line options over environment variables over defaults.

Secrets (a PostgreSQL URL with a password) come from the environment
(`SLIDEPRESS_DATABASE_URL`) or from `--database`, never from code.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError

GB = 1024**3


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise UsageError(f"{name} must be a number, got {raw!r}") from None


@dataclass
class ServiceConfig:
    data_dir: Path
    database_url: str | None = None  # None: SQLite file DATA_DIR/slidepress.db
    workers: int = 2  # worker processes running jobs
    threads_per_job: int = 1  # reader threads inside one job
    max_upload_bytes: int = 20 * GB
    max_active_jobs_per_user: int = 8  # queued + running
    max_slides_per_job: int = 100
    max_zip_bytes: int = 40 * GB  # a DICOM folder unpacked
    max_zip_members: int = 20_000
    poll_seconds: float = 0.5  # idle workers look for queued jobs this often
    heartbeat_seconds: float = 2.0  # a running job's worker says it is alive this often
    stale_seconds: float = 30.0  # a running job silent this long is orphaned
    max_attempts: int = 2  # runs of one job (a restart resumes it once, then it fails)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        if not 1 <= self.workers <= 64:
            raise UsageError(f"workers must be within 1-64, got {self.workers}")
        if self.max_upload_bytes <= 0:
            raise UsageError("the upload limit must be positive")
        if self.max_active_jobs_per_user < 1:
            raise UsageError("max active jobs per user must be at least 1")

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
        """Defaults, then SLIDEPRESS_* environment variables, then explicit overrides."""
        data = data_dir or os.environ.get("SLIDEPRESS_DATA_DIR")
        if not data:
            raise UsageError("give --data-dir DIR (or set SLIDEPRESS_DATA_DIR)")
        values: dict[str, Any] = {
            "database_url": os.environ.get("SLIDEPRESS_DATABASE_URL") or None,
            "max_upload_bytes": int(_env_float("SLIDEPRESS_MAX_UPLOAD_GB", 20) * GB),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
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
