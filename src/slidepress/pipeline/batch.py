"""Run one job (encode, compress, compare, export) over many slides, one outcome each.

The CLI, the service and the Dask runner all drive this runner; they only parse and print.
Everything crossing a process boundary is plain data: a slide item is a dict (`SlideItem`),
a job is a dict (`job_to_dict` / `job_from_dict`), an outcome is a dict (`Outcome.row`). A
slide's work is restartable: outputs are content-keyed (slide SHA-256 + parameters), so a
re-run skips what is done and redoes what an interruption left unfinished.

A bad slide (SlidepressError) is a `failed` outcome with its one-line message and the batch
goes on; a bug in slidepress is also recorded (`internal error: ...`) so one slide cannot
stop an archive run; Ctrl-C and SIGTERM stop the batch.

The job kinds are a registry (`JOBS`, one line each below). A kind may also code one slide
as bands of rows in separate tasks merged into the whole-slide output (`Job.bands()`, a
`Bands`: encode_bands.py, compress_bands.py); the Dask runner's region tasks use it
(distributed/regions.py) without knowing the kinds.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from .. import remote
from ..errors import OutputExistsError, SlideError, SlidepressError, UsageError
from ..progress import ProgressStart
from ..registry import Registry
from ..store.atomic import write_csv
from .items import SlideItem

STATUSES = ("done", "skipped", "failed")
SPLIT = "split"  # the status of a slide handed on to band tasks (never in a report)
REPORT_COLUMNS = (
    "slide", "path", "status", "error", "seconds", "units", "count", "bytes_in", "bytes_out",
    "ratio", "outputs",
)  # fmt: skip


@dataclass
class Outcome:
    """What happened to one slide."""

    slide: str
    path: str
    status: str  # done | skipped | failed
    error: str = ""  # one line, for failed
    internal: bool = False  # failed by a bug, not by bad input (exit 1 rather than 2)
    output_exists: bool = False  # failed only because an output of other content is there
    seconds: float = 0.0
    units: str = ""  # what `count` counts: cells (encode) or tiles (compress)
    count: int = 0
    bytes_in: int = 0  # the slide's bytes
    bytes_out: int = 0  # the outputs' bytes
    outputs: list[str] = field(default_factory=list)
    summary: str = ""  # one human line (shape, quality ...) for the CLI
    notes: list[str] = field(default_factory=list)  # further lines for the CLI
    warnings: list[str] = field(default_factory=list)  # done, but worth a user's attention
    metrics: dict[str, Any] = field(default_factory=dict)  # job-specific numbers (psnr_db ...)
    fields: dict[str, Any] = field(default_factory=dict)  # passed through from the item
    traceback: str = ""  # of an internal error: shown with SLIDEPRESS_DEBUG, never in reports

    def row(self) -> dict[str, Any]:
        """Flat record for report.csv (and JSON): the columns above, then the item's fields."""
        ratio = self.bytes_in / self.bytes_out if self.bytes_out else ""
        row = {
            "slide": self.slide, "path": self.path, "status": self.status, "error": self.error,
            "seconds": round(self.seconds, 3), "units": self.units, "count": self.count,
            "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
            "ratio": round(ratio, 3) if ratio != "" else "", "outputs": ";".join(self.outputs),
        }  # fmt: skip
        for k, v in {**self.metrics, **self.fields}.items():
            row.setdefault(k, v)
        return row

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Outcome:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class Job(ABC):
    """One kind of per-slide work with its options."""

    kind: ClassVar[str]

    def prepare(self) -> None:  # noqa: B027 - optional: load models once per process
        """Load what every slide needs once (an encoder); errors here stop the batch."""

    @abstractmethod
    def run(self, item: SlideItem, out_dir: Path, progress: ProgressStart | None) -> Outcome:
        """Process one slide; raise SlidepressError for bad input."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Plain data that `job_from_dict` turns back into this job in another process."""

    def bands(self) -> Bands | None:
        """How this kind codes one slide as bands of rows, in separate tasks, merged into the
        output of a whole-slide run; None: a slide is always run whole."""
        return None

    # False: an existing output is skipped when its content key matches (else refused
    # without overwrite), so in object storage it is fetched for `run` to decide as on disk.
    # True: a kind with no content key (compare, export) refuses an existing output unless
    # `overwrite()`; in object storage only its presence is checked, nothing is fetched.
    refuses_existing: ClassVar[bool] = False

    def outputs(self, item: SlideItem, out_dir: Path) -> list[Path]:
        """The files or folders whose presence (and content key) makes `run` skip (or
        refuse) a slide; with an output folder in object storage they are fetched into the
        local work folder first, so the skip check is the one made on disk (or, with
        `refuses_existing`, looked for in the store). []: never looked for."""
        return []

    def overwrite(self) -> bool:
        """Whether existing outputs are replaced (the job's `overwrite` option)."""
        return False

    def fetch_existing(self, url: str, path: Path) -> bool:
        """Copy the existing output at `url` to `path` in the work folder, for `run`'s skip
        check (whole, by default); False when there is none."""
        return remote.download(url, path)


