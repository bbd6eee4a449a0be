"""Slides and outputs at fsspec URLs: the one module that knows about object storage.

`s3://`, `gs://`, `az://` (and the other fsspec protocols) read and write; `http(s)://` read
only; `file://` is a local path. Everything else in slidepress keeps working on local paths:

- **Reading**: a slide at a URL is staged, i.e. copied once into a bounded local cache
  (`stage`, `stage_tree` for a DICOM folder given as a prefix) keyed by the URL and the
  object's version (ETag, or size and modification time), and opened from there by every
  reader, so the pixels, the content key and the outputs are exactly those of a local run.
  Containers (`.spz`) and grids given as URLs are staged the same way.
- **Writing**: outputs are written to a local work folder as on disk (temporary name, rename)
  and then published with `upload`: one object per file, each a single PUT or a multipart
  upload completed only when the whole file is sent (s3fs `put_file`), so a killed run never
  leaves a half object under the final key; the files of a folder output (a zarr grid) are
  sent with its root metadata (`zarr.json`) last, so it is a grid only once complete.
- **Credentials** come only from the store library's standard places (environment, AWS
  config/credentials files and profiles, instance roles; GCP/Azure likewise), never from the
  command line; `SLIDEPRESS_S3_ENDPOINT` (or botocore's own `AWS_ENDPOINT_URL`) points `s3://`
  at an S3-compatible store (MinIO, Ceph).
- **Errors** (wrong credentials, missing bucket or key, denied write) are `StorageError`:
  one line naming the URL (never a secret; the URL's own user info is dropped), exit 2.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import StorageError

CACHE_ENV = "SLIDEPRESS_CACHE"  # the staging cache folder (default ~/.cache/slidepress)
CACHE_GB_ENV = "SLIDEPRESS_CACHE_GB"  # its bound in GB (default 50); oldest entries go first
ENDPOINT_ENV = "SLIDEPRESS_S3_ENDPOINT"
DEFAULT_CACHE_GB = 50.0
UPLOAD_PART_BYTES = 64 << 20  # multipart part size (S3 allows 5 MiB .. 5 GiB)
READ_ONLY = ("http", "https")
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
_SOURCE = "source.json"  # beside a staged file: the URL and version it was copied from
# "staging ... to the local cache": the CLI prints this logger's INFO lines as notes
log = logging.getLogger("slidepress.remote")


def is_url(value: object) -> bool:
    """A URL slidepress hands to fsspec (not `file://`, which is a local path)."""
    m = _URL.match(str(value)) if isinstance(value, str) else None
    return m is not None and m["scheme"].lower() != "file"


def local(value: str | Path) -> Path:
    """A local path from a path or a `file://` URL."""
    s = str(value)
    return Path(s[7:]) if s.lower().startswith("file://") else Path(s)


def scheme(url: str) -> str:
    m = _URL.match(url)
    return m["scheme"].lower() if m else "file"


def public(url: str) -> str:
    """The URL as shown in messages: user info (`user:secret@`) and query (signatures of a
    presigned URL) dropped."""
    m = _URL.match(url)
    if not m:
        return url
    rest = url[m.end() :]
    host, sep, path = rest.partition("/")
    host = host.rpartition("@")[2]
    return f"{m['scheme']}://{host}{sep}{path.partition('?')[0]}"


def join(base: str, *parts: str) -> str:
    """`base/part/...` for a URL or a local path."""
    out = str(base).rstrip("/")
    for p in parts:
        p = str(p).strip("/")
        if p and p != ".":
            out = f"{out}/{p}"
    return out


def name(url: str) -> str:
    return str(url).rstrip("/").rsplit("/", 1)[-1]


def parent(url: str) -> str:
    return str(url).rstrip("/").rsplit("/", 1)[0]


def storage_options(url: str) -> dict[str, Any]:
    """Options for the URL's filesystem: for `s3://`, the endpoint of an S3-compatible store
    (`SLIDEPRESS_S3_ENDPOINT`, else `AWS_ENDPOINT_URL`, which botocore also reads itself).
    Credentials are never passed: the store library finds them in its standard places."""
    if scheme(url) in ("s3", "s3a"):
        endpoint = os.environ.get(ENDPOINT_ENV) or os.environ.get("AWS_ENDPOINT_URL")
        return {"endpoint_url": endpoint} if endpoint else {}
    return {}


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path within it). A new filesystem when the credentials in the
    environment change (fsspec caches instances by their arguments only)."""
    try:
        import fsspec
    except ImportError:  # pragma: no cover - a dependency
        raise StorageError("reading URLs needs fsspec: pip install fsspec") from None
    creds = [os.environ.get(k, "") for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                             "AWS_SESSION_TOKEN", "AWS_PROFILE")]  # fmt: skip
    tag = hashlib.sha256("\0".join(creds).encode()).hexdigest()[:16]
    options = storage_options(url)
    try:
        cls = fsspec.get_filesystem_class(scheme(url))
    except (ImportError, ValueError) as e:
        hint = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
        pkg = hint.get(scheme(url))
        extra = f": pip install {pkg}" if pkg else f" ({e})"
        raise StorageError(f"{public(url)}: no filesystem for {scheme(url)}://{extra}") from None
    key = (cls, tag, json.dumps(options, sort_keys=True))
    fs = _FILESYSTEMS.get(key)
    if fs is None:
        with errors(url, "reach"):
            fs = cls(skip_instance_cache=True, **options)
        _FILESYSTEMS[key] = fs
    return fs, cls._strip_protocol(url)


