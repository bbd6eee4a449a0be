"""Service settings: command-line flag > environment variable > config file > default.

The settings `slidepress serve` takes are declared once in `SETTINGS` (the same `Option`s as
the job specs, slidepress.jobs.options): its typer options, their environment variables
(`SLIDEPRESS_<NAME>`), the keys of the config file (TOML, `--config FILE` or
`SLIDEPRESS_CONFIG`: `workers = 4`, `quota_gb = 50`, ...) and the defaults of `ServiceConfig`
come from there. `resolve` records where each value came from; `serve` prints that at
start-up and `/api/health` shows it to admins.

Secrets (a PostgreSQL URL with a password) come from the environment
(`SLIDEPRESS_DATABASE_URL`), a config file readable by the service only, or `--database`;
never from code, and they are never shown.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, field
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
WORKERS = Option(
    "workers", int, 2,
    "Worker processes running jobs; 0: this instance serves the API only (other instances, "
    "or `serve --workers-only`, run the jobs).",
    min=0, max=MAX_WORKERS, envvar="SLIDEPRESS_WORKERS",
)  # fmt: skip
MAX_UPLOAD_GB = Option(
    "max_upload_gb", float, 20.0,
    "Largest upload accepted, in GB (2^30 bytes); also caps a DICOM zip unpacked.",
    min=0, min_exclusive=True, envvar="SLIDEPRESS_MAX_UPLOAD_GB",
)  # fmt: skip
MAX_JOBS_PER_USER = Option(
    "max_jobs_per_user", int, 8, "Jobs one user may have queued or running.", min=1,
    key="max_active_jobs_per_user", envvar="SLIDEPRESS_MAX_JOBS_PER_USER",
)  # fmt: skip
THREADS_PER_JOB = Option(
    "threads_per_job", int, 1, "Threads working on one slide of a job (the jobs' --threads).",
    min=1, max=MAX_WORKERS, envvar="SLIDEPRESS_THREADS_PER_JOB",
)  # fmt: skip
QUOTA_GB = Option(
    "quota_gb", float, 0.0,
    "Storage per user for uploads + results, in GB; 0: no quota. Over it, uploads and new "
    "jobs are refused (507).",
    min=0, envvar="SLIDEPRESS_QUOTA_GB",
)  # fmt: skip
RETENTION_DAYS = Option(
    "retention_days", float, 0.0,
    "Delete finished jobs' results (and uploads no job uses) this many days old; 0: keep.",
    min=0, envvar="SLIDEPRESS_RETENTION_DAYS",
)  # fmt: skip
MAX_IMAGE_MEGAPIXELS = Option(
    "max_image_megapixels", float, 100.0,
    "Largest plain image (PNG/JPEG) a job decodes, in megapixels (plain images are decoded "
    "whole; whole-slide formats are read in tiles).",
    min=0, min_exclusive=True, envvar="SLIDEPRESS_MAX_IMAGE_MEGAPIXELS",
)  # fmt: skip
WORKER_MEMORY_GB = Option(
    "worker_memory_gb", float, 0.0,
    "Address-space limit of each worker process, in GB; 0: the machine's memory divided by "
    "the workers. A job over it fails with a message, the worker lives on.",
    min=0, envvar="SLIDEPRESS_WORKER_MEMORY_GB",
)  # fmt: skip
ADMINS = Option(
    "admins", str, "", "Comma-separated user names that see the settings in /api/health.",
    envvar="SLIDEPRESS_ADMINS",
)  # fmt: skip
ROOT_PATH = Option(
    "root_path", str, "",
    "Sub-path a reverse proxy serves the service under, e.g. /slidepress (a proxy may send "
    "X-Forwarded-Prefix instead).",
    envvar="SLIDEPRESS_ROOT_PATH",
)  # fmt: skip
LOG_FORMAT = Option(
    "log_format", str, "text", "Service log lines: text or json (one object a line).",
    choices=("text", "json"), envvar="SLIDEPRESS_LOG_FORMAT",
)  # fmt: skip
STORAGE = Option(
    "storage", str, "",
    "Where uploads and results live: a local folder or an object store URL, e.g. "
    "s3://bucket/prefix (credentials from the environment or the AWS config files; "
    "SLIDEPRESS_S3_ENDPOINT or AWS_ENDPOINT_URL for MinIO/Ceph). Default: the data dir. "
    "Several instances share one store and one PostgreSQL database.",
    envvar="SLIDEPRESS_STORAGE",
)  # fmt: skip
PRESIGN_SECONDS = Option(
    "presign_seconds", float, 0.0,
    "Downloads from an object store: redirect to a presigned URL valid this many seconds; "
    "0: stream through the service.",
    min=0, envvar="SLIDEPRESS_PRESIGN_SECONDS",
)  # fmt: skip
HEARTBEAT_TIMEOUT = Option(
    "heartbeat_timeout", float, 60.0,
    "Seconds without a heartbeat after which a running job (or a whole instance) counts as "
    "gone and any instance queues the job again; keep the machines' clocks in sync (NTP).",
    min=1, envvar="SLIDEPRESS_HEARTBEAT_TIMEOUT", key="stale_seconds",
)  # fmt: skip
MAX_ATTEMPTS = Option(
    "max_attempts", int, 2,
    "Runs of one job: a job whose worker died is queued again until it has run this often, "
    "then it fails with a message.",
    min=1, envvar="SLIDEPRESS_MAX_ATTEMPTS",
)  # fmt: skip
# what `slidepress serve` takes besides where it listens (data dir and database are shared
# with `slidepress token ...` and `slidepress admin ...`)
SETTINGS = (
    DATA_DIR, DATABASE, WORKERS, MAX_UPLOAD_GB, MAX_JOBS_PER_USER, THREADS_PER_JOB, QUOTA_GB,
    RETENTION_DAYS, MAX_IMAGE_MEGAPIXELS, WORKER_MEMORY_GB, ADMINS, ROOT_PATH, LOG_FORMAT,
    STORAGE, PRESIGN_SECONDS, HEARTBEAT_TIMEOUT, MAX_ATTEMPTS,
)  # fmt: skip
CONFIG_ENV = "SLIDEPRESS_CONFIG"
SECRET = {DATABASE.field}  # never shown (a storage URL's user info is dropped when shown)
# settings given in GB / MP; the config counts bytes / pixels
_SCALED = {
    MAX_UPLOAD_GB.field: ("max_upload_bytes", GB), QUOTA_GB.field: ("quota_bytes", GB),
    MAX_IMAGE_MEGAPIXELS.field: ("max_image_pixels", 10**6),
    WORKER_MEMORY_GB.field: ("worker_memory_bytes", GB),
}  # fmt: skip


def _parse(option: Option, raw: Any, where: str) -> Any:
    if option.type is Path:
        return Path(str(raw))
    try:
        value = option.type(raw)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: {option.name} must be a {option.type.__name__}, "
                         f"got {raw!r}") from None  # fmt: skip
    try:
        option.check(value)
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None
    return value


def _from_env(option: Option) -> Any:
    raw = os.environ.get(option.envvar or "")
    if raw in (None, ""):
        return None
    return _parse(option, raw, option.envvar)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML file of settings (`workers = 4`, `data_dir = "/srv/slidepress"`); unknown keys
    are an error, so a typo is not silently ignored."""
    path = Path(path).expanduser()
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as e:
        raise UsageError(f"config file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config file {path}: {e}") from None
    by_name = {o.name: o for o in SETTINGS}
    out = {}
    for key, value in raw.items():
        option = by_name.get(key.replace("-", "_"))
        if option is None:
            raise UsageError(f"config file {path}: unknown setting {key!r}; known: "
                             f"{', '.join(by_name)}")  # fmt: skip
        out[option.field] = _parse(option, value, f"config file {path}")
    return out


