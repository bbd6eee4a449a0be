"""export_container: a container -> the formats viewers and archives read, codestreams copied.

Where the target format can carry the container's codestreams they are written through
byte for byte, so the export is exact and costs no decoding:

    codec      tiff (pyramidal, OpenSlide/QuPath)   dicom (VL WSI folder, wsidicom/OpenSlide 4)
    jpeg       copied (JPEG, YCbCr)                  copied (JPEG baseline, 1.2.840.10008.1.2.4.50)
    jpeg2000   re-encoded JPEG                       copied (J2K codestream of the JP2 box, .4.91)
    jpegxl     re-encoded JPEG                       copied (JPEG XL, Supplement 232, .4.112)
    htj2k      re-encoded JPEG                       re-encoded HTJ2K lossless (.4.201): our
                                                     codestreams are signed 16-bit, DICOM WSI
                                                     samples are 8-bit; lossless keeps the pixels
    others     re-encoded JPEG                       re-encoded JPEG baseline
(learned, AE, AVIF, WebP, PNG)

Re-encoded tiles are JPEG at `quality` with 4:4:4 chroma (what `decompress` writes); their
loss against the container's decoded pixels is measured and reported (PSNR).

Edge tiles: the container codes them at the full tile size, padded white (store/container.py),
which is what both formats expect (the image size crops them), so they are copied too.
Glass tiles the container left out (background policy `skip` or `constant`) are filled with
one coded background tile whose bytes are reused: TIFF and TILED_FULL DICOM need every tile.
It is coded in the target's codestream (JPEG q100 decodes uniform white exactly).

`ExportJob` is the batch runner's job kind `export` (the service's export jobs): each item a
container, written to `out_dir/STEM.tiff` or the folder `out_dir/STEM.dicom`.
"""

from __future__ import annotations

import copy
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .. import __version__
from ..bounds import check_workers
from ..errors import ContainerError, UsageError
from ..progress import ProgressStart
from ..store.atomic import atomic_path, check_output
from ..store.container import Container, tile_name
from .batch import Job, Outcome, output_bytes
from .decompress import write_tiff_levels
from .items import SlideItem

# DICOM transfer syntaxes (pydicom / wsidicom spell the same UIDs)
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
JPEG_XL = "1.2.840.10008.1.2.4.112"


@dataclass
class ExportResult:
    path: Path
    format: str
    codestream: str  # what the target holds, e.g. "JPEG baseline (copied)"
    tiles_copied: int = 0  # container bytes written through unchanged
    tiles_reencoded: int = 0  # decoded and coded again (codec the format cannot carry)
    tiles_filled: int = 0  # glass tiles the container left out: one coded tile reused
    reencode_psnr_db: float | None = None  # re-encoded tiles vs the container's pixels
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        if d["reencode_psnr_db"] is not None and not np.isfinite(d["reencode_psnr_db"]):
            d["reencode_psnr_db"] = "inf"
        return d


# -- codestream headers ------------------------------------------------------------------------
def jpeg_frame(data: bytes) -> tuple[int, int, int, tuple[tuple[int, int], ...]] | None:
    """(marker, height, width, per-component (h, v) sampling) of a JPEG's frame header."""
    i = 2
    if data[:2] != b"\xff\xd8":
        return None
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            seg = data[i + 4 : i + 2 + length]
            if len(seg) < 6:
                return None
            precision, h, w, n = seg[0], *struct.unpack(">HH", seg[1:5]), seg[5]
            comps = tuple((seg[7 + 3 * k] >> 4, seg[7 + 3 * k] & 15) for k in range(n))
            return (marker if precision == 8 else -1), h, w, comps
        if marker == 0xDA:
            return None
        i += 2 + length
    return None


def j2k_codestream(data: bytes) -> bytes:
    """The raw JPEG 2000 codestream: itself, or the `jp2c` box of a JP2 file."""
    if data[:2] == b"\xff\x4f":
        return data
    i = 0
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i : i + 8])
        head = 8
        if size == 1:
            (size,) = struct.unpack(">Q", data[i + 8 : i + 16])
            head = 16
        elif size == 0:
            size = len(data) - i
        if kind == b"jp2c":
            return data[i + head : i + size]
        if size < head:
            break
        i += size
    raise ValueError("no JPEG 2000 codestream")