class Bands(ABC):
    """One slide of a job kind as bands of rows: planned once, each band coded by its own
    task into a part file (atomically: a band whose part exists is done), the parts merged
    into the output a whole-slide run writes. What crosses tasks is plain data: the `split`
    state (`params_hash`, the content key; `bands`, [r0, r1) rows; what the bands need)."""

    units: ClassVar[str]  # what an outcome's `count` counts
    part: ClassVar[str]  # a band's part file name, formatted with the band's rows r0, r1
    reader: str | None = None  # the reader that opens the slides (None: automatic)

    def part_name(self, band: tuple[int, int]) -> str:
        return self.part.format(*band)

    @staticmethod
    def require_parts(item: SlideItem, parts: list[Path]) -> None:
        """SlideError naming the first band's part that is missing."""
        for p in parts:
            if not p.exists():
                raise SlideError(f"{item.name}: region part {p.name} is missing; run again")

    @abstractmethod
    def plan(
        self, item: SlideItem, out_dir: Path, band_rows: int, progress: ProgressStart | None
    ) -> tuple[Outcome, dict[str, Any] | None]:
        """(an outcome with status SPLIT, the split state); or (the slide's outcome, None)
        when it is up to date or was run whole here (one band: no gain in splitting)."""

    @abstractmethod
    def code(
        self, item: SlideItem, out_dir: Path, split: dict[str, Any], band: tuple[int, int],
        target: Path,
    ) -> int | None:  # fmt: skip
        """Code `band` into the part file `target`; the units stored, or None when the
        slide's whole output is already there."""

    @abstractmethod
    def merge(
        self, item: SlideItem, out_dir: Path, split: dict[str, Any], parts: list[Path]
    ) -> Outcome:
        """The slide's output from the bands' parts (in band order); SlideError when a part
        is stale (other content or parameters)."""


def output_bytes(paths: Iterable[Path]) -> int:
    """Bytes of output files and folders (recursively); missing ones count 0."""
    total = 0
    for p in paths:
        if p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        elif p.exists():
            total += p.stat().st_size
    return total


def _source_bytes(path: Path) -> int:
    from .provenance import source_bytes

    try:
        return source_bytes(path)
    except OSError:
        return 0


