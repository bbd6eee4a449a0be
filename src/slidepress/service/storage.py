"""Where uploads and results live, and how much of it each user holds.

**The store** (`Storage`, `storage(cfg)`): uploads and results by key, the path the database
records (`uploads/<user>/<id>/<name>`, `jobs/<id>/out/<name>`). By default the data dir
itself (files stay where they were written); `--storage` names another folder or an object
store URL (`s3://bucket/prefix`; fsspec, through `slidepress.remote`: credentials from the
environment or the AWS config files, `SLIDEPRESS_S3_ENDPOINT` / `AWS_ENDPOINT_URL` for
MinIO or Ceph), which several instances share. Then an upload is written to the data dir
(temporary name), typed and checked as always, put into the store once whole and removed
locally; a worker stages a job's inputs into the bounded local cache (`SLIDEPRESS_CACHE`,
default DATA/cache, at most `SLIDEPRESS_CACHE_GB`), runs the batch runner into the data dir
and puts the results into the store (whole objects only: one PUT, or a multipart upload
completed at the end) before the transaction that marks the job succeeded registers them.

**Quota and retention**: what a user holds (uploads + results, as recorded), and the purge
that deletes finished jobs' results and unused uploads past their age. The supervisor purges
once an hour when `retention_days` is set; `slidepress admin purge` does it on demand.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from .. import remote
from ..store.atomic import atomic_path
from .config import GB, ServiceConfig
from .db import ACTIVE_STATES, Job, Result, Upload, UploadSession, User, now


# -- the store ----------------------------------------------------------------------------------
class Storage:
    """Uploads and results by key (a relative POSIX path)."""

    remote = False  # objects are not local files: stage to read, put to publish

    def put(self, source: Path, key: str) -> None:
        """Publish a whole local file or folder under `key` (a folder: each file a whole
        object)."""
        raise NotImplementedError

    def open(self, key: str) -> IO[bytes]:
        """The object for reading (streamed, seekable)."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def files(self, key: str) -> list[tuple[str, int]]:
        """(path under `key`, bytes) of each file: [("", bytes)] for a file, [] if none."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Remove a file, or a folder with everything under it; nothing there is fine."""
        raise NotImplementedError

    def presign(self, key: str, seconds: float) -> str | None:
        """A URL a client may GET the object from for `seconds`; None: not supported."""
        return None

    def local(self, key: str) -> Path:
        """A local path to read `key` from: in place, or a staged copy (of a folder, the files
        directly under it: a DICOM slide's)."""
        raise NotImplementedError

    def describe(self, key: str = "") -> str:
        """Where `key` is, for logs (no secrets)."""
        raise NotImplementedError