def j2k_header(cs: bytes) -> tuple[int, int, tuple[int, ...], bool, bool]:
    """(width, height, per-component Ssiz, colour transform used, reversible) of a codestream."""
    s = cs.find(b"\xff\x51")
    c = cs.find(b"\xff\x52")
    if s < 0 or c < 0:
        raise ValueError("no SIZ/COD marker")
    xs, ys, x0, y0 = struct.unpack(">IIII", cs[s + 6 : s + 22])
    (n,) = struct.unpack(">H", cs[s + 38 : s + 40])
    ssiz = tuple(cs[s + 40 + 3 * k] for k in range(n))
    mct = cs[c + 8] == 1
    reversible = cs[c + 13] == 1
    return xs - x0, ys - y0, ssiz, mct, reversible


# -- tiles for a target --------------------------------------------------------------------
class TileCoder:
    """Coded tiles of one container for one target codestream: copied or re-encoded.

    Thread-safe (zip reads are; the loss totals take a lock), so the TIFF writer's window and
    wsidicom's workers may call `tile` concurrently."""

    def __init__(
        self,
        c: Container,
        copy_tile: Callable[[bytes, str], bytes] | None,
        encode: Callable[[np.ndarray], bytes],
        decode: Callable[[bytes], np.ndarray],
    ):
        self.c = c
        self.copy_tile = copy_tile  # None: the target cannot carry the codec's codestream
        self.encode = encode
        self.decode = decode
        self.copied = self.reencoded = self.filled = 0
        self._sse = 0.0
        self._pixels = 0
        self._lock = threading.Lock()
        self._background: bytes | None = None

    def background(self) -> bytes:
        if self._background is None:
            pixels = self.c.background_tile()
            data = self.encode(pixels)
            if not np.array_equal(self.decode(data), pixels):
                self._account(pixels, data)  # a non-uniform `constant` tile: not exact
            self._background = data
        return self._background

    def tile(self, level: int, row: int, col: int) -> bytes:
        data = self.c.tile_bytes(level, row, col)
        if data is None:
            with self._lock:
                self.filled += 1
            return self.background()
        if self.copy_tile is not None:
            out = self.copy_tile(data, tile_name(level, row, col, self.c.codec.suffix))
            with self._lock:
                self.copied += 1
            return out
        pixels = self.c.decode(data, tile_name(level, row, col, self.c.codec.suffix))
        out = self.encode(pixels)
        self._account(pixels, out)
        with self._lock:
            self.reencoded += 1
        return out

    def _account(self, pixels: np.ndarray, data: bytes) -> None:
        err = self.decode(data).astype(np.int32) - pixels
        sse = float(np.einsum("ijk,ijk->", err, err, dtype=np.int64))
        with self._lock:
            self._sse += sse
            self._pixels += pixels.size

    def psnr(self) -> float | None:
        if not self._pixels:
            return None
        mse = self._sse / self._pixels
        return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def _jpeg_coder(c: Container, quality: int) -> TileCoder:
    """JPEG tiles: the container's own when it is a baseline 8-bit YCbCr JPEG container."""
    import imagecodecs

    t = c.tile
    ref: tuple | None = None
    if c.codec.name == "jpeg":
        cells = ((lv.index, *rc) for lv in c.levels for rc in c.stored_tiles(lv.index))
        first = next(cells, None)
        ref = jpeg_frame(c.tile_bytes(*first) or b"") if first else None
        if ref is not None and (ref[0] != 0xC0 or len(ref[3]) != 3):
            ref = None  # progressive, 12-bit or grey: not what TIFF/DICOM baseline carry
        if ref is not None and ref[1:3] != (t, t):
            name = tile_name(*first, c.codec.suffix)
            raise ContainerError(
                f"{c.path.name}: {name} is not a {t} x {t} JPEG: the container was tampered with"
            )

    if ref is None:
        return TileCoder(
            c, None,
            lambda px: imagecodecs.jpeg8_encode(px, level=quality, subsampling="444"),
            imagecodecs.jpeg8_decode,
        )  # fmt: skip

    sampling = ref[3]
    subsampling = {(2, 2): "420", (2, 1): "422", (1, 1): "444"}.get(sampling[0], "444")

    def copy_tile(data: bytes, name: str) -> bytes:
        frame = jpeg_frame(data)
        if frame is None or frame[0] != 0xC0 or frame[1:3] != (t, t) or frame[3] != sampling:
            raise ContainerError(
                f"{c.path.name}: {name} is not a baseline {t} x {t} JPEG like the container's "
                "other tiles: the container was tampered with"
            )
        return data

    # the glass tile: q100 at the same chroma sampling (uniform white decodes exactly)
    return TileCoder(
        c, copy_tile,
        lambda px: imagecodecs.jpeg8_encode(px, level=100, subsampling=subsampling),
        imagecodecs.jpeg8_decode,
    )  # fmt: skip