@dataclass
class EncodeJob(Job):
    """`encode`: NIC embedding grids (+ previews) per slide, in `out_dir`."""

    kind: ClassVar[str] = "encode"
    encoder: str = "mean-rgb"
    device: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # EncodeOptions fields

    def __post_init__(self) -> None:
        from ..encoders import check_spec
        from .encode import EncodeOptions

        check_spec(self.encoder)  # unknown names fail now, before torch loads
        self._opts = EncodeOptions(**self.options)
        self._encoder = None

    def prepare(self) -> None:
        self._encoder = _cached_encoder(self.encoder, self.device)
        self._opts.grid_spec(self._encoder)  # patch size / stride / mpp against the encoder

    def bands(self) -> Bands:
        from .encode_bands import EncodeBands

        if self._encoder is None:
            self.prepare()
        return EncodeBands(self, self._encoder, self._opts)

    def outputs(self, item: SlideItem, out_dir: Path) -> list[Path]:
        from .encode import output_paths, preview_paths

        grids = output_paths(item, out_dir, self._opts)
        return [*grids, *(preview_paths(grids) if self._opts.previews else [])]

    def run(self, item: SlideItem, out_dir: Path, progress: ProgressStart | None) -> Outcome:
        from .encode import encode_slide

        if self._encoder is None:
            self.prepare()
        res = encode_slide(item, out_dir, self._encoder, self._opts, progress_start=progress)
        return self.outcome(item, res)

    def outcome(self, item: SlideItem, res: Any) -> Outcome:
        """The outcome of an `EncodeResult` (also for a slide merged from regions)."""
        outputs = [*res.outputs, *res.previews]
        r, c, ch = res.grid_shape or (0, 0, 0)
        extra = f" (+{len(res.outputs) - 1} variants)" if len(res.outputs) > 1 else ""
        return Outcome(
            slide=item.name, path=str(item.path), status="skipped" if res.skipped else "done",
            units="cells", count=res.cells_kept, bytes_in=_source_bytes(item.path),
            bytes_out=output_bytes(res.outputs), outputs=[str(p) for p in outputs],
            summary=f"{res.outputs[0]}{extra}: grid {r}x{c}x{ch}, {res.cells_kept} tissue cells",
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "encoder": self.encoder, "device": self.device,
                "options": dict(self.options)}  # fmt: skip


_ENCODERS: dict[tuple[str, str | None], Any] = {}


def _cached_encoder(spec: str, device: str | None) -> Any:
    """One encoder per process and spec: a worker running many slides loads weights once."""
    from ..encoders import get_encoder

    key = (spec, device)
    if key not in _ENCODERS:
        _ENCODERS[key] = get_encoder(spec, device=device)
    return _ENCODERS[key]