class FolderStorage(Storage):
    """A local (or mounted, shared) folder; the default is the data dir itself, where
    uploads and results are written in place, so `put` has nothing to do."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        rel = PurePosixPath(key)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"not a storage key: {key!r}")
        return self.root / rel

    def put(self, source: Path, key: str) -> None:
        dest = self.path(key)
        if dest.resolve() == Path(source).resolve():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp:
            if Path(source).is_dir():
                shutil.copytree(source, tmp)
            else:
                shutil.copyfile(source, tmp)

    def open(self, key: str) -> IO[bytes]:
        return open(self.path(key), "rb")  # noqa: SIM115 - the caller closes it

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def files(self, key: str) -> list[tuple[str, int]]:
        p = self.path(key)
        if p.is_file():
            return [("", p.stat().st_size)]
        if not p.is_dir():
            return []
        return [(f.relative_to(p).as_posix(), f.stat().st_size)
                for f in sorted(p.rglob("*")) if f.is_file()]  # fmt: skip

    def delete(self, key: str) -> None:
        p = self.path(key)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)

    def local(self, key: str) -> Path:
        return self.path(key)

    def describe(self, key: str = "") -> str:
        return str(self.path(key) if key else self.root)


class ObjectStorage(Storage):
    """An fsspec object store (`s3://bucket/prefix`, `gs://`, `az://`), through
    `slidepress.remote`: whole-object uploads, ranged streaming reads, staging to the local
    cache, one-line StorageErrors without secrets."""

    remote = True

    def __init__(self, url: str):
        self.base = url.rstrip("/")

    def url(self, key: str) -> str:
        return remote.join(self.base, key)

    def put(self, source: Path, key: str) -> None:
        remote.upload(Path(source), self.url(key))

    def open(self, key: str) -> IO[bytes]:
        return remote.open_read(self.url(key))

    def exists(self, key: str) -> bool:
        return remote.exists(self.url(key))

    def files(self, key: str) -> list[tuple[str, int]]:
        url = self.url(key)
        fs, path = remote.filesystem(url)
        with remote.errors(url, "list"):
            if not fs.exists(path):
                return []
            if fs.isfile(path):
                return [("", int(fs.size(path)))]
            found = fs.find(path, detail=True)
        return sorted((p[len(path) :].lstrip("/"), int(i.get("size") or 0))
                      for p, i in found.items() if i.get("type") != "directory")  # fmt: skip

    def delete(self, key: str) -> None:
        url = self.url(key)
        fs, path = remote.filesystem(url)
        with remote.errors(url, "delete"), contextlib.suppress(FileNotFoundError):
            if fs.isfile(path):
                fs.rm_file(path)
            else:  # a folder: only what is under `path/` (not `path` + more characters)
                for p in fs.find(path + "/"):
                    fs.rm_file(p)

    def presign(self, key: str, seconds: float) -> str | None:
        url = self.url(key)
        fs, path = remote.filesystem(url)
        with remote.errors(url, "sign"):
            try:
                return fs.sign(path, expiration=int(seconds))
            except NotImplementedError:
                return None

    def local(self, key: str) -> Path:
        return remote.stage(self.url(key))

    def describe(self, key: str = "") -> str:
        return remote.public(self.url(key) if key else self.base)


@functools.lru_cache(maxsize=8)
def _storage(where: str, data_dir: Path) -> Storage:
    if remote.is_url(where):
        return ObjectStorage(where)
    return FolderStorage(remote.local(where).expanduser().resolve() if where else data_dir)


def storage(cfg: ServiceConfig) -> Storage:
    """The service's store: `cfg.storage` (a folder or URL), else the data dir."""
    return _storage(cfg.storage, cfg.data_dir)


def check_storage(cfg: ServiceConfig) -> None:
    """At start-up: an object store that cannot be reached or has no such bucket is one
    line (StorageError), not a failure of the first upload."""
    st = storage(cfg)
    if isinstance(st, ObjectStorage):
        remote.check_writable(st.base)


def in_place(cfg: ServiceConfig) -> bool:
    """Whether uploads and results are read where they are written (the data dir)."""
    st = storage(cfg)
    return isinstance(st, FolderStorage) and st.root == cfg.data_dir


def key_of(cfg: ServiceConfig, path: Path) -> str:
    """The storage key of a file written under the data dir."""
    return Path(path).relative_to(cfg.data_dir).as_posix()


def publish_upload(cfg: ServiceConfig, path: Path) -> None:
    """Put a complete upload (a file, or a DICOM folder) into the store; then its local copy
    in the data dir is not needed (the store is the one copy)."""
    if in_place(cfg):
        return
    storage(cfg).put(path, key_of(cfg, path))
    shutil.rmtree(Path(path).parent, ignore_errors=True)


def publish_results(cfg: ServiceConfig, results: list[Result]) -> None:
    """Put a job's results into the store, each whole, before they are registered."""
    if in_place(cfg):
        return
    st = storage(cfg)
    for r in results:
        st.put(cfg.data_dir / r.path, r.path)


