"""One declarative spec per job kind: each option's name, type, default, range or registry,
help and environment variable, written once.

Everything a user meets is generated from it: the typer options of `encode` / `compress` /
`compare` and of `batch ... encode|compress` (cli/options.py), the service's pydantic request
models, and so its OpenAPI schema and the web page's form (service/jobs.py), and the batch
runner's plain job dict (`JobSpec.job_dict`, read back by `pipeline.batch.job_from_dict`).
Ranges come from `bounds.py` and the parts (`tiling.MPP_RANGE`), choices by name from the
registries. `COMPARE` and `EXPORT` are jobs over containers (what compression did to a
slide's grid; a container as TIFF or DICOM WSI).

Adding a job option is one `Option(...)` line below (plus its field in the pipeline's options
dataclass, `EncodeOptions` or `CompressOptions`, with the same default: tests/test_job_options.py
checks they agree).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..bounds import MAX_BATCH, MAX_PATCH, MAX_WORKERS
from ..codecs import CODECS
from ..encoders import ENCODERS
from ..errors import UsageError
from ..registry import Registry
from ..slide import READERS
from ..store.container import BACKGROUND_POLICIES
from ..store.formats import FORMATS
from ..tiling import MPP_RANGE

# Where an option is offered: the command line (`encode`, `compress`), `batch ... JOB` and
# the service's requests (which sets threads itself and never lets a request name a file).
CLI, BATCH, SERVICE = "cli", "batch", "service"
EVERYWHERE = frozenset({CLI, BATCH, SERVICE})
COMMAND_LINE = frozenset({CLI, BATCH})


@dataclass(frozen=True, eq=False)
class Option:
    """One option of a job (or of a slide, or of the service): what it is called, what it
    takes and what it means, for every front end at once."""

    name: str  # snake_case: request field, CLI flag --name-with-dashes, Python keyword
    type: type  # int, float, str or bool
    default: Any
    help: str  # one sentence; ranges and registry names are appended by `describe()`
    optional: bool = False  # None is a value ("the encoder's / codec's own")
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False  # min itself is refused (> rather than >=)
    multiple_of: int | None = None
    choices: tuple[str, ...] = ()  # a fixed set of words
    registry: Registry | None = None  # names chosen from a registry (READERS, CODECS ...)
    envvar: str | None = None  # the environment's value beats the default, a flag beats both
    flag: str | None = None  # the CLI spelling when it is not --name-with-dashes
    aliases: tuple[str, ...] = ()  # old CLI spellings: still accepted, hidden from --help
    metavar: str | None = None
    targets: frozenset[str] = EVERYWHERE
    key: str | None = None  # the pipeline's name for it where that differs (fmt, workers)

    @property
    def field(self) -> str:
        """The name in the pipeline's options (and so in the batch job dict)."""
        return self.key or self.name

    @property
    def label(self) -> str:
        """How messages name it: `batch size`, `threads`."""
        return self.name.replace("_", " ")

    def names(self) -> list[str]:
        """The values it may take by name (choices or registry names); empty: any."""
        return list(self.choices) or (self.registry.names() if self.registry else [])

    def range_text(self) -> str:
        """`1-64`, `0 or more`, `above 0`, with `, a multiple of 16`; empty: unbounded."""
        if self.min is None and self.max is None:
            return ""
        if self.max is None:
            text = f"above {self.min:g}" if self.min_exclusive else f"{self.min:g} or more"
        else:
            text = f"{self.min:g}-{self.max:g}"
        return f"{text}, a multiple of {self.multiple_of}" if self.multiple_of else text

    def describe(self) -> str:
        """The help text every front end shows: the sentence, then its range or names."""
        extra = []
        if self.range_text():
            extra.append(f"Range: {self.range_text()}.")
        if self.names():
            extra.append(f"One of: {', '.join(self.names())}.")
        return " ".join([self.help, *extra])

    def check(self, value: Any) -> None:
        """Range and choices (registry names are checked by the part that uses them: the
        command line also takes loader specs such as torchscript:PATH)."""
        if value is None:
            if self.optional:
                return
            raise UsageError(f"{self.label} needs a value")
        if self.choices and value not in self.choices:
            raise UsageError(
                f"{self.label} must be one of {', '.join(self.choices)}, got {value!r}"
            )
        if self.type in (int, float) and not isinstance(value, bool):
            v = float(value)
            low = self.min is not None and (v <= self.min if self.min_exclusive else v < self.min)
            high = self.max is not None and v > self.max
            odd = bool(self.multiple_of) and v % self.multiple_of != 0
            if not math.isfinite(v) or low or high or odd:
                within = "within " if self.max is not None else ""
                raise UsageError(f"{self.label} must be {within}{self.range_text()}, got {value:g}")


