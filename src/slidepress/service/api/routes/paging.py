"""Pagination of listings: `limit` and `offset` query parameters, the total in the
X-Total-Count header; without `limit` a listing is whole (what the web page reads)."""

# no `from __future__ import annotations`: FastAPI reads the dependency alias at runtime

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

MAX_LIMIT = 1000


@dataclass
class Paging:
    limit: int | None
    offset: int


def _paging(
    limit: Annotated[int | None, Query(ge=1, le=MAX_LIMIT, description="page size")] = None,
    offset: Annotated[int, Query(ge=0, description="rows to skip")] = 0,
) -> Paging:
    return Paging(limit, offset)


Page = Annotated[Paging, Depends(_paging)]


def paginate(s: Session, base: Any, ordered: Any, page: Paging, response: Response) -> list:
    """The rows of `ordered` in the page; `base` (unordered) is counted for X-Total-Count."""
    total = s.scalar(select(func.count()).select_from(base.subquery()))
    response.headers["X-Total-Count"] = str(total)
    q = ordered.offset(page.offset)
    if page.limit is not None:
        q = q.limit(page.limit)
    return list(s.scalars(q).all())