def _ycbcr_sampling(c: Container, coder: TileCoder) -> tuple[int, int]:
    if coder.copy_tile is None:
        return (1, 1)
    frame = jpeg_frame(coder.background())
    return frame[3][0] if frame else (1, 1)


# -- TIFF ----------------------------------------------------------------------------------
def _tiff_tiles(
    coder: TileCoder, level: int, pool: ThreadPoolExecutor, advance: Callable[[int], None] | None
) -> Iterator[bytes]:
    lv = coder.c.levels[level]
    coords = ((r, col) for r in range(lv.rows) for col in range(lv.cols))  # lazy: may be 10^6
    while chunk := list(islice(coords, 64)):
        yield from pool.map(lambda rc: coder.tile(level, *rc), chunk)
        if advance:
            advance(len(chunk))


def export_tiff(
    c: Container, out: Path, *, quality: int, workers: int, advance: Callable[[int], None] | None
) -> tuple[TileCoder, str]:
    """Tiled pyramidal TIFF, one page per level, JPEG tiles written as coded bytes."""
    coder = _jpeg_coder(c, quality)
    sampling = _ycbcr_sampling(c, coder)
    export = {"compression": "jpeg", "copied": coder.copy_tile is not None}
    with ThreadPoolExecutor(workers) as pool:
        # an iterator of coded tiles + compression= writes the bytes as they are
        write_tiff_levels(
            out, c, lambda level: _tiff_tiles(coder, level, pool, advance), export,
            photometric="ycbcr", compression="jpeg", subsampling=sampling,
        )  # fmt: skip
    what = "JPEG (copied)" if coder.copy_tile else f"JPEG q{quality} 4:4:4 (re-encoded)"
    return coder, what


# -- DICOM ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _DicomCoding:
    transfer_syntax: str
    photometric: str
    coder: TileCoder
    what: str
    lossy_method: str | None  # LossyCompressionIsoStandard name, None for lossless