@dataclass(frozen=True, eq=False)
class JobSpec:
    """The options of one job kind, in the order --help shows them."""

    kind: str  # encode | compress | compare | export: the pipeline.batch job kind
    options: tuple[Option, ...]
    top_level: frozenset[str] = frozenset()  # names the job takes itself, not in its options

    def __iter__(self) -> Iterator[Option]:
        return iter(self.options)

    def __getitem__(self, name: str) -> Option:
        for o in self.options:
            if o.name == name:
                return o
        raise KeyError(name)

    def for_target(self, target: str) -> list[Option]:
        return [o for o in self.options if target in o.targets]

    def defaults(self, target: str | None = None) -> dict[str, Any]:
        return {o.name: o.default for o in self.options if target is None or target in o.targets}

    def check(self, values: Mapping[str, Any]) -> None:
        for name, value in values.items():
            self[name].check(value)

    def job_dict(self, values: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
        """The batch runner's plain job dict (`pipeline.batch.job_from_dict`) for option
        values by name; options not given keep the pipeline's defaults. `extra`: job-level
        entries (compress: `output`)."""
        d: dict[str, Any] = {"kind": self.kind}
        options: dict[str, Any] = {}
        for name, value in values.items():
            o = self[name]
            if o.name in self.top_level:
                d[o.field] = value
            else:
                options[o.field] = value
        d["options"] = options
        d.update(extra)
        return d


# -- options of a slide, shared by every command that opens slides -------------------------------
READER = Option(
    "reader", str, None, "Force a reader backend (default: the first that opens the file).",
    optional=True, registry=READERS, targets=COMMAND_LINE,
)  # fmt: skip
MPP_OVERRIDE = Option(
    "mpp_override", float, None, "Use this level-0 um/px instead of the file's.",
    optional=True, min=0, min_exclusive=True,
)  # fmt: skip

# -- shared by both job kinds -------------------------------------------------------------------
OVERWRITE = Option(
    "overwrite", bool, False,
    "Replace outputs made from other slide content or parameters (up-to-date ones are still "
    "skipped).",
    targets=COMMAND_LINE,
)  # fmt: skip
THREADS = Option(
    "threads", int, 2, "Threads working on one slide (reading, and for compress coding tiles).",
    min=1, max=MAX_WORKERS, aliases=("--workers",), targets=COMMAND_LINE, key="workers",
)  # fmt: skip

ENCODE = JobSpec(
    "encode",
    (
        Option("encoder", str, "mean-rgb",
               "Patch encoder, by name (see 'encoders'); the command line also takes "
               "torchscript:PATH, timm:MODEL@WEIGHTS and nic:DIR.",
               registry=ENCODERS),
        Option("patch_size", int, None, "Patch side in px at --mpp (default: the encoder's, "
               "else 128).", optional=True, min=1, max=MAX_PATCH),
        Option("stride", int, None, "Cell pitch in px (default: the patch size).",
               optional=True, min=1, max=MAX_PATCH),
        Option("mpp", float, None, "Target um/px (default: the encoder's, else 0.5).",
               optional=True, min=MPP_RANGE[0], max=MPP_RANGE[1]),
        Option("tissue_threshold", float, 0.5, "Keep cells whose tissue fraction is at least "
               "this.", min=0, max=1),
        Option("augment", str, "none", "'dihedral': also the 8 rotations/flips, one grid each.",
               choices=("none", "dihedral")),
        Option("format", str, "zarr", "Grid file format.", registry=FORMATS, flag="--format",
               key="fmt"),
        Option("float16", bool, False, "Store features as float16."),
        OVERWRITE,
        READER,
        THREADS,
        Option("batch_size", int, 64, "Patches per encoder call.", min=1, max=MAX_BATCH,
               targets=COMMAND_LINE),
        Option("device", str, None, "torch device (default: cuda if available, else cpu).",
               optional=True, targets=COMMAND_LINE),
    ),
    top_level=frozenset({"encoder", "device"}),
)  # fmt: skip

COMPRESS = JobSpec(
    "compress",
    (
        Option("codec", str, "jpegxl", "Tile codec (see 'codecs').", registry=CODECS),
        Option("quality", float, None, "Codec quality knob, within the codec's range (default: "
               "the codec's; see 'codecs').", optional=True),
        Option("tile", int, 256, "Tile side in px.", min=16, max=MAX_PATCH, multiple_of=16),
        Option("level", int, None, "Source pyramid level to store (default 0).",
               optional=True, min=0, targets=COMMAND_LINE),
        Option("mpp", float, None, "Store at this um/px instead of a level.", optional=True,
               min=MPP_RANGE[0], max=MPP_RANGE[1], targets=COMMAND_LINE),
        Option("background", str, "skip", "Tiles of empty glass: skip leaves them out (read "
               "back white), constant stores one for all, keep stores each.",
               choices=BACKGROUND_POLICIES),
        THREADS,
        Option("ms_ssim", bool, False, "Also MS-SSIM over every stored level-0 tile (loads "
               "torch)."),
        Option("feature_similarity", bool, False, "Also feature similarity (ResNet18 features "
               "at 6 depths, shipped weights) over every stored level-0 tile (loads torch).",
               targets=COMMAND_LINE),
        Option("embedding_similarity", str, None, "Also the embedding similarity of this "
               "encoder (e.g. nic-multitask; see 'encoders') over every stored level-0 tile "
               "(loads torch).", optional=True, metavar="ENCODER", targets=COMMAND_LINE),
        OVERWRITE,
        READER,
    ),
)  # fmt: skip

COMPARE = JobSpec(
    "compare",
    (
        Option("encoder", str, "nic-multitask", "Encoder whose grid is compared (see "
               "'encoders').", registry=ENCODERS),
        Option("tissue_threshold", float, 0.5, "Cells with at least this tissue fraction are "
               "compared.", min=0, max=1),
        Option("batch_size", int, 64, "Patches per encoder call.", min=1, max=MAX_BATCH,
               targets=COMMAND_LINE),
        Option("overwrite", bool, False, "Replace outputs of an earlier comparison.",
               targets=COMMAND_LINE),
    ),
)  # fmt: skip

EXPORT = JobSpec(
    "export",
    (
        Option("format", str, "tiff", "tiff: a pyramidal TIFF (OpenSlide, QuPath); dicom: a "
               "DICOM WSI folder (wsidicom, OpenSlide 4, PACS). Coded tiles are copied where "
               "the format carries the codec's codestream.", choices=("tiff", "dicom"),
               flag="--format"),
        Option("quality", int, 95, "JPEG quality of tiles the format cannot carry as coded "
               "(decoded and re-encoded; the loss is reported).", min=1, max=100),
        Option("threads", int, 2, "Decoding threads.", min=1, max=MAX_WORKERS,
               aliases=("--workers",), targets=COMMAND_LINE, key="workers"),
        Option("overwrite", bool, False, "Replace an existing output.", targets=COMMAND_LINE),
    ),
)  # fmt: skip

JOB_SPECS: dict[str, JobSpec] = {s.kind: s for s in (ENCODE, COMPRESS, COMPARE, EXPORT)}