def drop_scratch(cfg: ServiceConfig, folder: Path) -> None:
    """After a job: its local outputs are in the store, so the folder goes."""
    if not in_place(cfg):
        shutil.rmtree(folder, ignore_errors=True)


def sweep_scratch(cfg: ServiceConfig, make: sessionmaker[Session]) -> None:
    """At start-up, with an object store: job folders in the data dir of jobs no longer
    running (a killed worker's outputs, already run again elsewhere or to be run again)."""
    base = cfg.data_dir / "jobs"
    if in_place(cfg) or not base.is_dir():
        return
    with make() as s:
        running = set(s.scalars(select(Job.id).where(Job.state == "running")))
    for folder in base.iterdir():
        if folder.name not in running:
            shutil.rmtree(folder, ignore_errors=True)


def remove_upload_files(cfg: ServiceConfig, key: str) -> None:
    """An upload's folder (the key's parent), locally and in the store."""
    folder = PurePosixPath(key).parent.as_posix()
    shutil.rmtree(cfg.data_dir / folder, ignore_errors=True)
    if not in_place(cfg):
        storage(cfg).delete(folder)


def remove_job_files(cfg: ServiceConfig, job_id: str) -> None:
    """A job's folder (outputs, scratch), locally and in the store."""
    shutil.rmtree(cfg.data_dir / "jobs" / job_id, ignore_errors=True)
    if not in_place(cfg):
        storage(cfg).delete(f"jobs/{job_id}")