def _dicom_coding(c: Container, quality: int) -> _DicomCoding:
    import imagecodecs

    name, t = c.codec.name, c.tile
    if name == "jpeg":
        coder = _jpeg_coder(c, quality)
        if coder.copy_tile is not None:
            sub = _ycbcr_sampling(c, coder) != (1, 1)
            pi = "YBR_FULL_422" if sub else "YBR_FULL"
            return _DicomCoding(JPEG_BASELINE, pi, coder, "JPEG baseline (copied)", "JPEG_LOSSY")
    if name == "jpeg2000":

        def copy_j2k(data: bytes, tile: str) -> bytes:
            try:
                cs = j2k_codestream(data)
                w, h, ssiz, _, _ = j2k_header(cs)
            except (ValueError, struct.error, IndexError) as e:
                raise ContainerError(f"{c.path.name}: {tile} is not JPEG 2000 ({e})") from None
            if (w, h) != (t, t) or ssiz != (7, 7, 7):
                raise ContainerError(
                    f"{c.path.name}: {tile} is not an 8-bit {t} x {t} RGB codestream: the "
                    "container was tampered with"
                )
            return cs

        def enc_j2k(px: np.ndarray) -> bytes:
            return j2k_codestream(imagecodecs.jpeg2k_encode(px, level=c.codec.quality))

        coder = TileCoder(c, copy_j2k, enc_j2k, imagecodecs.jpeg2k_decode)
        _, _, _, mct, rev = j2k_header(coder.background())
        pi = ("YBR_RCT" if rev else "YBR_ICT") if mct else "RGB"
        what = "JPEG 2000 (codestreams copied)"
        return _DicomCoding(JPEG_2000, pi, coder, what, "JPEG_2000_IRREVERSIBLE")
    if name == "jpegxl":

        def copy_jxl(data: bytes, tile: str) -> bytes:
            if data[:2] != b"\xff\x0a" and data[:12] != b"\0\0\0\x0cJXL \r\n\x87\n":
                raise ContainerError(f"{c.path.name}: {tile} is not a JPEG XL codestream")
            return data

        def enc_jxl(px: np.ndarray) -> bytes:
            return imagecodecs.jpegxl_encode(px, level=c.codec.quality, **c.codec.params)

        coder = TileCoder(c, copy_jxl, enc_jxl, imagecodecs.jpegxl_decode)
        return _DicomCoding(JPEG_XL, "RGB", coder, "JPEG XL (copied)", "JPEG_XL_LOSSY")
    if name == "htj2k":
        # our HTJ2K codestreams are signed 16-bit (codecs/conventional.py); DICOM WSI is 8-bit
        coder = TileCoder(
            c, None,
            lambda px: imagecodecs.htj2k_encode(px, reversible=True),
            imagecodecs.htj2k_decode,
        )  # fmt: skip
        _, _, _, mct, _ = j2k_header(coder.background())
        what = "HTJ2K lossless (re-encoded: 16-bit codestreams -> 8-bit)"
        return _DicomCoding(HTJ2K_LOSSLESS, "YBR_RCT" if mct else "RGB", coder, what, None)
    coder = _jpeg_coder(c, quality)  # a codec no DICOM transfer syntax carries
    what = f"JPEG baseline q{quality} 4:4:4 (re-encoded)"
    return _DicomCoding(JPEG_BASELINE, "YBR_FULL", coder, what, "JPEG_LOSSY")


