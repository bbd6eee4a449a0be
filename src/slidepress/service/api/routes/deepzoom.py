"""DeepZoom tiles of an upload (the slide as sent) and of a compress result (its container),
for the page's side-by-side viewer (`static/viewer.js`); any DeepZoom viewer reads them too.

Owner-only like every other route (another user's id is a 404); the page fetches the tiles
with its Bearer header, so no token ever sits in a URL. Tiles are private but stable for a
given id (an upload or a result never changes): `Cache-Control: private, max-age=3600`.
Plain `def` routes: FastAPI runs them in its thread pool, and a slide handle's lock keeps one
reader to one thread at a time.

With an object store (`--storage`) the slide is read from a copy staged into the bounded local
cache (`Storage.local`), once per process: uploads and results never change, so a staged
copy that is still there serves every later tile without asking the store again.
"""

# no `from __future__ import annotations`: FastAPI reads the dependency aliases at runtime

from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response

from ...db import Result, Upload
from ...deepzoom import Slides, TileNotFound
from ...storage import storage
from ..deps import ID, Config, Sessions, User, own

router = APIRouter(prefix="/api", tags=["viewer"])
slides = Slides()  # open slide handles of this process (LRU)
staged: dict[tuple[str, str], FilePath] = {}  # (store, key) -> local path, of this process
CACHE = "private, max-age=3600"
DZI = {200: {"content": {"application/xml": {}}, "description": "the DZI descriptor"}}
TILE = {200: {"content": {"image/jpeg": {}}, "description": "one tile"},
        404: {"description": "unknown id, not a container, or outside the pyramid"}}  # fmt: skip
Num = Annotated[int, Path(ge=0, le=1_000_000)]


def _upload_path(cfg, make, ident, upload_id: str) -> FilePath:
    with make() as s:
        u = own(s, Upload, upload_id, ident, "upload")
    return _local(cfg, u.path, f"upload {upload_id}")


def _result_path(cfg, make, ident, result_id: str) -> FilePath:
    with make() as s:
        r = own(s, Result, result_id, ident, "result")
    if r.role != "container" or not r.path.endswith(".spz"):
        raise HTTPException(404, f"result {result_id} is a {r.role}, not a slide container: "
                                 "only a compress job's .spz results have tiles")  # fmt: skip
    return _local(cfg, r.path, f"result {result_id}")


def _local(cfg, key: str, what: str) -> FilePath:
    """A local path of the upload or result `key`: in the data dir, or staged from the store."""
    st = storage(cfg)
    known = staged.get((st.describe(), key))
    if known is not None and known.exists():
        return known
    if not st.exists(key):
        raise HTTPException(410, f"{what} is gone from the server's storage")
    path = st.local(key)
    if st.remote:
        staged[(st.describe(), key)] = path
    return path


def _open(path: FilePath):
    from ....errors import SlidepressError

    try:
        return slides.get(path)
    except SlidepressError as e:
        raise HTTPException(422, f"cannot show this slide: {e}") from None


def _dzi(path: FilePath) -> Response:
    return Response(_open(path).dzi(), media_type="application/xml",
                    headers={"Cache-Control": CACHE})  # fmt: skip


def _tile(path: FilePath, level: int, col: int, row: int) -> Response:
    from ....errors import SlidepressError

    _open(path)  # 422 for a slide that cannot be opened
    try:
        data = slides.jpeg(path, level, col, row)
    except TileNotFound as e:
        raise HTTPException(404, str(e)) from None
    except SlidepressError as e:
        raise HTTPException(422, f"cannot read this tile: {e}") from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": CACHE})


@router.get("/uploads/{upload_id}/deepzoom.dzi", response_class=Response, responses=DZI)
def upload_dzi(upload_id: ID, ident: User, cfg: Config, make: Sessions) -> Response:
    """The upload's DeepZoom descriptor: tile size 254, overlap 1, JPEG, level-0 size."""
    path = _upload_path(cfg, make, ident, upload_id)
    return _dzi(path)


@router.get("/uploads/{upload_id}/deepzoom_files/{level}/{col}_{row}.jpeg",
            response_class=Response, responses=TILE)  # fmt: skip
def upload_tile(upload_id: ID, level: Num, col: Num, row: Num, ident: User, cfg: Config,
                      make: Sessions) -> Response:  # fmt: skip
    """One DeepZoom tile of the upload (JPEG q75), read straight from the slide."""
    path = _upload_path(cfg, make, ident, upload_id)
    return _tile(path, level, col, row)


@router.get("/results/{result_id}/deepzoom.dzi", response_class=Response, responses=DZI)
def result_dzi(result_id: ID, ident: User, cfg: Config, make: Sessions) -> Response:
    """A compress result's DeepZoom descriptor (404 for results that are not containers)."""
    path = _result_path(cfg, make, ident, result_id)
    return _dzi(path)


@router.get("/results/{result_id}/deepzoom_files/{level}/{col}_{row}.jpeg",
            response_class=Response, responses=TILE)  # fmt: skip
def result_tile(result_id: ID, level: Num, col: Num, row: Num, ident: User, cfg: Config,
                      make: Sessions) -> Response:  # fmt: skip
    """One DeepZoom tile of the container, decoded from its coded tiles (JPEG q75)."""
    path = _result_path(cfg, make, ident, result_id)
    return _tile(path, level, col, row)