def stage_inputs(cfg: ServiceConfig, make: sessionmaker[Session], job: Job) -> None:
    """Point a job's inputs (its items, and any path in its batch job dict, such as a compare
    job's originals) at local copies staged from the store. The paths recorded at submission
    are under the submitting instance's data dir; each ends with the key of an upload or a
    result of the job's user. An input no longer in the store gets a path that does not
    exist (the runner reports it deleted). `job` is changed, never saved."""
    if in_place(cfg):
        return
    ids = _input_ids(job.items)
    with make() as s:
        keys = [*s.scalars(select(Upload.path).where(Upload.id.in_(ids),
                                                     Upload.user_id == job.user_id)),
                *s.scalars(select(Result.path).where(Result.id.in_(ids),
                                                     Result.user_id == job.user_id))]  # fmt: skip
    st, staged = storage(cfg), {}

    def local(key: str) -> str:
        if key not in staged:
            staged[key] = str(st.local(key)) if st.exists(key) else str(
                cfg.data_dir / "missing" / key)  # fmt: skip
        return staged[key]

    def swap(value: Any) -> Any:
        if isinstance(value, str):
            for key in keys:
                if value == key or value.endswith("/" + key):
                    return local(key)
            return value
        if isinstance(value, dict):
            return {swap(k): swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    job.items = swap(job.items)
    job.batch_job = swap(job.batch_job)


def _input_ids(items: list[dict[str, Any]]) -> set[str]:
    ids = set()
    for e in items:
        for source in (e, e.get("original") or {}):
            ids.update(source[k] for k in ("upload", "result") if source.get(k))
    return ids


def stream(cfg: ServiceConfig, key: str, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The object's bytes, read as they are sent (a streaming response)."""
    with storage(cfg).open(key) as f:
        while block := f.read(chunk):
            yield block


# -- quota and retention ------------------------------------------------------------------------
def used_bytes(s: Session, user_id: int) -> int:
    """Bytes of a user's uploads and results."""
    up = s.scalar(select(func.coalesce(func.sum(Upload.bytes), 0))
                  .where(Upload.user_id == user_id))  # fmt: skip
    res = s.scalar(select(func.coalesce(func.sum(Result.bytes), 0))
                   .where(Result.user_id == user_id))  # fmt: skip
    return int(up or 0) + int(res or 0)


def remaining(cfg: ServiceConfig, s: Session, user_id: int) -> int | None:
    """Bytes the user may still store; None: no quota."""
    if not cfg.quota_bytes:
        return None
    return max(0, cfg.quota_bytes - used_bytes(s, user_id))


def quota_message(cfg: ServiceConfig, used: int) -> str:
    return (
        f"storage quota reached: {used / GB:.2f} of {cfg.quota_bytes / GB:.2f} GB used by your "
        "uploads and results; delete some (DELETE /api/uploads/ID, /api/jobs/ID) and retry"
    )


def usage(s: Session) -> list[dict[str, Any]]:
    """Per user: uploads and results, count and bytes."""
    rows = []
    for u in s.scalars(select(User).order_by(User.name)):
        n_up, b_up = s.execute(select(func.count(), func.coalesce(func.sum(Upload.bytes), 0))
                               .where(Upload.user_id == u.id)).one()  # fmt: skip
        n_res, b_res = s.execute(select(func.count(), func.coalesce(func.sum(Result.bytes), 0))
                                 .where(Result.user_id == u.id)).one()  # fmt: skip
        rows.append({"user": u.name, "uploads": n_up, "upload_bytes": int(b_up),
                     "results": n_res, "result_bytes": int(b_res)})  # fmt: skip
    return rows


def expires_at(cfg: ServiceConfig, finished_at: float | None) -> float | None:
    if not cfg.retention_days or finished_at is None:
        return None
    return finished_at + cfg.retention_days * 86400


def purge(cfg: ServiceConfig, make: sessionmaker[Session], days: float | None = None,
          user: str | None = None) -> dict[str, int]:  # fmt: skip
    """Delete finished jobs (with their results) that finished more than `days` ago
    (default: the retention setting; 0 or None: nothing), uploads older than that which no
    queued or running job uses, and resumable uploads abandoned that long. `user`: only that
    user's. Returns counts."""
    days = cfg.retention_days if days is None else days
    if not days:
        return {"jobs": 0, "uploads": 0, "bytes": 0}
    cutoff = now() - days * 86400
    from .logs import event

    freed = n_jobs = n_uploads = 0
    with make() as s:
        uid = None
        if user is not None:
            uid = s.scalar(select(User.id).where(User.name == user))
            if uid is None:
                from ..errors import UsageError

                raise UsageError(f"no user {user!r}")
        q = select(Job).where(Job.state.not_in(ACTIVE_STATES), Job.finished_at < cutoff)
        if uid is not None:
            q = q.where(Job.user_id == uid)
        for job in s.scalars(q).all():
            freed += int(s.scalar(select(func.coalesce(func.sum(Result.bytes), 0))
                                  .where(Result.job_id == job.id)) or 0)  # fmt: skip
            s.execute(delete(Result).where(Result.job_id == job.id))
            s.execute(delete(Job).where(Job.id == job.id))
            s.commit()
            remove_job_files(cfg, job.id)
            n_jobs += 1
        in_use = {e["upload"] for j in s.scalars(select(Job).where(Job.state.in_(ACTIVE_STATES)))
                  for e in j.items}  # fmt: skip
        q = select(Upload).where(Upload.created_at < cutoff)
        if uid is not None:
            q = q.where(Upload.user_id == uid)
        for up in s.scalars(q).all():
            if up.id in in_use:
                continue
            s.delete(up)
            s.commit()
            remove_upload_files(cfg, up.path)
            freed += up.bytes
            n_uploads += 1
        q = select(UploadSession).where(UploadSession.updated_at < cutoff)
        if uid is not None:
            q = q.where(UploadSession.user_id == uid)
        for sess in s.scalars(q).all():  # resumable uploads abandoned that long ago
            s.delete(sess)
            s.commit()
            shutil.rmtree((cfg.data_dir / sess.path).parent, ignore_errors=True)
    if n_jobs or n_uploads:
        event("storage.purged", jobs=n_jobs, uploads=n_uploads, bytes=freed, days=days)
    return {"jobs": n_jobs, "uploads": n_uploads, "bytes": freed}