def _wsi_source(c: Container, coding: _DicomCoding) -> Any:
    """A wsidicom Source over the container: one VOLUME instance per level, TILED_FULL."""
    from pydicom.uid import UID, generate_uid
    from wsidicom.codec import Encoder, LossyCompressionIsoStandard
    from wsidicom.geometry import Size, SizeMm
    from wsidicom.instance import WsiDataset, WsiInstance
    from wsidicom.instance.image_data import ImageData
    from wsidicom.metadata import (
        Equipment,
        Image,
        ImageType,
        Label,
        LossyCompression,
        OpticalPath,
        Patient,
        Pyramid,
        Series,
        Slide,
        SlideSample,
        Study,
        WsiMetadata,
    )  # fmt: skip
    from wsidicom.metadata.schema.dicom.wsi import WsiMetadataDicomSchema
    from wsidicom.source import Source

    coder, t = coding.coder, c.tile
    name = (c.source_name or c.path.stem)[:64]  # LO: at most 64 characters
    lossy = None
    if coding.lossy_method is not None:  # ratio of a level-0 tile (the first one stored)
        first = next(iter(c.stored_tiles(0)), None)
        size = len(c.tile_bytes(0, *first) or b"") if first else len(coder.background())
        ratio = (t * t * 3) / max(1, size)
        lossy = [LossyCompression(LossyCompressionIsoStandard[coding.lossy_method], ratio)]

    class LevelData(ImageData):
        def __init__(self, index: int):
            self._lv = c.levels[index]
            super().__init__(Encoder.create(UID(coding.transfer_syntax), 8, coding.photometric))

        transfer_syntax = property(lambda s: UID(coding.transfer_syntax))
        image_size = property(lambda s: Size(s._lv.width, s._lv.height))
        tile_size = property(lambda s: Size(t, t))
        pixel_spacing = property(lambda s: SizeMm(s._lv.mpp / 1000, s._lv.mpp / 1000))
        imaged_size = property(lambda s: None)
        samples_per_pixel = property(lambda s: 3)
        photometric_interpretation = property(lambda s: coding.photometric)
        bits = property(lambda s: 8)
        image_coordinate_system = property(lambda s: None)
        thread_safe = property(lambda s: True)
        lossy_compression = property(lambda s: lossy)
        transcoder = property(lambda s: None)

        def get_encoded_tile(self, tile: Any, z: float, path: str) -> bytes:
            return coder.tile(self._lv.index, tile.y, tile.x)

        def get_decoded_tile(self, tile_point: Any, z: float, path: str, cache: bool = True):
            return coder.decode(self.get_encoded_tile(tile_point, z, path))

    metadata = WsiMetadata(
        study=Study(uid=generate_uid(), description=f"slidepress export of {name}"[:64]),
        series=Series(uid=generate_uid(), number=1, description=name),
        patient=Patient(),
        equipment=Equipment(
            manufacturer="slidepress",
            model_name="slidepress export",
            software_versions=[f"slidepress {__version__}"],
        ),  # fmt: skip
        slide=Slide(identifier=name, samples=[SlideSample(identifier=name, uid=generate_uid())]),
        pyramid=Pyramid(
            image=Image(),
            optical_paths=[OpticalPath(identifier="0")],
            uid=generate_uid(),
            description=f"slidepress export of a {c.codec.name} container"[:64],
        ),
        label=Label(text=name),
        frame_of_reference_uid=generate_uid(),
        dimension_organization_uids=[generate_uid()],
    )
    base = WsiMetadataDicomSchema().dump(metadata, ImageType.VOLUME)

    class ContainerSource(Source):
        def __init__(self) -> None:
            super().__init__()
            self._levels = [
                WsiInstance.create_instance(
                    LevelData(lv.index), copy.deepcopy(base), ImageType.VOLUME, lv.index
                )
                for lv in c.levels
            ]

        base_dataset = property(lambda s: WsiDataset(base))
        level_instances = property(lambda s: s._levels)
        label_instances = property(lambda s: [])
        overview_instances = property(lambda s: [])
        thumbnail_instances = property(lambda s: [])
        annotation_instances = property(lambda s: [])

        def close(self) -> None:
            pass

    return ContainerSource()


def export_dicom(
    c: Container, out: Path, *, quality: int, workers: int, advance: Callable[[int], None] | None
) -> tuple[TileCoder, str]:
    """A DICOM VL Whole Slide Microscopy folder: one instance (file) per level, TILED_FULL."""
    from wsidicom import WsiDicom

    coding = _dicom_coding(c, quality)
    out.mkdir()
    with WsiDicom(_wsi_source(c, coding)) as wsi:
        wsi.save(out, workers=workers, include_labels=False, include_overviews=False,
                 include_thumbnails=False)  # fmt: skip
    if advance:
        advance(sum(lv.rows * lv.cols for lv in c.levels))
    return coding.coder, f"{coding.what}, transfer syntax {coding.transfer_syntax}"


EXPORTERS: dict[str, Callable[..., tuple[TileCoder, str]]] = {
    "tiff": export_tiff,
    "dicom": export_dicom,
}