@dataclass
class CompressJob(Job):
    """`compress`: one container per slide, `out_dir/STEM.spz` (or `output` for one slide)."""

    kind: ClassVar[str] = "compress"
    options: dict[str, Any] = field(default_factory=dict)  # CompressOptions fields
    output: str | None = None  # explicit container path (single-slide runs)

    def __post_init__(self) -> None:
        from .compress import CompressOptions

        self._opts = CompressOptions(**self.options)

    def prepare(self) -> None:
        """The codec: an unknown name or a quality out of its range stops the batch once."""
        from ..codecs import get_codec

        get_codec(self._opts.codec, self._opts.quality)

    def output_for(self, item: SlideItem, out_dir: Path) -> Path:
        return Path(self.output) if self.output else out_dir / f"{item.stem}.spz"

    def outputs(self, item: SlideItem, out_dir: Path) -> list[Path]:
        return [self.output_for(item, out_dir)]

    def fetch_existing(self, url: str, path: Path) -> bool:
        """Only what the skip check reads of an existing container: its zip index and
        manifest, by ranges, in a sparse copy (`store.container.fetch_index`)."""
        from ..store.container import fetch_index

        return fetch_index(url, path)

    def bands(self) -> Bands:
        from .compress_bands import CompressBands

        return CompressBands(self, self._opts)

    def run(self, item: SlideItem, out_dir: Path, progress: ProgressStart | None) -> Outcome:
        from .compress import compress_slide

        out = self.output_for(item, out_dir)
        if not self.output:  # a folder of containers, made on first use as encode does
            out_dir.mkdir(parents=True, exist_ok=True)
        r = compress_slide(item, out, self._opts, progress_start=progress)
        return self.outcome(item, r)

    def outcome(self, item: SlideItem, r: Any) -> Outcome:
        """The outcome of a `CompressResult` (also for a slide merged from regions)."""
        c = r.manifest["codec"]
        summary = (
            f"{r.path}: {c['name']} q{c['quality']:g}, {r.tiles_stored}/{r.tiles_total} tiles "
            f"stored, {r.container_bytes / 1e6:.2f} MB, {r.bpp:.3f} bpp, {r.ratio_raw:.1f}x vs "
            f"raw 24 bpp, {r.ratio_source:.2f}x vs source file"
        )
        fid = r.manifest.get("fidelity") or {}
        notes, metrics = [], {}
        if fid:
            glass = (r.manifest.get("background") or {}).get("glass") or {}
            ms = f", MS-SSIM {fid['ms_ssim']:.4f}" if fid.get("ms_ssim") is not None else ""
            fs, es = fid.get("feature_similarity") or {}, fid.get("embedding_similarity") or {}
            if fs.get("mean") is not None:
                ms += f", feature similarity {fs['mean']:.4f}"
            if es.get("mean") is not None:
                ms += f", embedding similarity ({es['encoder']}) {es['mean']:.5f}"
            psnr = fid.get("psnr_db")
            psnr_txt = f"{psnr:.2f} dB" if isinstance(psnr, float) else str(psnr)
            notes = [
                f"whole slide, all {fid['tissue_pixels'] / 1e6:.2f} Mpx of tissue: PSNR "
                f"{psnr_txt}{ms}",
                f"left out as glass: {fid['tiles_dropped']} of "
                f"{fid['tiles_dropped'] + fid['tiles_stored']} level-0 tiles (largest deviation "
                f"from glass in any: {fid['max_dropped_deviation']}, threshold "
                f"{glass.get('threshold')})",
            ]
            metrics = {"psnr_db": psnr, "ms_ssim": fid.get("ms_ssim"),
                       "tiles_dropped": fid["tiles_dropped"], "bpp": round(r.bpp, 4)}  # fmt: skip
            if fs:
                metrics["feature_similarity"] = fs.get("mean")
            if es:
                metrics["embedding_similarity"] = es.get("mean")
        bytes_in = r.source_bytes or _source_bytes(item.path)
        # re-coding an already strongly compressed source (JPEG 2000 SVS ...) can cost bytes
        grew = bool(bytes_in) and r.container_bytes > bytes_in
        metrics["grew"] = grew
        warnings = []
        if grew and not r.skipped:
            warnings.append(
                f"compressing made it bigger: {r.container_bytes:,} bytes vs {bytes_in:,} in "
                f"the source ({r.container_bytes / bytes_in:.2f}x); the source is already coded "
                f"harder than {c['name']} q{c['quality']:g}: try a lower quality, or keep it"
            )
        return Outcome(
            slide=item.name, path=str(item.path), status="skipped" if r.skipped else "done",
            units="tiles", count=r.tiles_stored, bytes_in=bytes_in,
            bytes_out=r.container_bytes, outputs=[str(r.path)], summary=summary, notes=notes,
            metrics=metrics, warnings=warnings,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "options": dict(self.options), "output": self.output}


JOBS: Registry[type[Job]] = Registry("job kind", UsageError)
JOBS.add("encode", EncodeJob, summary="NIC embedding grids (+ previews) per slide")
JOBS.add("compress", CompressJob, summary="one tile container (.spz) per slide")
JOBS.add("compare", "slidepress.pipeline.compare:CompareJob",
         summary="per-cell NIC grid cosine of a compressed slide vs its original")  # fmt: skip
JOBS.add("export", "slidepress.pipeline.export:ExportJob",
         summary="a container as a pyramidal TIFF or a DICOM WSI folder, tiles copied")  # fmt: skip


def job_from_dict(d: Mapping[str, Any]) -> Job:
    """The job a `to_dict` describes (UsageError naming the kinds for an unknown one)."""
    return JOBS.get(d.get("kind"))(**{k: v for k, v in d.items() if k != "kind"})


def job_to_dict(job: Job) -> dict[str, Any]:
    return job.to_dict()


