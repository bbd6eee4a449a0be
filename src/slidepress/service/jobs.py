"""What a user may ask for, checked before a job is accepted (422 otherwise), and turned into
the pipeline batch runner's plain job dict that a worker process runs.

Only registered encoders are offered: loader specs (`torchscript:PATH`, `timm:...`, `nic:DIR`)
would let a request load a file from the server's disk, and loading a pickle runs code.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import SlidepressError

MAX_SLIDES = 100


class _JobBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    uploads: list[Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]] = Field(
        min_length=1, max_length=MAX_SLIDES, description="upload ids, one slide each"
    )
    mpp_override: float | None = Field(
        None, gt=0, le=1000, description="level-0 um/px for slides whose file lacks it"
    )


class EncodeRequest(_JobBase):
    kind: Literal["encode"]
    encoder: str = Field("mean-rgb", description="a registered encoder (GET /api/options)")
    patch_size: int | None = Field(None, ge=8, le=4096)
    stride: int | None = Field(None, ge=1, le=4096)
    mpp: float | None = Field(None, gt=0, le=100, description="target um/px")
    tissue_threshold: float = Field(0.5, ge=0, le=1)
    augment: Literal["none", "dihedral"] = "none"
    format: Literal["zarr", "npz", "mha", "h5"] = "npz"
    float16: bool = False

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, v: str) -> str:
        from ..encoders import ENCODERS

        if v not in ENCODERS.names():
            raise ValueError(f"unknown encoder {v!r}; choose from {', '.join(ENCODERS.names())}")
        return v


class CompressRequest(_JobBase):
    kind: Literal["compress"]
    codec: str = Field("jpegxl", description="a registered codec (GET /api/options)")
    quality: float | None = Field(None, description="the codec's quality knob; default its own")
    tile: int = Field(256, ge=16, le=4096, multiple_of=16)
    background: Literal["skip", "constant", "keep"] = "skip"
    ms_ssim: bool = False

    @field_validator("codec")
    @classmethod
    def _known_codec(cls, v: str) -> str:

        ready = ready_codecs()
        if v not in ready:
            raise ValueError(f"unknown codec {v!r}; choose from {', '.join(ready)}")
        return v

    @model_validator(mode="after")
    def _quality_in_range(self) -> CompressRequest:
        from ..codecs import CODECS

        lo, hi = CODECS.get(self.codec).quality_range
        if self.quality is not None and not lo <= self.quality <= hi:
            raise ValueError(f"{self.codec}: quality {self.quality:g} outside {lo:g}-{hi:g}")
        return self


def ready_codecs() -> list[str]:
    """Codecs usable without parameters on this server (not ae-kl/ae-dc without weights)."""
    from ..codecs import CODECS

    return [n for n in CODECS.names() if CODECS.get(n).ready()]


JobRequest = Annotated[EncodeRequest | CompressRequest, Field(discriminator="kind")]


def batch_job(req: EncodeRequest | CompressRequest, threads: int) -> dict[str, Any]:
    """The pipeline's job dict (pipeline.batch.job_from_dict) for a request, checked by
    building it once here: a bad combination is a 422 now, not a failed job later."""
    from ..pipeline.batch import job_from_dict

    if isinstance(req, EncodeRequest):
        opts = {
            "patch_size": req.patch_size, "stride": req.stride, "mpp": req.mpp,
            "tissue_threshold": req.tissue_threshold, "augment": req.augment,
            "fmt": req.format, "float16": req.float16, "workers": threads,
        }  # fmt: skip
        d: dict[str, Any] = {"kind": "encode", "encoder": req.encoder, "device": None,
                             "options": opts}  # fmt: skip
    else:
        opts = {
            "codec": req.codec,
            "quality": req.quality,
            "tile": req.tile,
            "background": req.background,
            "ms_ssim": req.ms_ssim,
            "workers": threads,
        }
        d = {"kind": "compress", "options": opts, "output": None}
    try:
        job_from_dict(d)
    except SlidepressError as e:
        raise ValueError(str(e)) from None
    return d


def options() -> dict[str, Any]:
    """What the web page offers: encoders and codecs with their summaries and ranges."""
    from ..codecs import CODECS
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
        "formats": ["npz", "mha", "zarr", "h5"],
    }
