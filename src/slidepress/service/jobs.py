"""What a user may ask for, checked before a job is accepted (422 otherwise), and turned into
the pipeline batch runner's plain job dict that a worker process runs.

Only registered encoders are offered: loader specs (`torchscript:PATH`, `timm:...`, `nic:DIR`)
would let a request load a file from the server's disk, and loading a pickle runs code.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from ..codecs import CODECS
from ..errors import SlidepressError
from ..jobs.options import (
    COMPARE,
    COMPRESS,
    ENCODE,
    EXPORT,
    JOB_SPECS,
    MPP_OVERRIDE,
    SERVICE,
    JobSpec,
    Option,
)

MAX_SLIDES = 100


def request_field(option: Option) -> tuple[Any, Any]:
    """(type, Field) of one spec option in a request model: its default, range, choices and
    help are the CLI's, so the OpenAPI schema shows them."""
    kind: Any = Literal[option.choices] if option.choices else option.type
    if option.optional:
        kind = kind | None
    low = {"gt" if option.min_exclusive else "ge": option.min} if option.min is not None else {}
    return kind, Field(
        option.default, description=option.describe(), le=option.max,
        multiple_of=option.multiple_of, **low,
    )  # fmt: skip


ID = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]


class _JobBase(BaseModel):
    """The job's inputs: uploads and/or results (a slidepress container a compress job made,
    used again without uploading it: encode it, or transcode it with another codec)."""

    model_config = ConfigDict(extra="forbid")
    uploads: list[ID] = Field(
        default_factory=list, max_length=MAX_SLIDES, description="upload ids, one slide each"
    )
    results: list[ID] = Field(
        default_factory=list, max_length=MAX_SLIDES,
        description="result ids of containers (role 'container', a compress job's .spz), one "
        "slide each: the input of this job without uploading it again",
    )  # fmt: skip

    @model_validator(mode="after")
    def _some_input(self) -> Any:
        n = len(self.uploads) + len(self.results)
        if n == 0:
            raise ValueError("give at least one input: uploads (upload ids) or results "
                             "(result ids of containers)")  # fmt: skip
        if n > MAX_SLIDES:
            raise ValueError(f"at most {MAX_SLIDES} slides per job (uploads + results)")
        return self


def ready_codecs() -> list[str]:
    """Codecs usable without parameters on this server (not ae-kl/ae-dc without weights)."""
    return [n for n in CODECS.names() if CODECS.get(n).ready()]


def offered_names(option: Option) -> list[str]:
    """What a request may name: registered encoders only (a loader spec would load a file from
    the server's disk), codecs usable without parameters on this server."""
    return ready_codecs() if option.registry is CODECS else option.names()


def _known(option: Option) -> Any:
    def check(cls: type, v: Any) -> Any:
        names = offered_names(option)
        if v not in names:
            raise ValueError(f"unknown {option.label} {v!r}; choose from {', '.join(names)}")
        return v

    return field_validator(option.name)(check)


def request_model(spec: JobSpec, base: type[BaseModel], mpp: Option | None = MPP_OVERRIDE
                  ) -> type[BaseModel]:  # fmt: skip
    """The pydantic request model of a job kind: its service options, by the spec. `mpp`:
    the slides' resolution override (None: the job takes none)."""
    offered = spec.for_target(SERVICE)
    fields: dict[str, Any] = {"kind": (Literal[spec.kind], ...)}
    if mpp is not None:
        fields["mpp_override"] = request_field(mpp)  # the slides', for all of them
    fields.update({o.name: request_field(o) for o in offered})
    known = {f"_known_{o.name}": _known(o) for o in offered if o.registry is not None}
    name = f"{spec.kind.capitalize()}Request"
    return create_model(name, __base__=base, __validators__=known, **fields)


class _CompressBase(_JobBase):
    @model_validator(mode="after")
    def _quality_in_range(self) -> Any:
        codec, quality = self.codec, self.quality  # fields of the generated model
        lo, hi = CODECS.get(codec).quality_range
        if quality is not None and not lo <= quality <= hi:
            raise ValueError(f"{codec}: quality {quality:g} outside {lo:g}-{hi:g}")
        return self


class _CompareBase(_JobBase):
    """The compressed slides are the inputs (results: containers; uploads: containers or any
    slide); each one's original is an upload in `originals`, or else what the service
    recorded: the upload (or container) the compress job that made the result was run on."""

    originals: list[ID] = Field(
        default_factory=list, max_length=MAX_SLIDES,
        description="upload ids of the originals, one per input in order (uploads, then "
        "results); empty: each result's own source, as its compress job recorded it",
    )  # fmt: skip

    @model_validator(mode="after")
    def _one_original_each(self) -> Any:
        n = len(self.uploads) + len(self.results)
        if self.originals and len(self.originals) != n:
            raise ValueError(f"originals: give one per input ({n}), or none (each result's "
                             f"own source), not {len(self.originals)}")  # fmt: skip
        if self.uploads and not self.originals:
            raise ValueError("originals: an uploaded input has no recorded source; give the "
                             "originals' upload ids, one per input")  # fmt: skip
        return self


EncodeRequest = request_model(ENCODE, _JobBase)
CompressRequest = request_model(COMPRESS, _CompressBase)
# the original's level-0 um/px (a container records its own)
CompareRequest = request_model(COMPARE, _CompareBase, MPP_OVERRIDE)
ExportRequest = request_model(EXPORT, _JobBase, None)  # a container records its resolution


JobRequest = Annotated[
    EncodeRequest | CompressRequest | CompareRequest | ExportRequest, Field(discriminator="kind")
]


def batch_job(req: BaseModel, threads: int, **extra: Any) -> dict[str, Any]:
    """The pipeline's job dict (pipeline.batch.job_from_dict) for a request, by the same spec
    as the CLI's, checked by building it once here: a bad combination is a 422 now, not a
    failed job later. `threads`: the server's threads per slide (the jobs' --threads, where
    the kind has them); `extra`: job-level entries (compare: `originals`)."""
    from ..pipeline.batch import job_from_dict

    spec = JOB_SPECS[req.kind]
    values = {o.name: getattr(req, o.name) for o in spec.for_target(SERVICE)}
    if any(o.name == "threads" for o in spec):
        values["threads"] = threads
    d = spec.job_dict(values, **extra)
    try:
        job_from_dict(d)
    except SlidepressError as e:
        raise ValueError(str(e)) from None
    return d


def options() -> dict[str, Any]:
    """What the web page offers: encoders and codecs with their summaries and ranges, grid
    formats (the page takes defaults, ranges and help of every option from /openapi.json)."""
    from ..encoders import ENCODERS

    codecs = []
    for name in ready_codecs():
        cls = CODECS.get(name)
        codecs.append({
            "name": name, "summary": CODECS.entry(name).summary,
            "quality_range": list(cls.quality_range), "default_quality": cls.default_quality,
        })  # fmt: skip
    return {
        "encoders": [{"name": n, "summary": ENCODERS.entry(n).summary} for n in ENCODERS.names()],
        "codecs": codecs,
        "formats": ENCODE["format"].names(),
    }