def run_slide(
    item: SlideItem | Mapping[str, Any] | str | Path,
    job: Job,
    out_dir: str | Path,
    progress: ProgressStart | None = None,
) -> Outcome:
    """One slide, never raising for its own failure (Ctrl-C and SIGTERM still stop)."""
    item = SlideItem.of(item)
    t0 = time.perf_counter()
    try:
        if remote.is_url(out_dir) or remote.is_url(getattr(job, "output", None)):
            outcome = _run_to_store(item, job, str(out_dir), progress)
        else:
            outcome = job.run(item, remote.local(out_dir), progress)
    except OutputExistsError as e:  # a batch with --overwrite may replace it (distributed/)
        outcome = Outcome(item.name, item.location, "failed", error=str(e), output_exists=True)
    except SlidepressError as e:
        outcome = Outcome(item.name, item.location, "failed", error=str(e))
    except Exception as e:  # a bug must not stop the other slides
        msg = f"{item.name}: internal error: {type(e).__name__}: {e}"
        outcome = Outcome(item.name, item.location, "failed", error=msg, internal=True,
                          traceback=traceback.format_exc())  # fmt: skip
    outcome.seconds = time.perf_counter() - t0
    outcome.fields = {**dict(item.fields), **outcome.fields}
    return outcome


def _run_to_store(
    item: SlideItem, job: Job, out_url: str, progress: ProgressStart | None
) -> Outcome:
    """A slide whose outputs go to object storage: its existing outputs (`job.outputs`) are
    fetched into a local work folder (`job.fetch_existing`: a container only as far as its
    skip check reads it), the job runs there exactly as on disk (so it skips what is up to
    date by the same content key), and what it made is uploaded, each object
    published only when whole (`remote.upload`); the work folder is removed either way. A
    kind without a content key (`refuses_existing`) has its outputs only looked for: one
    there is refused without `overwrite`, naming its URL. Errors name URLs, not the work
    folder."""
    with remote.work_folder() as work:
        explicit = getattr(job, "output", None)
        if remote.is_url(explicit):  # one named output file (compress -o s3://.../x.spz)
            local = work / remote.name(explicit)
            job = dataclasses.replace(job, output=str(local))
            urls = {local: explicit}
        else:
            urls = {
                p: remote.join(out_url, p.relative_to(work).as_posix())
                for p in job.outputs(item, work)
            }
        if not job.refuses_existing:
            for p, url in urls.items():
                p.parent.mkdir(parents=True, exist_ok=True)
                job.fetch_existing(url, p)
        elif not job.overwrite():
            for url in urls.values():
                if remote.exists(url):
                    raise OutputExistsError(f"{url} exists; use --overwrite to replace it")

        def in_store(text: str) -> str:
            """A message or summary naming the outputs by their URLs, not the work folder."""
            for p, url in urls.items():
                text = text.replace(str(p), url)
            return text.replace(str(work), out_url.rstrip("/"))

        try:
            outcome = job.run(item, work, progress)
        except SlidepressError as e:
            e.args = (in_store(str(e)),)
            raise

        def url_of(path: str) -> str:
            p = Path(path)
            if p in urls:
                return urls[p]
            return remote.join(out_url, p.relative_to(work).as_posix())

        if outcome.status == "done":
            for o in outcome.outputs:
                remote.upload(Path(o), url_of(o))
        outcome.outputs = [url_of(o) for o in outcome.outputs]
        outcome.summary = in_store(outcome.summary)
        outcome.path = item.location
    return outcome


def run_batch(
    items: Iterable[SlideItem | Mapping[str, Any] | str | Path],
    job: Job,
    out_dir: str | Path,
    progress: ProgressStart | None = None,
) -> Iterator[Outcome]:
    """Outcomes as slides finish, in order. `job.prepare()` runs once first: an encoder that
    cannot load is an error for the whole batch, raised here."""
    job.prepare()
    for item in items:
        yield run_slide(item, job, out_dir, progress)


def run_slide_plain(item: Mapping[str, Any], job: Mapping[str, Any], out_dir: str) -> dict:
    """`run_slide` with plain data in and out: what another process (a Dask worker, the
    service's worker pool) calls."""
    j = job_from_dict(job)
    outcome = run_slide(SlideItem.from_dict(item), j, out_dir)
    d = outcome.row()
    d["internal"] = outcome.internal
    return d


def write_report(path: str | Path, outcomes: Iterable[Outcome]) -> Path:
    """`report.csv`: one row per slide (columns REPORT_COLUMNS, then the job's metrics and the
    items' pass-through fields)."""
    rows = [o.row() for o in outcomes]
    return write_csv(path, rows, columns=REPORT_COLUMNS)
