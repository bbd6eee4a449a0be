"""Response models of every route, so /docs documents what each answers (and a field that
is not declared here never leaks out by accident)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: str = Field(description="'ok' when the database answers")
    version: str
    database: str = Field(description="the database's dialect: sqlite or postgresql")
    workers: int = Field(description="worker processes alive")
    queued: int = Field(description="jobs waiting for a worker")
    settings: dict[str, Any] | None = Field(
        None, description="the effective settings and where each came from (admins only)"
    )


class Me(BaseModel):
    user: str
    max_upload_bytes: int
    max_active_jobs: int
    quota_bytes: int | None = Field(description="storage for uploads + results; None: none")
    used_bytes: int = Field(description="bytes of this user's uploads and results")
    admin: bool = False


class CodecInfo(BaseModel):
    name: str
    summary: str
    quality_range: list[float]
    default_quality: float | None


class NamedInfo(BaseModel):
    name: str
    summary: str


class Options(BaseModel):
    encoders: list[NamedInfo]
    codecs: list[CodecInfo]
    formats: list[str]


class UploadOut(BaseModel):
    id: str
    filename: str = Field(description="the file's name as sent, made safe: its label")
    kind: str = Field(
        description="tiff, dicom, image or container (a slidepress .spz; sniffed from the content)"
    )
    bytes: int
    sha256: str
    created_at: float


class JobOut(BaseModel):
    id: str
    kind: str
    state: str = Field(description="queued, running, succeeded, failed or cancelled")
    progress: float = Field(description="0-1 of the current run")
    message: str
    error: str
    params: dict[str, Any] = Field(description="the request as accepted")
    uploads: list[str]
    results: list[str] = Field(
        default_factory=list, description="results (containers) used as inputs, after the uploads"
    )
    originals: list[dict[str, str]] = Field(
        default_factory=list,
        description="compare jobs: each input's original, in input order (upload or result id, "
        "and its label)",
    )
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    outcomes: list[dict[str, Any]] = Field(description="one report row per slide")
    summary: dict[str, Any]


class ResultOut(BaseModel):
    id: str
    job: str
    name: str
    path: str = Field(description="where it sits in the job's zip")
    role: str = Field(
        description="grid, container, preview or report; compare jobs: cosine (per-cell "
        "cosine, .npy aligned with the grid), preview (heat map), summary (compare.json: "
        "figures and the grid's geometry); export jobs: export (a TIFF, or a DICOM folder "
        "as a zip)"
    )
    slide: str
    bytes: int
    url: str = Field(description="GET it to download (with the token)")
    expires_at: float | None = Field(None, description="when retention deletes it")


class UsageRow(BaseModel):
    user: str
    uploads: int
    upload_bytes: int
    results: int
    result_bytes: int
