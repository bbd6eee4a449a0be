"""Hostile and damaged containers (issue 9, part 4): every case is refused with one line.

A real container is built once (the bundled sample slide, JPEG q80) and rewritten with a
tampered manifest or tampered entries. Each case is checked through `Container(...)` and
through the CLI (`decompress` and `read`, as subprocesses with a timeout): exit 2, exactly one
stderr line starting with `error:`, no traceback, no output and no partial file left, a
run time close to a normal run's, and a small peak memory (a zip bomb is never inflated).
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from slidepress.codecs import get_codec
from slidepress.errors import ContainerError
from slidepress.pipeline import CompressOptions, compress_slide, decompress_container
from slidepress.store.container import FORMAT_VERSION, MANIFEST, Container

TIMEOUT_S = 60  # a hang (the issue measured > 120 s) fails; a refusal takes ~2 s of imports
MAX_RSS_MB = 1024  # a CLI run peaks at ~100 MB; the 2 GiB bomb inflated in memory reached 4.2 GB
BOMB_BYTES = 2 << 30


# -- the base container and ways to rewrite it -------------------------------------------------
@dataclass(frozen=True)
class Base:
    path: Path
    manifest: dict
    entries: list[tuple[str, bytes]]  # tiles (and background), in archive order
    target: tuple[int, int]  # a stored level-0 tile (row, col): tampered in tile cases
    target_name: str


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Base:
    from slidepress.slide import sample_slide_path

    path = tmp_path_factory.mktemp("base") / "base.spz"
    opts = CompressOptions(codec="jpeg", quality=80)
    compress_slide(sample_slide_path(), path, opts)
    with zipfile.ZipFile(path) as z:
        manifest = json.loads(z.read(MANIFEST))
        entries = [(i.filename, z.read(i)) for i in z.infolist() if i.filename != MANIFEST]
    with Container(path) as c:
        target = c.stored_tiles(0)[len(c.stored_tiles(0)) // 2]
    name = f"L0/{target[0]:05d}_{target[1]:05d}.jpg"
    assert name in dict(entries)
    return Base(path, manifest, entries, target, name)


def _write(path: Path, manifest: dict | bytes, entries: list[tuple[str, bytes]]) -> Path:
    """A container as the writer makes it (STORED entries, manifest last), names kept as is."""
    raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest, indent=1).encode()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in [*entries, (MANIFEST, raw)]:
            z.writestr(zipfile.ZipInfo(name, (2026, 1, 1, 0, 0, 0)), data)
    return path


def _tamper(path: Path, base: Base, edit: Callable[[dict], object]) -> Path:
    m = json.loads(json.dumps(base.manifest))
    edit(m)
    return _write(path, m, base.entries)


def _pyramid(width: int, height: int, tile: int, mpp: float) -> list[dict]:
    """Level entries as compress writes them: each level half the previous, down to one tile."""
    levels, k = [], 0
    while True:
        w, h = width >> k, height >> k
        levels.append({"index": k, "width": w, "height": h, "rows": -(-h // tile),
                       "cols": -(-w // tile), "downsample": 2.0**k, "mpp": mpp * 2**k})  # fmt: skip
        if max(w, h) <= tile:
            return levels
        k += 1


def _patch_entry(path: Path, name: str, **fields: int) -> None:
    """Overwrite header fields of one entry in place (local header and central directory).

    fields: method, crc, compressed, size, flags (the zip headers' own fields).
    """
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        local = z.getinfo(name).header_offset
    central = data.rfind(name.encode()) - 46
    assert data[local : local + 4] == b"PK\x03\x04" and data[central : central + 4] == b"PK\x01\x02"
    layout = {"flags": (6, 8, "<H"), "method": (8, 10, "<H"), "crc": (14, 16, "<I"),
              "compressed": (18, 20, "<I"), "size": (22, 24, "<I")}  # fmt: skip
    for field, value in fields.items():
        at_local, at_central, fmt = layout[field]
        struct.pack_into(fmt, data, local + at_local, value)
        struct.pack_into(fmt, data, central + at_central, value)
    path.write_bytes(bytes(data))


@cache
def _zero_bomb(size: int) -> tuple[bytes, int]:
    """Raw deflate of `size` zero bytes (~2 MB for 2 GiB) and its CRC-32, built in ~1 s.

    After a full flush the compressor starts afresh, so every 1 MiB block of zeros codes to
    the same bytes: code one, repeat it."""
    chunk = bytes(1 << 20)
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = co.compress(chunk) + co.flush(zlib.Z_FULL_FLUSH)
    block = co.compress(chunk) + co.flush(zlib.Z_FULL_FLUSH)
    assert block == co.compress(chunk) + co.flush(zlib.Z_FULL_FLUSH)
    n = size // len(chunk)
    stream = first + block * (n - 1) + co.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(n):
        crc = zlib.crc32(chunk, crc)
    return stream, crc


# -- the cases ---------------------------------------------------------------------------------
def _set_levels(m: dict, levels: list[dict]) -> None:
    m["levels"] = levels
    m["tiles"]["total"] = sum(lv["rows"] * lv["cols"] for lv in levels)


def case_level_1e6_px(p: Path, b: Base) -> Path:
    return _tamper(p, b, lambda m: _set_levels(m, _pyramid(10**6, 10**6, 256, 0.499)))


def case_levels_10000(p: Path, b: Base) -> Path:
    lv = b.manifest["levels"][0]
    return _tamper(p, b, lambda m: m.update(levels=[{**lv, "index": i} for i in range(10_000)]))


def case_missing_levels(p: Path, b: Base) -> Path:
    return _tamper(p, b, lambda m: m.pop("levels"))


def case_tile_size_0(p: Path, b: Base) -> Path:
    return _tamper(p, b, lambda m: m.update(tile_size=0))


def case_empty_levels(p: Path, b: Base) -> Path:
    return _tamper(p, b, lambda m: m.update(levels=[]))


def case_unknown_level_key(p: Path, b: Base) -> Path:
    return _tamper(p, b, lambda m: m["levels"][1].update(colour="red"))


def case_absurd_dimensions(p: Path, b: Base) -> Path:
    return _tamper(p, b, lambda m: m["levels"][0].update(width=10**12, height=10**12))


def case_pixels_over_limit(p: Path, b: Base) -> Path:  # each side is within max_side
    return _tamper(p, b, lambda m: _set_levels(m, _pyramid(400_000, 400_000, 256, 0.499)))


def case_newer_format(p: Path, b: Base) -> Path:
    return _tamper(p, b, lambda m: m.update(format_version=FORMAT_VERSION + 1))


def case_manifest_not_json(p: Path, b: Base) -> Path:
    return _write(p, b'{"format": "slidepress-container", "levels": [', b.entries)


def case_manifest_not_object(p: Path, b: Base) -> Path:
    return _write(p, b"[1, 2, 3]", b.entries)


def case_not_a_zip(p: Path, b: Base) -> Path:
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, np.uint8).tobytes())
    return p


def case_truncated(p: Path, b: Base) -> Path:
    data = b.path.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])
    return p


def case_dotdot_name(p: Path, b: Base) -> Path:
    return _write(p, b.manifest, [*b.entries, ("L0/../../evil.jpg", b"x")])


def case_absolute_name(p: Path, b: Base) -> Path:
    return _write(p, b.manifest, [*b.entries, ("/tmp/evil.jpg", b"x")])


def case_zip_bomb(p: Path, b: Base) -> Path:
    """The target tile replaced by a DEFLATED entry that inflates to 2 GiB of zeros."""
    stream, crc = _zero_bomb(BOMB_BYTES)
    entries = [(n, stream if n == b.target_name else d) for n, d in b.entries]
    _write(p, b.manifest, entries)
    _patch_entry(p, b.target_name, method=zipfile.ZIP_DEFLATED, crc=crc, size=BOMB_BYTES)
    return p


def case_wrong_size_tile(p: Path, b: Base) -> Path:
    """The target tile re-encoded at 128 px: valid JPEG, CRC right, wrong shape."""
    small = get_codec("jpeg", 80).encode(np.full((128, 128, 3), 90, np.uint8))
    return _write(p, b.manifest, [(n, small if n == b.target_name else d) for n, d in b.entries])


def case_flipped_byte(p: Path, b: Base) -> Path:
    """One byte of the target tile flipped: the zip CRC names it."""
    data = bytearray(b.path.read_bytes())
    with zipfile.ZipFile(b.path) as z:
        info = z.getinfo(b.target_name)
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    data[at] ^= 0xFF
    p.write_bytes(bytes(data))
    return p


# name -> (builder, pattern the one-line message must match, stage that refuses it)
OPEN, READ = "open", "read"  # refused when opening / when the tampered tile is decoded
CLI_CASES = {
    "level_1e6_px": (case_level_1e6_px, r"levels\[0\]\.width.*1000000.*max_side", OPEN),
    "levels_10000": (case_levels_10000, r"10000 levels.*max_levels", OPEN),
    "missing_levels": (case_missing_levels, r"'levels' is missing", OPEN),
    "tile_size_0": (case_tile_size_0, r"'tile_size' is 0", OPEN),
    "empty_levels": (case_empty_levels, r"'levels' is empty", OPEN),
    "unknown_level_key": (case_unknown_level_key, r"levels\[1\]' has unknown key \"colour\"", OPEN),
    "absurd_dimensions": (case_absurd_dimensions, r"levels\[0\]\.width' is 10{12}", OPEN),
    "pixels_over_limit": (case_pixels_over_limit, r"max_pixels", OPEN),
    "newer_format": (
        case_newer_format,
        rf"newer slidepress \(container format {FORMAT_VERSION + 1}; this one reads up to "
        rf"{FORMAT_VERSION}\): upgrade slidepress",
        OPEN,
    ),
    "manifest_not_json": (case_manifest_not_json, r"manifest\.json is not valid JSON", OPEN),
    "manifest_not_object": (case_manifest_not_object, r"JSON array, not an object", OPEN),
    "not_a_zip": (case_not_a_zip, r"truncated or corrupted", OPEN),
    "truncated": (case_truncated, r"truncated or corrupted", OPEN),
    "dotdot_name": (case_dotdot_name, r"unsafe entry name 'L0/\.\./\.\./evil\.jpg'", OPEN),
    "absolute_name": (case_absolute_name, r"unsafe entry name '/tmp/evil\.jpg'", OPEN),
    "zip_bomb": (case_zip_bomb, r"compressed \(zip method 8, declares 2147483648 bytes\)", OPEN),
    "wrong_size_tile": (case_wrong_size_tile, r"{tile} .*not 256 x 256 x 3.*128, 128", READ),
    "flipped_byte": (case_flipped_byte, r"tile {tile} is corrupted", READ),
}


def _pattern(pattern: str, b: Base) -> str:
    return pattern.replace("{tile}", b.target_name.replace(".", r"\."))


# -- running the CLI ---------------------------------------------------------------------------
# `python -m slidepress ARGS` with one addition: at exit the process writes its own peak RSS
# (VmHWM) to a file. ru_maxrss from wait4 is no use here: it counts the parent's pages (the
# pytest process, over 1 GB once torch is loaded) in a child started by fork or vfork.
_MAIN_WITH_PEAK = """
import atexit, runpy, sys
peak_file = sys.argv.pop(1)
def peak():
    with open("/proc/self/status") as f, open(peak_file, "w") as out:
        out.write(next(line.split()[1] for line in f if line.startswith("VmHWM:")))
atexit.register(peak)
sys.argv[0] = "slidepress"
runpy.run_module("slidepress", run_name="__main__", alter_sys=True)
"""


@dataclass
class Run:
    rc: int | None  # None: killed at the timeout
    stderr: str
    seconds: float
    peak_rss_mb: float | None  # None where /proc is absent


def _cli(commands: list[list[str]], cwd: Path) -> list[Run]:
    """Run slidepress commands side by side (as subprocesses, with a timeout)."""
    env = {k: v for k, v in os.environ.items() if k != "SLIDEPRESS_DEBUG"}
    procs = []
    for i, args in enumerate(commands):
        err, peak = (cwd.parent / f"{cwd.name}-{i}.{kind}" for kind in ("stderr", "peak"))
        with open(err, "w") as f:
            p = subprocess.Popen(
                [sys.executable, "-c", _MAIN_WITH_PEAK, str(peak), *args],
                cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f, env=env,
            )  # fmt: skip
        procs.append((p, err, peak, time.perf_counter()))
    runs = []
    deadline = time.perf_counter() + TIMEOUT_S
    for p, err, peak, t0 in procs:
        try:
            rc = p.wait(max(0.1, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = None
        seconds = time.perf_counter() - t0
        rss = int(peak.read_text()) / 1024 if peak.exists() and peak.read_text() else None
        runs.append(Run(rc, err.read_text(), seconds, rss))
    return runs


def _commands(spz: Path, b: Base) -> list[list[str]]:
    row, col = b.target
    return [
        ["decompress", str(spz), "-o", "out.tiff"],
        ["read", str(spz), "--x", str(col * 256 + 10), "--y", str(row * 256 + 10),
         "--w", "64", "--h", "64", "-o", "r.png"],
    ]  # fmt: skip


@pytest.fixture(scope="module")
def normal_run_s(base, tmp_path_factory) -> float:
    """Positive control and time baseline: the untampered container through the same CLI."""
    folder = tmp_path_factory.mktemp("normal")
    runs = _cli(_commands(base.path, base), folder)
    for run in runs:
        assert run.rc == 0, run.stderr
    assert (folder / "out.tiff").stat().st_size > 0 and (folder / "r.png").stat().st_size > 0
    return max(r.seconds for r in runs)


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_refuses_in_one_line(case, base, normal_run_s, tmp_path):
    build, pattern, _ = CLI_CASES[case]
    spz = build(tmp_path / f"{case}.spz", base)
    folder = tmp_path / "work"
    folder.mkdir()
    for args, run in zip(_commands(spz, base), _cli(_commands(spz, base), folder), strict=True):
        what = f"{args[0]} on {case}: {run.stderr!r}"
        assert run.rc == 2, what
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), what
        assert "Traceback" not in run.stderr and "internal error" not in run.stderr, what
        assert re.search(_pattern(pattern, base), lines[0]), what
        assert run.seconds < max(15.0, 3 * normal_run_s), f"{what}: {run.seconds:.1f} s"
        if run.peak_rss_mb is not None:
            assert run.peak_rss_mb < MAX_RSS_MB, f"{what}: {run.peak_rss_mb:.0f} MB"
    assert sorted(os.listdir(folder)) == [], "an output or a partial file was left behind"


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_container_refuses(case, base, tmp_path):
    build, pattern, stage = CLI_CASES[case]
    spz = build(tmp_path / f"{case}.spz", base)
    t0 = time.perf_counter()
    with pytest.raises(ContainerError, match=_pattern(pattern, base)) as e:
        if stage == OPEN:
            Container(spz)
        else:
            with Container(spz) as c:
                c.read_tile(0, *base.target)
    assert "\n" not in str(e.value) and str(e.value).startswith(spz.name)
    assert time.perf_counter() - t0 < 5


def test_wrong_size_tile_is_never_exported(base, tmp_path):
    """decompress used to write a wrong TIFF with exit 0; now it stops and leaves nothing."""
    spz = case_wrong_size_tile(tmp_path / "w.spz", base)
    with pytest.raises(ContainerError, match=_pattern(r"{tile} .*not 256 x 256 x 3", base)):
        decompress_container(spz, tmp_path / "out.tiff", lossless=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.spz"]


# -- more tampering, checked through Container (fast, in-process) ------------------------------
def _entries_plus(b: Base, *extra: tuple[str, bytes]) -> list[tuple[str, bytes]]:
    return [*b.entries, *extra]


def _without_target(b: Base) -> list[tuple[str, bytes]]:
    return [(n, d) for n, d in b.entries if n != b.target_name]


def _m(edit: Callable[[dict], object]) -> Callable[[Path, Base], Path]:
    return lambda p, b: _tamper(p, b, edit)


def _e(entries: Callable[[Base], list]) -> Callable[[Path, Base], Path]:
    return lambda p, b: _write(p, b.manifest, entries(b))


def _level(i: int, **changes: object) -> Callable[[Path, Base], Path]:
    return _m(lambda m: m["levels"][i].update(changes))


def _patched(**fields: int) -> Callable[[Path, Base], Path]:
    def build(p: Path, b: Base) -> Path:
        _write(p, b.manifest, b.entries)
        _patch_entry(p, b.target_name, **fields)
        return p

    return build


def _nul_name(p: Path, b: Base) -> Path:
    _write(p, b.manifest, _entries_plus(b, ("L0/evil_x.jpg", b"x")))
    p.write_bytes(p.read_bytes().replace(b"L0/evil_x.jpg", b"L0/evil\x00x.jpg"))
    return p


def _duplicate(p: Path, b: Base) -> Path:
    with pytest.warns(UserWarning, match="Duplicate name"):
        return _write(p, b.manifest, _entries_plus(b, (b.target_name, b"x")))


def _oversized_manifest(p: Path, b: Base) -> Path:
    return _tamper(p, b, lambda m: m.update(notes="x" * (5 << 20)))


def _no_manifest(p: Path, b: Base) -> Path:
    with zipfile.ZipFile(p, "w") as z:
        for name, data in b.entries:
            z.writestr(name, data)
    return p


def _deep_json(p: Path, b: Base) -> Path:
    return _write(p, b"[" * 200_000 + b"]" * 200_000, b.entries)


def _keep_missing(p: Path, b: Base) -> Path:
    m = json.loads(json.dumps(b.manifest))
    m["background"]["policy"] = "keep"
    m["tiles"]["stored"] -= 1
    return _write(p, m, _without_target(b))


def _tile_size(value: object) -> Callable[[Path, Base], Path]:
    return _m(lambda m: m.update(tile_size=value))


MORE_CASES = {
    "backslash_name": (_e(lambda b: _entries_plus(b, ("L0\\00000_00000.jpg", b"x"))),
                       r"unsafe entry name"),
    "nul_name": (_nul_name, r"unsafe entry name 'L0/evil\\x00x\.jpg'"),
    "unknown_entry": (_e(lambda b: _entries_plus(b, ("notes.txt", b"x"))),
                      r"unexpected entry 'notes\.txt'"),
    "tile_outside_level": (_e(lambda b: _entries_plus(b, ("L0/00099_00000.jpg", b"x"))),
                           r"'L0/00099_00000\.jpg' lies outside level 0 \(12 rows"),
    "tile_of_missing_level": (_e(lambda b: _entries_plus(b, ("L7/00000_00000.jpg", b"x"))),
                              r"tile of level 7; the manifest has levels 0\.\.4"),
    "tile_wrong_suffix": (_e(lambda b: _entries_plus(b, ("L0/00000_00000.png", b"x"))),
                          r"unexpected entry 'L0/00000_00000\.png'"),
    "duplicate_entry": (_duplicate, r"appears twice"),
    "removed_tile": (_e(_without_target), r"says (\d+) tiles are stored, the archive holds"),
    "encrypted_entry": (_patched(flags=1), r"encrypted"),
    "entry_over_max_entry_bytes": (_patched(compressed=BOMB_BYTES, size=BOMB_BYTES),
                                   r"declares 2147483648 bytes, over the limit max_entry_bytes"),
    "entry_over_tile_bound": (
        _e(lambda b: [(n, bytes(4 << 20) if n == b.target_name else d) for n, d in b.entries]),
        r"declares 4194304 bytes; a coded 256 px tile is at most"),
    "entry_past_its_data": (_patched(compressed=3 << 20, size=3 << 20),
                            r"declares 3145728 bytes, more than the file holds"),
    "stored_sizes_differ": (_patched(size=12345), r"declares 12345 bytes but stores"),
    "no_manifest": (_no_manifest, r"not a slidepress container \(no manifest\.json\)"),
    "manifest_too_large": (_oversized_manifest, r"manifest\.json declares \d+ bytes; .* at most"),
    "manifest_nested_deep": (_deep_json, r"not valid JSON \(nested too deeply\)"),
    "foreign_format": (_m(lambda m: m.update(format="zarr")), r"not a slidepress container"),
    "version_is_bool": (_m(lambda m: m.update(format_version=True)),
                        r"'format_version' must be an integer, got true"),
    "version_missing": (_m(lambda m: m.pop("format_version")), r"'format_version' is missing"),
    "tile_size_string": (_tile_size("256"), r"'tile_size' must be an integer, got \"256\""),
    "tile_size_not_16x": (_tile_size(200), r"tile_size is 200; expected a multiple of 16"),
    "tile_size_huge": (_tile_size(1 << 20), r"'tile_size' is 1048576.*max_tile_side"),
    "levels_not_list": (_m(lambda m: m.update(levels={"0": {}})), r"'levels' must be a list"),
    "level_not_object": (_m(lambda m: m["levels"].__setitem__(1, 5)),
                         r"'levels\[1\]' must be an object"),
    "level_key_missing": (_m(lambda m: m["levels"][2].pop("rows")),
                          r"'levels\[2\]\.rows' is missing"),
    "level_index_wrong": (_level(1, index=3), r"'levels\[1\]\.index' is 3"),
    "rows_inconsistent": (_level(0, rows=13), r"'levels\[0\]\.rows' is 13; 2967 px .* need 12"),
    "level_zero_width": (_level(0, width=0), r"'levels\[0\]\.width' is 0; it must be >= 1"),
    "mpp_nan": (_level(0, mpp=float("nan")), r"'levels\[0\]\.mpp' is NaN; it must be a finite"),
    "downsample_inf": (_level(1, downsample=float("inf")),
                       r"'levels\[1\]\.downsample' is Infinity"),
    "level0_downsample": (_level(0, downsample=2.0), r"level 0 has downsample 1"),
    "level_not_halved": (_level(1, width=2220, cols=9), r"'levels\[1\]\.width' is 2220"),
    "downsample_jump": (_level(2, downsample=64.0), r"'levels\[2\]\.downsample' is 64"),
    "mpp_inconsistent": (_level(3, mpp=0.5), r"'levels\[3\]\.mpp' is 0\.5"),
    "level_past_one_tile": (
        _m(lambda m: m["levels"].append({**m["levels"][-1], "index": 5, "width": 69,
           "height": 92, "downsample": 32.0, "mpp": m["levels"][-1]["mpp"] * 2})),
        r"'levels\[5\]' follows a level that already fits in one tile"),
    "unknown_codec": (_m(lambda m: m["codec"].update(name="bmp")), r"unknown codec 'bmp'"),
    "codec_quality_out_of_range": (_m(lambda m: m["codec"].update(quality=500)),
                                   r"quality 500 outside its range"),
    "codec_quality_string": (_m(lambda m: m["codec"].update(quality="high")),
                             r"'codec\.quality' must be a finite number or null"),
    "codec_params_collide": (_m(lambda m: m["codec"].update(params={"quality": 1})),
                             r"'codec\.params' \['quality'\] are not accepted"),
    "codec_params_not_object": (_m(lambda m: m["codec"].update(params=[1])),
                                r"'codec\.params' must be an object"),
    "unknown_policy": (_m(lambda m: m["background"].update(policy="drop")),
                       r"background\.policy is \"drop\""),
    "background_missing": (_m(lambda m: m.pop("background")), r"'background' is missing"),
    "constant_without_tile": (_m(lambda m: m["background"].update(policy="constant")),
                              r"policy 'constant' but no background\.jpg"),
    "keep_with_tiles_missing": (_keep_missing, r"policy 'keep' stores all 152 tiles"),
    "tiles_total_wrong": (_m(lambda m: m["tiles"].update(total=7)), r"tiles\.total is 7"),
    "tiles_stored_negative": (_m(lambda m: m["tiles"].update(stored=-1)),
                              r"'tiles\.stored' is -1"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MORE_CASES))
def test_container_refuses_more(case, base, tmp_path):
    build, pattern = MORE_CASES[case]
    spz = build(tmp_path / f"{case}.spz", base)
    t0 = time.perf_counter()
    with pytest.raises(ContainerError, match=pattern) as e:
        Container(spz)
    assert "\n" not in str(e.value) and str(e.value).startswith(spz.name)
    assert time.perf_counter() - t0 < 5


# -- what must still open -----------------------------------------------------------------------
def test_informational_sections_are_tolerated(base, tmp_path):
    """Sections the reader does not interpret may change, grow or go missing."""

    def edit(m: dict) -> None:
        m["fidelity"] = {"psnr_db": 41.2, "dropped": {"tiles": 3, "max_deviation": 7}}
        m["background"].update(glass=[243, 241, 240], threshold=12, rule="a new rule")
        m["codec"]["library_version"] = "something else"
        m["tiles"]["by_level"] = [92, 0]
        m["future_section"] = {"anything": [1, 2]}
        for key in ("source", "tissue", "created", "slidepress_version"):
            m.pop(key, None)

    spz = _tamper(tmp_path / "t.spz", base, edit)
    with Container(spz) as c:
        assert c.source_name is None and len(c.levels) == len(base.manifest["levels"])
        tile = c.read_tile(0, *base.target)
    with Container(base.path) as ref:
        np.testing.assert_array_equal(tile, ref.read_tile(0, *base.target))
        assert ref.source_name == "CMU-1-Small-Region.svs"
    out = decompress_container(spz, tmp_path / "t.tiff", lossless=True)
    assert out.stat().st_size > 0


def test_limits_are_the_reason_and_can_be_raised(base, tmp_path):
    """The 10^6 px pyramid is otherwise consistent: raising the limit admits it."""
    from slidepress import limits

    spz = case_level_1e6_px(tmp_path / "big.spz", base)
    with pytest.raises(ContainerError, match="max_side"):
        Container(spz)
    with limits.override(max_side=2**20, max_pixels=2**40), Container(spz) as c:
        assert (c.levels[0].width, c.levels[0].rows) == (10**6, 3907)
        assert c.read_tile(0, *base.target).shape == (256, 256, 3)


def test_bomb_entry_really_is_a_bomb(base, tmp_path):
    """Guard for the test itself: the crafted entry is valid deflate of 2 GiB of zeros.

    Inflate only its first MiB (the whole stream would take the memory it is meant to)."""
    stream, _ = _zero_bomb(BOMB_BYTES)
    d = zlib.decompressobj(-15)
    head = d.decompress(stream, 1 << 20)
    assert head == bytes(1 << 20) and len(stream) < BOMB_BYTES / 500
    spz = case_zip_bomb(tmp_path / "bomb.spz", base)
    with zipfile.ZipFile(spz) as z:
        info = z.getinfo(base.target_name)
        assert (info.compress_type, info.file_size) == (zipfile.ZIP_DEFLATED, BOMB_BYTES)
        with z.open(info) as f:  # what the old reader did, a MiB at a time instead of all
            assert f.read(1 << 20) == bytes(1 << 20)


def test_tile_declaring_huge_size_is_refused_before_decoding():
    """A few KB of JPEG whose header declares 8000 x 8000 px: with the expected shape given,
    the decoder refuses it from the header (no 192 MB allocation)."""
    import tracemalloc

    from slidepress.codecs import get_codec
    from slidepress.errors import CodecError

    codec = get_codec("jpeg", 80)
    data = bytearray(codec.encode(np.full((256, 256, 3), 128, np.uint8)))
    sof = data.index(b"\xff\xc0")  # baseline frame header: height, width follow the precision
    data[sof + 5 : sof + 9] = (8000).to_bytes(2, "big") * 2
    tracemalloc.start()
    with pytest.raises(CodecError, match="not 256 x 256 x 3"):
        codec.decode(bytes(data), shape=(256, 256, 3))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10 << 20
    assert codec.decode(bytes(data)).shape == (8000, 8000, 3)  # what an unchecked decode does
