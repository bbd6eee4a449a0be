"""Python client of the slidepress service: upload slides, submit jobs, wait, download, and
load the grids as numpy.

    from slidepress.client import Client
    c = Client("http://127.0.0.1:8000")            # token from SLIDEPRESS_TOKEN
    up = c.upload("slide.svs")
    job = c.submit("encode", [up["id"]], augment="dihedral", format="mha")
    c.wait(job["id"])
    grids = [c.load_grid(p) for p in c.download(job["id"], "out/", roles=["grid"])]

    cz = c.submit("compress", [up["id"]], codec="jpegxl", quality=90)
    spz = next(r for r in c.results(c.wait(cz["id"])["id"]) if r["role"] == "container")
    cmp = c.wait(c.compare(spz["id"])["id"])       # vs the upload it was made from
    exp = c.wait(c.export(spz["id"], format="dicom")["id"])
    c.download(exp["id"], "out/", roles=["export"])  # out/SLIDE.dicom/ (a folder)

The token never lives in code: pass it, or set SLIDEPRESS_TOKEN.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from .errors import OutputExistsError, SlidepressError, UsageError

CHUNK = 1 << 20
RESUMABLE_FROM = 256 << 20  # files this large go in resumable parts
PART = 64 << 20  # bytes per part of a resumable upload
FINAL = ("succeeded", "failed", "cancelled")
FOLDERS = (".zarr.zip", ".dicom.zip")  # results that are folders, sent as zips


class ServiceError(SlidepressError):
    """The service refused a request (status code and its message) or cannot be reached."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _detail(resp: httpx.Response) -> str:
    try:
        detail = resp.json().get("detail", resp.text)
    except ValueError:
        detail = resp.text
    if isinstance(detail, list):  # FastAPI validation errors
        detail = "; ".join(
            f"{'.'.join(str(x) for x in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail
        )
    return str(detail).strip() or resp.reason_phrase


def _file_chunks(path: Path, progress: Callable[[int, int], None] | None, start: int = 0,
                 length: int | None = None) -> Iterator[bytes]:  # fmt: skip
    """`length` bytes of `path` from `start` (default: to the end), reporting the bytes sent
    of the whole file."""
    total = path.stat().st_size
    left = total - start if length is None else length
    sent = start
    with open(path, "rb") as f:
        f.seek(start)
        while left > 0 and (chunk := f.read(min(CHUNK, left))):
            left -= len(chunk)
            sent += len(chunk)
            if progress:
                progress(sent, total)
            yield chunk


def _page(limit: int | None, offset: int) -> dict[str, int]:
    return ({"limit": limit} if limit else {}) | ({"offset": offset} if offset else {})