_FILESYSTEMS: dict[tuple, Any] = {}


@contextlib.contextmanager
def errors(url: str, action: str = "read") -> Iterator[None]:
    """Store failures -> StorageError: one line naming the (public) URL and what to check.
    The library's own message is not passed on (it may quote a key id or a signed URL)."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as e:
        text = str(e).lower()
        if "bucket" in text and ("not exist" in text or "nosuchbucket" in text):
            raise StorageError(f"{public(url)}: no such bucket") from None
        raise StorageError(f"{public(url)}: no such object or folder") from None
    except PermissionError:
        why = "write" if action in ("write", "upload") else action
        raise StorageError(
            f"{public(url)}: access denied to {why} (check the credentials in the environment "
            "or the AWS config files, and the bucket's policy)"
        ) from None
    except Exception as e:
        kind = type(e).__name__
        if kind in ("NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError"):
            raise StorageError(
                f"{public(url)}: no credentials found (set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws)"
            ) from None
        if kind in ("EndpointConnectionError", "ClientConnectorError", "ConnectionError",
                    "ConnectTimeoutError", "ClientOSError", "ServerDisconnectedError"):  # fmt: skip
            raise StorageError(
                f"{public(url)}: cannot reach the store (check {ENDPOINT_ENV} / "
                "AWS_ENDPOINT_URL and the network)"
            ) from None
        code = getattr(e, "code", None) or getattr(e, "status", None)
        if kind in ("ClientError", "ClientResponseError", "HTTPError") or isinstance(e, OSError):
            detail = f" ({kind}{f' {code}' if code else ''})"
            raise StorageError(f"{public(url)}: cannot {action}{detail}") from None
        raise


# -- reading -----------------------------------------------------------------------------

_fetched = [0]  # bytes read from stores by this process (benchmarks: fetched vs object size)


def fetched_bytes() -> int:
    """Bytes this process has read from stores so far (staging, ranges, hashing)."""
    return _fetched[0]


def count_fetched(n: int) -> None:
    _fetched[0] += int(n)


# ranges closer than this are fetched as one request (the gap's bytes are cheaper than a
# request: a GET costs as much as ~4 KB of internet egress, and the tiles of a row are
# usually stored one after the other); a merged request stays below MERGE_MAX_BYTES
MERGE_GAP_BYTES = 64 << 10
MERGE_MAX_BYTES = 16 << 20


def read_ranges(url: str, ranges: list[tuple[int, int]]) -> list[bytes]:
    """The bytes of each (offset, length) of an object, fetched concurrently (fsspec's async
    stores run the requests at once); neighbouring ranges share one request
    (`fsspec.utils.merge_offset_ranges`, gaps up to MERGE_GAP_BYTES)."""
    if not ranges:
        return []
    from fsspec.utils import merge_offset_ranges

    fs, path = filesystem(url)
    _, starts, ends = merge_offset_ranges(
        [path] * len(ranges), [o for o, _ in ranges], [o + n for o, n in ranges],
        max_gap=MERGE_GAP_BYTES, max_block=MERGE_MAX_BYTES,
    )  # fmt: skip
    with errors(url):
        blocks = fs.cat_ranges([path] * len(starts), starts, ends)
    for b in blocks:
        if isinstance(b, BaseException):
            with errors(url):
                raise b
    _fetched[0] += sum(len(b) for b in blocks)
    out = []
    for o, n in ranges:  # each range from a merged block that covers it (starts are sorted)
        i = bisect.bisect_right(starts, o) - 1
        while ends[i] < o + n:  # overlapping blocks (max_block reached): an earlier one
            i -= 1
        out.append(bytes(blocks[i][o - starts[i] : o - starts[i] + n]))
    return out


def info(url: str) -> dict[str, Any]:
    """The object's listing record (size, ETag, checksums where the store gives them);
    StorageError when it is missing."""
    fs, path = filesystem(url)
    with errors(url):
        return fs.info(path)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    with errors(url):
        return bool(fs.exists(path))


def isdir(url: str) -> bool:
    fs, path = filesystem(url)
    with errors(url):
        return bool(fs.isdir(path))


def listing(url: str, recursive: bool = False) -> list[str]:
    """URLs of the files under a prefix (sorted); recursive: all depths."""
    fs, path = filesystem(url)
    proto = scheme(url)
    with errors(url, "list"):
        found = fs.find(path) if recursive else fs.ls(path, detail=False)
        files = [p for p in found if recursive or not fs.isdir(p)]
    return sorted(f"{proto}://{p.lstrip('/')}" if proto not in READ_ONLY else p for p in files)


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    with errors(url):
        return fs.cat_file(path)


def open_read(url: str, block_size: int = 1 << 20) -> Any:
    """A seekable binary file object reading ranges on demand (nothing fetched up front;
    each request at least `block_size` bytes, read ahead)."""
    fs, path = filesystem(url)
    with errors(url):
        return fs.open(path, "rb", block_size=block_size, cache_type="readahead")


def version(record: dict[str, Any]) -> str:
    """What changes when the object is replaced: its ETag, else size + modification time."""
    etag = record.get("ETag") or record.get("etag") or record.get("md5Hash")
    if etag:
        return str(etag).strip('"')
    return f"{record.get('size')}-{record.get('LastModified') or record.get('mtime') or ''}"


def sha256_of(url: str) -> str:
    """The object's SHA-256 (the content key of a slide): the store's full-object
    `ChecksumSHA256` when it reports one (S3, uploaded with that checksum), else streamed
    from the object; remembered in the cache by URL and version, so a re-run does not
    fetch the object again to hash it."""
    import base64

    rec = info(url)
    if scheme(url) in ("s3", "s3a") and "ChecksumSHA256" not in rec:
        fs, path = filesystem(url)
        bucket, _, key = path.partition("/")
        with contextlib.suppress(Exception):  # a store without checksums: hashed below
            head = fs.call_s3("head_object", Bucket=bucket, Key=key, ChecksumMode="ENABLED")
            rec = {**rec, **{k: v for k, v in head.items() if k.startswith("Checksum")}}
    checksum = rec.get("ChecksumSHA256")
    if checksum and rec.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT" and "-" not in checksum:
        return base64.b64decode(checksum).hex()
    memo = entry(url, rec) / "sha256"
    if memo.is_file():
        return memo.read_text().strip()
    h = hashlib.sha256()
    with open_read(url) as f, errors(url):
        while block := f.read(8 << 20):
            _fetched[0] += len(block)
            h.update(block)
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(h.hexdigest())
    return h.hexdigest()


# -- the staging cache -------------------------------------------------------------------


def cache_root() -> Path:
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "slidepress"


def entry(url: str, rec: dict[str, Any]) -> Path:
    """The cache folder of one version of an object (a staged copy, its hash)."""
    key = hashlib.sha256(f"{public(url)}\0{version(rec)}".encode()).hexdigest()[:32]
    return cache_root() / "staged" / key


def origin(path: str | Path) -> str | None:
    """The URL a staged file or folder was copied from (None: not a staged path)."""
    p = Path(path)
    for folder in (p.parent, p.parent.parent):
        src = folder / _SOURCE
        if src.is_file():
            try:
                return json.loads(src.read_text())["url"]
            except (OSError, ValueError, KeyError):
                return None
    return None


def _cache_limit() -> int:
    try:
        gb = float(os.environ.get(CACHE_GB_ENV, DEFAULT_CACHE_GB))
    except ValueError:
        raise StorageError(f"{CACHE_GB_ENV} must be a number of GB") from None
    return int(gb * 1e9)


def evict(need: int) -> None:
    """Make room for `need` bytes under the bound: least recently used entries go first.
    An entry too large for the bound is refused, naming the setting."""
    limit = _cache_limit()
    if need > limit:
        raise StorageError(
            f"staging needs {need / 1e9:.2f} GB, more than the cache bound "
            f"{CACHE_GB_ENV}={limit / 1e9:g}; raise it or set {CACHE_ENV} to a larger disk"
        )
    base = cache_root() / "staged"
    entries = []
    for e in base.glob("*") if base.is_dir() else ():
        src = e / _SOURCE
        if src.is_file():
            size = sum(f.stat().st_blocks * 512 for f in e.rglob("*") if f.is_file())  # on disk
            entries.append((src.stat().st_atime, size, e))
    total = sum(s for _, s, _ in entries)
    for _, size, e in sorted(entries):
        if total + need <= limit:
            break
        shutil.rmtree(e, ignore_errors=True)
        total -= size


def stage(url: str, recursive: bool = False) -> Path:
    """A local copy of the object at `url` (kept under its own name in the cache), fetched
    once per version of the object (and said so on the `slidepress.remote` logger); a
    prefix: its files (`stage_tree`)."""
    rec = info(url)
    if rec.get("type") == "directory":
        return stage_tree(url, recursive)
    folder = entry(url, rec)
    target = folder / name(url)
    if (folder / _SOURCE).is_file() and target.is_file() and not (folder / SPARSE).exists():
        os.utime(folder / _SOURCE)  # recently used
        return target
    size = int(rec.get("size") or 0)
    evict(size)
    log.info("staging %s (%.1f MB) to the local cache %s", public(url), size / 1e6, cache_root())
    fs, path = filesystem(url)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with errors(url):
            fs.get_file(path, str(tmp))
        _fetched[0] += size
        os.replace(tmp, target)
        (folder / SPARSE).unlink(missing_ok=True)  # a whole copy replaces a sparse one
    finally:
        tmp.unlink(missing_ok=True)
    write_source(folder, url, rec)
    return target


def stage_tree(url: str, recursive: bool = False) -> Path:
    """A local copy of the files under a prefix: directly under it (a DICOM WSI folder), or
    at every depth (a zarr grid)."""
    base = url.rstrip("/")
    files = listing(base, recursive=recursive)
    if not files:
        raise StorageError(f"{public(url)}: no such object or folder")
    recs = [info(f) for f in files]
    versions = "".join(f"{f}\0{version(r)}\0" for f, r in zip(files, recs, strict=True))
    fingerprint = {
        "size": sum(int(r.get("size") or 0) for r in recs),
        "ETag": hashlib.sha256(versions.encode()).hexdigest(),
    }
    folder = entry(url, fingerprint)
    target = folder / name(url)
    if (folder / _SOURCE).is_file() and target.is_dir():
        os.utime(folder / _SOURCE)
        return target
    evict(fingerprint["size"])
    log.info("staging %s (%d files, %.1f MB) to the local cache %s", public(url), len(files),
             fingerprint["size"] / 1e6, cache_root())  # fmt: skip
    fs, _ = filesystem(url)
    tmp = folder / f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        for f in files:
            with errors(f):
                dest = tmp / f[len(base) :].strip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(filesystem(f)[1], str(dest))
        _fetched[0] += fingerprint["size"]
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_source(folder, url, fingerprint)
    return target


SPARSE = "sparse"  # in a cache entry: its file holds only the structure bytes (slide/ranged.py)


def write_source(folder: Path, url: str, rec: dict[str, Any]) -> None:
    """Mark a cache entry complete: where it came from (`origin`) and which version."""
    doc = {"url": public(url), "version": version(rec), "size": rec.get("size"),
           "staged": time.time()}  # fmt: skip
    tmp = folder / f".{_SOURCE}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, folder / _SOURCE)


def is_sparse(path: str | Path) -> bool:
    """Whether a staged file is a sparse copy (structure only: pixels are read by ranges)."""
    p = Path(path)
    return (p.parent / SPARSE).is_file() and (p.parent / _SOURCE).is_file()


def localize(value: str | Path, recursive: bool = False) -> Path:
    """A local path for a path, a `file://` URL or a URL (staged; a prefix with its files at
    every depth when `recursive`, e.g. a zarr grid)."""
    return stage(str(value), recursive) if is_url(value) else local(value)


# -- writing -----------------------------------------------------------------------------


def check_writable(url: str, folder: bool = False) -> None:
    """Refuse, before any work, an output URL that cannot be written: a read-only protocol,
    a missing bucket, denied writes. Probed as on disk: a small object written beside the
    output (in it, for a folder) and removed again."""
    if scheme(url) in READ_ONLY:
        raise StorageError(f"{public(url)}: {scheme(url)}:// is read-only; write to s3://, "
                           "gs://, az:// or a local path")  # fmt: skip
    fs, path = filesystem(url)
    bucket = path.split("/", 1)[0]
    with errors(url, "write"):
        if scheme(url) in ("s3", "s3a", "gs", "gcs") and not fs.exists(bucket):
            raise StorageError(f"{public(url)}: no such bucket")
        where = path.rstrip("/") if folder else path.rstrip("/").rsplit("/", 1)[0]
        probe = f"{where}/.slidepress-probe-{uuid.uuid4().hex[:12]}"
        fs.pipe_file(probe, b"")
        with contextlib.suppress(Exception):  # a store that lets us write but not delete
            fs.rm_file(probe)


@contextlib.contextmanager
def work_folder() -> Iterator[Path]:
    """A private local folder where outputs for the store are written first (removed after)."""
    base = cache_root() / "work"
    base.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().replace("~", "_")
    for old in base.iterdir():  # left by a killed run (a Dask worker) of this host
        pid, _, rest = old.name.partition("~")
        if pid.isdigit() and rest.partition("~")[0] == host and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}~{host}~", dir=base))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def download(url: str, target: Path) -> bool:
    """Copy an existing output (a file, or a folder such as a zarr grid) to `target`; False
    when there is none."""
    fs, path = filesystem(url)
    with errors(url):
        if not fs.exists(path):
            return False
        if fs.isdir(path):
            fs.get(path, str(target), recursive=True)
            _fetched[0] += sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
        else:
            fs.get_file(path, str(target))
            _fetched[0] += target.stat().st_size
    return True


def upload(source: Path, url: str) -> None:
    """Publish a finished local output at `url`, atomically per object: a file is one PUT or
    a multipart upload completed only when whole (S3; GCS and Azure commit at the end too);
    where the filesystem writes in place (local, other protocols) it goes to a temporary
    name first and is moved. A folder's files go one by one, its root metadata last."""
    if scheme(url) in READ_ONLY:
        raise StorageError(f"{public(url)}: {scheme(url)}:// is read-only")
    if not is_url(url):  # a local destination: a temporary sibling, then a rename
        dest = local(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            if source.is_dir():
                shutil.copytree(source, tmp)
                if dest.is_dir():
                    shutil.rmtree(dest)
            else:
                shutil.copyfile(source, tmp)
            os.replace(tmp, dest)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        return
    if source.is_dir():
        files = sorted(f for f in source.rglob("*") if f.is_file())
        root_meta = [f for f in files if f.parent == source and f.name in ("zarr.json", ".zgroup",
                                                                          ".zattrs")]  # fmt: skip
        for f in [f for f in files if f not in root_meta] + root_meta:
            _put(f, join(url, f.relative_to(source).as_posix()))
        return
    _put(source, url)


def _put(source: Path, url: str) -> None:
    fs, path = filesystem(url)
    with errors(url, "write"):
        if scheme(url) in ("s3", "s3a"):
            fs.put_file(str(source), path, chunksize=UPLOAD_PART_BYTES)
        elif scheme(url) in ("gs", "gcs", "az", "abfs", "abfss", "adl"):
            fs.put_file(str(source), path)
        else:  # in-place writers: a temporary name, then a move
            tmp = f"{path}.partial-{uuid.uuid4().hex[:8]}"
            fs.put_file(str(source), tmp)
            fs.mv(tmp, path)


def size(url: str) -> int:
    """Bytes of an object, or of all objects under a prefix."""
    fs, path = filesystem(url)
    with errors(url):
        if fs.isdir(path):
            return int(sum(fs.du(path, total=False).values()))
        return int(fs.size(path) or 0)