def export_container(
    container: str | Path,
    out: str | Path,
    *,
    format: str = "tiff",
    quality: int = 95,
    workers: int = 2,
    overwrite: bool = False,
    progress_start: ProgressStart | None = None,
) -> ExportResult:
    """Write `container` as a pyramidal TIFF (a file) or a DICOM WSI (a folder), atomically.

    `quality` is the JPEG quality of tiles the target cannot carry as coded (re-encoded)."""
    out, container = Path(out), Path(container)
    if format not in EXPORTERS:
        raise UsageError(f"export format must be one of {', '.join(EXPORTERS)}, not {format!r}")
    check_workers(workers)
    if not 1 <= quality <= 100:
        raise UsageError(f"JPEG quality must be within 1-100, got {quality}")
    if format == "tiff":
        check_output(out, overwrite=overwrite, inputs=[container])
        if out.suffix.lower() not in (".tif", ".tiff"):
            raise UsageError(f"{out.name}: TIFF export writes a pyramidal TIFF; name it .tiff")
    else:
        check_output(out, overwrite=overwrite, inputs=[container], folder=True)
        if out.exists() and not overwrite:
            raise UsageError(f"{out} exists; use --overwrite to replace it")
    start = time.perf_counter()
    with Container(container) as c:
        total = sum(lv.rows * lv.cols for lv in c.levels)
        advance = progress_start(container.name, total) if progress_start else None
        with atomic_path(out) as tmp:
            coder, what = EXPORTERS[format](
                c, tmp, quality=quality, workers=workers, advance=advance
            )
    result = ExportResult(
        out, format, what, coder.copied, coder.reencoded, coder.filled, coder.psnr(),
        time.perf_counter() - start,
    )  # fmt: skip
    if coder.reencoded:
        result.notes.append(
            f"{c.codec.name} codestreams cannot be carried by {format}: tiles were decoded and "
            "re-encoded"
        )
    return result


@dataclass
class ExportJob(Job):
    """`export`: each item (a container) as a pyramidal TIFF `out_dir/STEM.tiff` or a DICOM
    WSI folder `out_dir/STEM.dicom` (or `output` for one container)."""

    kind: ClassVar[str] = "export"
    options: dict[str, Any] = field(default_factory=dict)  # export_container keywords
    output: str | None = None

    OPTIONS: ClassVar[frozenset[str]] = frozenset({"format", "quality", "workers", "overwrite"})

    def __post_init__(self) -> None:
        unknown = sorted(set(self.options) - self.OPTIONS)
        if unknown:
            raise UsageError(f"export takes no option {unknown[0]!r}")
        fmt = self.options.get("format", "tiff")
        if fmt not in EXPORTERS:
            raise UsageError(f"export format must be one of {', '.join(EXPORTERS)}, not {fmt!r}")
        check_workers(self.options.get("workers", 2))

    def output_for(self, item: SlideItem, out_dir: Path) -> Path:
        if self.output:
            return Path(self.output)
        suffix = ".tiff" if self.options.get("format", "tiff") == "tiff" else ".dicom"
        return out_dir / f"{item.stem}{suffix}"

    refuses_existing: ClassVar[bool] = True  # no content key: replaced only on request

    def outputs(self, item: SlideItem, out_dir: Path) -> list[Path]:
        return [self.output_for(item, out_dir)]

    def overwrite(self) -> bool:
        return bool(self.options.get("overwrite"))

    def run(self, item: SlideItem, out_dir: Path, progress: ProgressStart | None) -> Outcome:
        out = self.output_for(item, out_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        r = export_container(item.path, out, progress_start=progress, **self.options)
        loss = ""
        if r.tiles_reencoded:
            psnr = r.reencode_psnr_db
            loss = ", exact" if psnr == float("inf") else f", {psnr:.2f} dB vs the container"
        summary = (
            f"{r.path.name} ({r.format}: {r.codestream}; {r.tiles_copied} tiles copied, "
            f"{r.tiles_reencoded} re-encoded{loss}, {r.tiles_filled} glass tiles filled)"
        )
        psnr = r.to_dict()["reencode_psnr_db"]
        return Outcome(
            slide=item.name, path=str(item.path), status="done", units="tiles",
            count=r.tiles_copied + r.tiles_reencoded + r.tiles_filled,
            bytes_in=output_bytes([item.path]), bytes_out=output_bytes([r.path]),
            outputs=[str(r.path)], summary=summary, notes=list(r.notes),
            metrics={"format": r.format, "codestream": r.codestream,
                     "tiles_copied": r.tiles_copied, "tiles_reencoded": r.tiles_reencoded,
                     "tiles_filled": r.tiles_filled,
                     "reencode_psnr_db": round(psnr, 3) if isinstance(psnr, float) else psnr},
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "options": dict(self.options), "output": self.output}