def _zip_folder(folder: Path) -> Path:
    """A DICOM folder travels as a zip of its files (stored, DICOM pixel data is coded)."""
    fd, name = tempfile.mkstemp(suffix=".zip", prefix="slidepress-dicom-")
    os.close(fd)
    with zipfile.ZipFile(name, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    return Path(name)


class Client:
    """One service, one token. Methods return the service's JSON (dicts)."""

    overwrite_hint = "overwrite=True"  # how a refusal to replace a file says to force it

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 300):
        url = url or os.environ.get("SLIDEPRESS_URL") or "http://127.0.0.1:8000"
        token = token or os.environ.get("SLIDEPRESS_TOKEN")
        if not token:
            raise UsageError("no API token: pass token=... or set SLIDEPRESS_TOKEN")
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, connect=10),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise ServiceError(f"cannot reach the service at {self.url}: {e}") from None
        if resp.status_code >= 400:
            raise ServiceError(f"{resp.status_code}: {_detail(resp)}", resp.status_code)
        return resp

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._request(method, path, **kw).json()

    # -- API ----------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._json("GET", "/api/health")

    def me(self) -> dict[str, Any]:
        return self._json("GET", "/api/me")

    def upload(
        self, path: str | Path, progress: Callable[[int, int], None] | None = None,
        resumable: bool | None = None, part_size: int = PART, retries: int = 5,
    ) -> dict[str, Any]:  # fmt: skip
        """Upload a slide file, or a DICOM folder (zipped on the fly), streamed in chunks.
        `resumable` (default: for files of RESUMABLE_FROM bytes or more) sends it in parts of
        `part_size`; a dropped connection resumes from the server's offset, up to `retries`
        times in a row."""
        path = Path(path)
        if not path.exists():
            raise UsageError(f"{path}: no such file or folder")
        body, name = path, path.name
        if path.is_dir():
            body, name = _zip_folder(path), path.name + ".zip"
        try:
            if resumable or (resumable is None and body.stat().st_size >= RESUMABLE_FROM):
                return self._upload_parts(body, name, progress, part_size, retries)
            return self._json(
                "POST", "/api/uploads", params={"filename": name},
                content=_file_chunks(body, progress),
                headers={"Content-Length": str(body.stat().st_size),
                         "Content-Type": "application/octet-stream"},
            )  # fmt: skip
        finally:
            if body is not path:
                body.unlink(missing_ok=True)

    def _upload_parts(self, body: Path, name: str, progress: Callable[[int, int], None] | None,
                      part_size: int, retries: int) -> dict[str, Any]:  # fmt: skip
        size = body.stat().st_size
        sess = self._json("POST", "/api/uploads/resumable", params={"filename": name,
                                                                    "size": size})  # fmt: skip
        where, offset, failures = f"/api/uploads/resumable/{sess['id']}", 0, 0
        while True:
            n = min(part_size, size - offset)
            try:
                resp = self._request(
                    "PUT", where, content=_file_chunks(body, progress, offset, n),
                    headers={"Content-Range": f"bytes {offset}-{offset + n - 1}/{size}",
                             "Content-Length": str(n),
                             "Content-Type": "application/octet-stream"},
                )  # fmt: skip
                failures = 0
                state = resp.json()
            except ServiceError as e:
                if e.status not in (None, 409) or failures >= retries:
                    raise
                failures += 1
                time.sleep(min(2**failures * 0.1, 5))
                state = self._resume_point(where, failures, retries)
            if state.get("upload"):
                return state["upload"]
            offset = state["offset"]

    def _resume_point(self, where: str, failures: int, retries: int) -> dict[str, Any]:
        """The session after a dropped part (the server may be back after a moment)."""
        while True:
            try:
                return self._json("GET", where)
            except ServiceError as e:
                if e.status is not None or failures >= retries:
                    raise
                failures += 1
                time.sleep(min(2**failures * 0.1, 5))

    def uploads(self, limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
        """The uploads, oldest first; `limit`/`offset` page them."""
        return self._json("GET", "/api/uploads", params=_page(limit, offset))

    def delete_upload(self, upload_id: str) -> None:
        self._request("DELETE", f"/api/uploads/{upload_id}")

    def submit(self, kind: str, uploads: Sequence[str] | str = (),
               results: Sequence[str] | str = (), **options: Any) -> dict[str, Any]:  # fmt: skip
        """Queue a job (`encode`, `compress`, `compare`, `export`) over uploads and/or
        `results` (ids of containers earlier compress jobs made: encoded, transcoded, compared
        or exported without uploading them again); options as in POST /api/jobs (see
        /docs)."""
        ids = [uploads] if isinstance(uploads, str) else list(uploads)
        done = [results] if isinstance(results, str) else list(results)
        body: dict[str, Any] = {"kind": kind, "uploads": ids, **options}
        if done:
            body["results"] = done
        return self._json("POST", "/api/jobs", json=body)

    def compare(self, results: Sequence[str] | str, originals: Sequence[str] | str = (),
                **options: Any) -> dict[str, Any]:  # fmt: skip
        """Queue a `compare` job: each container result's NIC grid against its original's
        (per-cell cosine, heat map, summary). `originals`: upload ids, one per result; empty:
        each result's own source, as its compress job recorded it. Options: encoder,
        tissue_threshold, mpp_override (the originals')."""
        if isinstance(originals, str):
            originals = [originals]
        extra = {"originals": list(originals)} if originals else {}
        return self.submit("compare", results=results, **extra, **options)

    def export(self, results: Sequence[str] | str, format: str = "tiff",
               **options: Any) -> dict[str, Any]:  # fmt: skip
        """Queue an `export` job: each container result as a pyramidal TIFF (`tiff`) or a
        DICOM WSI folder (`dicom`, downloaded as a folder), coded tiles copied where the
        format carries them. Options: quality (of tiles re-encoded as JPEG)."""
        return self.submit("export", results=results, format=format, **options)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/jobs/{job_id}")

    def jobs(self, state: str | None = None, limit: int | None = None,
             offset: int = 0) -> list[dict[str, Any]]:  # fmt: skip
        """The jobs, oldest first (only those in `state`); `limit`/`offset` page them."""
        params = _page(limit, offset) | ({"state": state} if state else {})
        return self._json("GET", "/api/jobs", params=params)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/api/jobs/{job_id}/cancel")

    def delete_job(self, job_id: str) -> None:
        self._request("DELETE", f"/api/jobs/{job_id}")

    def wait(
        self,
        job_id: str,
        timeout: float = 3600,
        progress: Callable[[dict[str, Any]], None] | None = None,
        poll: float = 0.25,
        max_poll: float = 5.0,
        check: bool = True,
    ) -> dict[str, Any]:
        """Poll until the job ends (backoff doubling from `poll` up to `max_poll` seconds).
        With `check`, a failed or cancelled job raises ServiceError with its message."""
        deadline = time.monotonic() + timeout
        delay = poll
        while True:
            job = self.job(job_id)
            if progress:
                progress(job)
            if job["state"] in FINAL:
                break
            if time.monotonic() + delay > deadline:
                raise ServiceError(f"job {job_id} still {job['state']} after {timeout:g} s")
            time.sleep(delay)
            delay = min(delay * 2, max_poll)
        if check and job["state"] != "succeeded":
            raise ServiceError(f"job {job_id} {job['state']}: {job['error'] or job['message']}")
        return job

    def results(self, job_id: str) -> list[dict[str, Any]]:
        return self._json("GET", f"/api/jobs/{job_id}/results")

    def _exists(self, dest: Path) -> OutputExistsError:
        e = OutputExistsError(f"{dest} exists; pass {self.overwrite_hint} to replace it")
        e.path = dest
        return e

    def _save(self, url: str, dest: Path, overwrite: bool) -> Path:
        if dest.exists() and not overwrite:
            raise self._exists(dest)
        tmp = dest.with_name(f".{dest.name}.partial-{uuid.uuid4().hex[:8]}")
        try:
            with self._http.stream("GET", url) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise ServiceError(f"{resp.status_code}: {_detail(resp)}", resp.status_code)
                with open(tmp, "wb") as f:
                    for chunk in resp.iter_bytes(CHUNK):
                        f.write(chunk)
            os.replace(tmp, dest)
        except httpx.TransportError as e:
            raise ServiceError(f"download from {self.url} failed: {e}") from None
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def download(
        self,
        job_id: str,
        dest: str | Path,
        roles: Iterable[str] | None = None,
        overwrite: bool = False,
    ) -> list[Path]:
        """Save a job's results into folder `dest`; a folder (a zarr grid, a DICOM export)
        is unpacked. `roles` picks some: grid, container, preview, report, cosine, summary,
        export."""
        from .store.atomic import check_output

        dest = check_output(dest, folder=True)  # not a file, not read-only: one line
        rows = self._finished_results(job_id)
        dest.mkdir(parents=True, exist_ok=True)
        wanted = set(roles) if roles else None
        paths = []
        for r in rows:
            if wanted and r["role"] not in wanted:
                continue
            rel = Path(r.get("path") or r["name"])
            if rel.is_absolute() or ".." in rel.parts:
                raise ServiceError(f"refusing a result path outside {dest}: {rel}")
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if r["name"].endswith(FOLDERS):
                folder = target.with_name(target.name[: -len(".zip")])
                if folder.exists() and not overwrite:
                    raise self._exists(folder)
                self._save(r["url"], target, overwrite=True)
                tmp = folder.with_name(f".{folder.name}.partial-{uuid.uuid4().hex[:8]}")
                with zipfile.ZipFile(target) as zf:
                    zf.extractall(tmp)  # our own zip, members under the grid's name
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(tmp / folder.name, folder)
                shutil.rmtree(tmp, ignore_errors=True)
                target.unlink()
                paths.append(folder)
            else:
                paths.append(self._save(r["url"], target, overwrite))
        return paths

    def download_zip(self, job_id: str, dest: str | Path, overwrite: bool = False) -> Path:
        """All of a job's results as one zip file."""
        from .store.atomic import check_output

        check_output(dest, overwrite=overwrite)
        self._finished_results(job_id)
        return self._save(f"/api/jobs/{job_id}/download", Path(dest), overwrite)

    def _finished_results(self, job_id: str) -> list[dict[str, Any]]:
        """The results of a job that succeeded; ServiceError for one that did not (nothing to
        download is an error, not an empty folder)."""
        job = self.job(job_id)
        if job["state"] != "succeeded":
            why = job["error"] or job["message"]
            raise ServiceError(f"job {job_id} is {job['state']}, nothing to download"
                               + (f": {why}" if why else ""))  # fmt: skip
        return self.results(job_id)

    # -- grids --------------------------------------------------------------------------------
    @staticmethod
    def load_grid(path: str | Path):  # -> EmbeddingGrid
        """Any grid file (.mha, .npz, .zarr, .h5) as numpy arrays with its metadata."""
        from .store import read_grid

        return read_grid(path)

    @staticmethod
    def mha_to_npz(path: str | Path, dest: str | Path | None = None) -> Path:
        """Convert a grid (e.g. the .mha the NIC web app delivered) to .npz next to it."""
        from .store import read_grid, write_grid

        path = Path(path)
        out = Path(dest) if dest else path.with_suffix(".npz")
        return write_grid(read_grid(path), out)