@dataclass
class ServiceConfig:
    data_dir: Path
    database_url: str | None = None  # None: SQLite file DATA_DIR/slidepress.db
    workers: int = WORKERS.default  # worker processes running jobs
    threads_per_job: int = THREADS_PER_JOB.default  # threads on one slide inside one job
    max_upload_bytes: int = int(MAX_UPLOAD_GB.default * GB)
    max_active_jobs_per_user: int = MAX_JOBS_PER_USER.default  # queued + running
    quota_bytes: int = 0  # per user, uploads + results; 0: none
    retention_days: float = RETENTION_DAYS.default  # 0: keep results
    max_image_pixels: int = int(MAX_IMAGE_MEGAPIXELS.default * 10**6)
    worker_memory_bytes: int = 0  # 0: the machine's memory / workers
    admins: str = ""  # comma-separated user names
    root_path: str = ""
    log_format: str = LOG_FORMAT.default
    max_slides_per_job: int = 100
    max_zip_members: int = 20_000
    max_zip_ratio: float = 100.0  # a DICOM member deflated more than this is a bomb
    poll_seconds: float = 0.5  # idle workers look for queued jobs this often
    heartbeat_seconds: float = 2.0  # a running job's worker says it is alive this often
    stale_seconds: float = HEARTBEAT_TIMEOUT.default  # a job or instance silent this long is gone
    max_attempts: int = MAX_ATTEMPTS.default  # runs of one job (a restart resumes it once)
    storage: str = STORAGE.default  # "": the data dir; else a folder or an fsspec URL
    presign_seconds: float = PRESIGN_SECONDS.default  # 0: downloads stream through us
    sources: dict[str, str] = field(default_factory=dict)  # setting -> flag|env|file|default

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        WORKERS.check(self.workers)
        THREADS_PER_JOB.check(self.threads_per_job)
        MAX_JOBS_PER_USER.check(self.max_active_jobs_per_user)
        LOG_FORMAT.check(self.log_format)
        HEARTBEAT_TIMEOUT.check(self.stale_seconds)
        MAX_ATTEMPTS.check(self.max_attempts)
        if self.stale_seconds < 3 * self.heartbeat_seconds:
            raise UsageError(f"heartbeat_timeout must be at least 3 heartbeats "
                             f"({3 * self.heartbeat_seconds:g} s)")  # fmt: skip
        if self.max_upload_bytes <= 0:
            raise UsageError("the upload limit must be positive")
        root = self.root_path.strip().rstrip("/")
        self.root_path = "/" + root.lstrip("/") if root else ""

    @property
    def admin_names(self) -> set[str]:
        return {n.strip() for n in self.admins.split(",") if n.strip()}

    @property
    def worker_memory_limit(self) -> int:
        """Bytes of address space per worker (the setting, else memory / workers, at least
        4 GiB: a worker maps its libraries and thread stacks before any job)."""
        if self.worker_memory_bytes:
            return self.worker_memory_bytes
        import psutil

        return max(4 * GB, psutil.virtual_memory().total // max(self.workers, 1))

    def prepare(self) -> Path:
        """Create the data dir private to the service's user (0700; files 0600 by the
        service's umask), or say in one line why it cannot be used."""
        from ..store.atomic import check_output

        check_output(self.data_dir, folder=True)  # a file, /proc, read-only: UsageError
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.data_dir.chmod(0o700)  # also a folder an older version made 0755
        db = self.data_dir / "slidepress.db"
        for f in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            if f.exists():
                f.chmod(0o600)
        return self.data_dir

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'slidepress.db'}"

    @classmethod
    def resolve(
        cls, flags: dict[str, Any] | None = None, config_file: str | Path | None = None,
        **fixed: Any,
    ) -> ServiceConfig:  # fmt: skip
        """Settings by precedence: `flags` (given on the command line; SETTINGS field names,
        None: not given) > environment (SLIDEPRESS_*) > config file (`config_file`, else
        SLIDEPRESS_CONFIG) > default. `fixed`: ServiceConfig fields set by code (tests)."""
        config_file = config_file or os.environ.get(CONFIG_ENV) or None
        layers = [
            ("file", read_config_file(config_file) if config_file else {}),
            ("env", {o.field: _from_env(o) for o in SETTINGS if o.envvar}),
            ("flag", dict(flags or {})),
        ]
        values: dict[str, Any] = {}
        sources = {o.field: "default" for o in SETTINGS}
        for where, given in layers:
            for k, v in given.items():
                if v is not None:
                    values[k], sources[k] = v, where
        for name, (target, scale) in _SCALED.items():
            if name in values:
                values[target] = int(values.pop(name) * scale)
        data = values.pop(DATA_DIR.field, None)
        if not data:
            raise UsageError(f"give --data-dir DIR (or set {DATA_DIR.envvar}, or data_dir in "
                             "the config file)")  # fmt: skip
        return cls(Path(data), **{**values, **fixed}, sources=sources)

    @classmethod
    def from_env(cls, data_dir: str | Path | None = None, **overrides: Any) -> ServiceConfig:
        """Defaults, config file, environment, then explicit `overrides` (SETTINGS field
        names; None: not given) as if given on the command line."""
        return cls.resolve({DATA_DIR.field: data_dir, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a worker process (spawned, so nothing is inherited)."""
        d = asdict(self)
        d["data_dir"] = str(self.data_dir)
        return d

    def settings(self) -> dict[str, dict[str, Any]]:
        """Each setting's effective value and its source, secrets left out: what `serve`
        prints at start-up and /api/health shows admins."""
        out = {}
        for o in SETTINGS:
            if o.field in SECRET:
                value: Any = self.url.split(":", 1)[0]
            elif o.field == STORAGE.field:
                from ..remote import public

                value = public(self.storage) if self.storage else str(self.data_dir)
            elif o.field in _SCALED:
                target, scale = _SCALED[o.field]
                value = round(getattr(self, target) / scale, 3)
            else:
                value = getattr(self, o.field)
            out[o.name] = {"value": str(value) if isinstance(value, Path) else value,
                           "source": self.sources.get(o.field, "default")}  # fmt: skip
        return out

    def describe(self) -> dict[str, Any]:
        """No database URL (it may hold a password)."""
        d = self.to_dict()
        d.pop("database_url")
        d["database"] = self.url.split(":", 1)[0]
        if self.storage:
            from ..remote import public

            d["storage"] = public(self.storage)
        return d
