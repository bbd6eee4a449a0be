"""Schema of a container's manifest.json, checked before any tile is read or decoded.

Why a hand-written validator: the checks that matter are relations (rows = ceil(height /
tile), each level about half the previous one, level-0 pixels within the limits) that a JSON
schema cannot express, and every failure must be one line naming the key. A manifest is
attacker-controlled input: a 10^6 px level, 10,000 levels, tile size 0 or NaN resolutions
would otherwise hang `decompress` or exhaust memory.

What is checked (the structural fields; everything the reader relies on):
    format, format_version   this slidepress reads versions 1..FORMAT_VERSION
    tile_size                a multiple of 16 in 16..limits.max_tile_side
    levels                   1..limits.max_levels entries with exactly LEVEL_KEYS; index i;
                             sides within limits.max_side, level-0 pixels within max_pixels;
                             rows/cols = ceil(side / tile); downsample 1 at level 0, then each
                             level ~2x the previous (the writer's pyramid, so the tile count is
                             bounded by ~4/3 of level 0); mpp finite, > 0, mpp_k = mpp_0 * ds_k
    codec                    a known codec with a valid quality; params an object; a model
                             codec decodes only with the weights whose hash `model` records:
                             its default's, or other weights the zoo holds (an older default,
                             or a recorded `weights` folder that is not on this machine),
                             found by that hash; others are refused
    background.policy        one of BACKGROUND_POLICIES
    tiles.stored / .total    non-negative integers when present (the count is checked against
                             the archive's entries by the container)
Informational sections (source, tissue, fidelity, created, slidepress_version, extra keys of
background, codec and tiles, unknown top-level keys) are tolerated and not interpreted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from .. import limits, zoo
from ..codecs import Codec, get_codec
from ..errors import CodecError, ContainerError

FORMAT_NAME = "slidepress-container"
FORMAT_VERSION = 1
BACKGROUND_POLICIES = ("skip", "constant", "keep")
LEVEL_KEYS = ("index", "width", "height", "rows", "cols", "downsample", "mpp")
MAX_MANIFEST_BYTES = 4 << 20  # a real manifest is a few KB; JSON of 4 MB parses in ~0.1 s
# Writer's pyramid: factor 2 per level; a source level it snaps to may differ by 5% (tiling's
# SNAP_TOLERANCE) at either end, so consecutive levels differ by 2 x (1.05 / 0.95)^+-1
# = 1.81-2.21 (2.5% and 1.85-2.15 before issue 19: older containers stay inside).
LEVEL_FACTOR_RANGE = (1.80, 2.22)


@dataclass(frozen=True)
class ContainerLevel:
    index: int
    width: int  # pixels at this level
    height: int
    rows: int  # tiles
    cols: int
    downsample: float  # container level-0 pixels per pixel of this level
    mpp: float


@dataclass(frozen=True)
class ManifestLayout:
    """The validated structural part of a manifest: what a reader may rely on."""

    format_version: int
    tile: int
    levels: list[ContainerLevel]
    codec: Codec
    background: str
    tiles_stored: int | None  # as declared; None when the manifest does not say

    @property
    def tiles_total(self) -> int:
        return sum(lv.rows * lv.cols for lv in self.levels)


def parse_manifest(raw: bytes, name: str) -> dict[str, Any]:
    """manifest.json bytes -> a JSON object, or ContainerError (not JSON, nested too deep...)."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError, JSONDecodeError, digits
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise ContainerError(
            f"{name}: manifest.json is not valid JSON ({reason}); the container is damaged"
        ) from None
    if not isinstance(data, dict):
        raise ContainerError(
            f"{name}: manifest.json holds a JSON {_kind(data)}, not an object; "
            "not a slidepress container"
        )
    return data


def validate_manifest(m: dict[str, Any], name: str) -> ManifestLayout:
    """Check every structural field of a parsed manifest; raise ContainerError naming the key."""
    if m.get("format") != FORMAT_NAME:
        raise ContainerError(
            f"{name}: not a slidepress container (manifest format is not {FORMAT_NAME!r})"
        )
    v = _Validator(name)
    version = v.int_in(m, "format_version", 1, None)
    if version > FORMAT_VERSION:
        raise ContainerError(
            f"{name}: written by a newer slidepress (container format {version}; this one reads "
            f"up to {FORMAT_VERSION}): upgrade slidepress"
        )
    lim = limits.current()
    tile = v.int_in(m, "tile_size", 16, lim.max_tile_side, hint="max_tile_side")
    if tile % 16:
        v.fail(f"tile_size is {tile}; expected a multiple of 16")
    levels = v.levels(m, tile, lim)
    codec = v.codec(m)
    background = v.obj(m, "background")
    policy = v.get(background, "policy", "background.policy")
    if policy not in BACKGROUND_POLICIES:
        known = ", ".join(BACKGROUND_POLICIES)
        v.fail(f"background.policy is {_show(policy)}; expected one of {known}")
    if "mpp" in m:
        v.positive(m, "mpp")
    stored = None
    if "tiles" in m:
        tiles = v.obj(m, "tiles")
        total = sum(lv.rows * lv.cols for lv in levels)
        if "stored" in tiles:
            stored = v.int_in(tiles, "stored", 0, total, key="tiles.stored")
        if "total" in tiles and v.int_in(tiles, "total", 0, None, key="tiles.total") != total:
            v.fail(f"tiles.total is {_show(tiles['total'])}; the levels hold {total} tiles")
    return ManifestLayout(version, tile, levels, codec, policy, stored)


class _Validator:
    """Type and range checks that raise one line: '<file>: manifest: <key> ...'."""

    def __init__(self, name: str):
        self.name = name

    def fail(self, what: str) -> NoReturn:
        raise ContainerError(
            f"{self.name}: manifest: {what}; the container is damaged or was not written by "
            "slidepress: restore or re-create it"
        )

    def get(self, obj: dict[str, Any], field: str, key: str | None = None) -> Any:
        if field not in obj:
            self.fail(f"required key '{key or field}' is missing")
        return obj[field]

    def obj(self, m: dict[str, Any], field: str) -> dict[str, Any]:
        value = self.get(m, field)
        if not isinstance(value, dict):
            self.fail(f"'{field}' must be an object, got a JSON {_kind(value)}")
        return value

    def int_in(
        self,
        obj: dict[str, Any],
        field: str,
        lo: int | None,
        hi: int | None,
        *,
        key: str | None = None,
        hint: str | None = None,
    ) -> int:
        key = key or field
        value = self.get(obj, field, key)
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(f"'{key}' must be an integer, got {_show(value)}")
        if lo is not None and value < lo:
            self.fail(f"'{key}' is {_show(value)}; it must be >= {lo}")
        if hi is not None and value > hi:
            extra = f" (limit {hint}; {limits.hint(hint)})" if hint else ""
            self.fail(f"'{key}' is {_show(value)}; it must be <= {hi}{extra}")
        return value

    def positive(self, obj: dict[str, Any], field: str, key: str | None = None) -> float:
        key = key or field
        value = self.get(obj, field, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(f"'{key}' must be a number, got {_show(value)}")
        if not math.isfinite(value) or value <= 0:
            self.fail(f"'{key}' is {_show(value)}; it must be a finite number > 0")
        return float(value)

    def levels(self, m: dict[str, Any], tile: int, lim: limits.Limits) -> list[ContainerLevel]:
        raw = self.get(m, "levels")
        if not isinstance(raw, list):
            self.fail(f"'levels' must be a list, got a JSON {_kind(raw)}")
        if not raw:
            self.fail("'levels' is empty; a container holds at least level 0")
        if len(raw) > lim.max_levels:
            self.fail(
                f"{len(raw)} levels; at most {lim.max_levels} are allowed (limit "
                f"max_levels; {limits.hint('max_levels')})"
            )
        out: list[ContainerLevel] = []
        for i, entry in enumerate(raw):
            key = f"levels[{i}]"
            if not isinstance(entry, dict):
                self.fail(f"'{key}' must be an object, got a JSON {_kind(entry)}")
            unknown = [k for k in entry if k not in LEVEL_KEYS]
            if unknown:
                self.fail(
                    f"'{key}' has unknown key {_show(unknown[0])}; a level has exactly "
                    f"{', '.join(LEVEL_KEYS)}"
                )
            self.int_in(entry, "index", i, i, key=f"{key}.index")
            width, height = (
                self.int_in(entry, f, 1, lim.max_side, key=f"{key}.{f}", hint="max_side")
                for f in ("width", "height")
            )
            for field, size in (("rows", height), ("cols", width)):
                n = self.int_in(entry, field, 0, None, key=f"{key}.{field}")
                if n != -(-size // tile):
                    self.fail(
                        f"'{key}.{field}' is {_show(n)}; {size} px in tiles of {tile} px need "
                        f"{-(-size // tile)}"
                    )
            ds = self.positive(entry, "downsample", f"{key}.downsample")
            mpp = self.positive(entry, "mpp", f"{key}.mpp")
            lv = ContainerLevel(i, width, height, -(-height // tile), -(-width // tile), ds, mpp)
            if i == 0:
                self._check_level0(lv, lim)
            else:
                self._check_reduced(lv, out[0], out[-1], tile)
            out.append(lv)
        return out

    def _check_level0(self, lv: ContainerLevel, lim: limits.Limits) -> None:
        if abs(lv.downsample - 1) > 1e-6:
            self.fail(f"'levels[0].downsample' is {lv.downsample}; level 0 has downsample 1")
        if lv.width * lv.height > lim.max_pixels:
            self.fail(
                f"level 0 is {lv.width} x {lv.height} = {lv.width * lv.height} px; at most "
                f"{lim.max_pixels} are allowed (limit max_pixels; "
                f"{limits.hint('max_pixels')})"
            )

    def _check_reduced(
        self, lv: ContainerLevel, first: ContainerLevel, prev: ContainerLevel, tile: int
    ) -> None:
        key = f"levels[{lv.index}]"
        if max(prev.width, prev.height) <= tile:
            self.fail(
                f"'{key}' follows a level that already fits in one tile "
                f"({prev.width} x {prev.height} px); the pyramid ends there"
            )
        lo, hi = LEVEL_FACTOR_RANGE
        factor = lv.downsample / prev.downsample
        if not lo <= factor <= hi:
            self.fail(
                f"'{key}.downsample' is {lv.downsample}, {factor:.3g} x the previous "
                f"level's; each level is ~2 x the previous"
            )
        for field in ("width", "height"):
            size, size0 = getattr(lv, field), getattr(first, field)
            if abs(size - size0 / lv.downsample) > 2:
                self.fail(
                    f"'{key}.{field}' is {size}; level 0's {size0} px at downsample "
                    f"{lv.downsample:g} gives {size0 / lv.downsample:.0f}"
                )
        if abs(lv.mpp / (first.mpp * lv.downsample) - 1) > 1e-3:
            self.fail(
                f"'{key}.mpp' is {lv.mpp}; level 0's {first.mpp} um/px at downsample "
                f"{lv.downsample:g} gives {first.mpp * lv.downsample:g}"
            )

    def codec(self, m: dict[str, Any]) -> Codec:
        c = self.obj(m, "codec")
        name = self.get(c, "name", "codec.name")
        if not isinstance(name, str):
            self.fail(f"'codec.name' must be a string, got {_show(name)}")
        quality = c.get("quality")
        if quality is not None and (
            isinstance(quality, bool)
            or not isinstance(quality, int | float)
            or not math.isfinite(quality)
        ):
            self.fail(f"'codec.quality' must be a finite number or null, got {_show(quality)}")
        params = c.get("params", {})
        if not isinstance(params, dict):
            self.fail(f"'codec.params' must be an object, got a JSON {_kind(params)}")
        model = c.get("model")
        if model is not None and not isinstance(model, dict):
            self.fail(f"'codec.model' must be an object, got {_show(model)}")
        weights = params.get("weights")
        if isinstance(weights, str) and not Path(weights).exists():
            known = _known_weights(name, model)  # recorded where this machine has no folder
            if known is not None:
                params = {**params, "weights": known}
        codec = self.build(name, quality, params)
        recorded = _weights_sha256(c)
        if recorded is not None and _weights_sha256(codec.describe()) != recorded:
            known = _known_weights(name, model)  # coded with other weights the zoo holds
            if known is not None and known != params.get("weights"):
                codec = self.build(name, quality, {**params, "weights": known})
        self.same_model(c, codec)
        return codec

    def build(self, name: str, quality: float | None, params: dict[str, Any]) -> Codec:
        try:
            return get_codec(name, quality, **params)
        except CodecError as e:
            self.fail(f"codec: {e}")
        except TypeError:  # a params key that collides with the codec's own arguments
            self.fail(f"'codec.params' {sorted(params)} are not accepted by codec {name!r}")

    def same_model(self, recorded: dict[str, Any], codec: Codec) -> None:
        """A learned codec decodes only with the weights it encoded with: other weights would
        give wrong pixels without any error."""
        want = recorded.get("model")
        if want is None:
            return
        if not isinstance(want, dict):
            self.fail(f"'codec.model' must be an object, got {_show(want)}")
        have = codec.describe().get("model") or {}
        w_sha, h_sha = want.get("weights_sha256"), have.get("weights_sha256")
        if w_sha != h_sha:
            self.fail(
                f"coded with {want.get('name')} v{want.get('version')} (weights "
                f"{str(w_sha)[:12]}), but this slidepress has {have.get('name')} "
                f"v{have.get('version')} (weights {str(h_sha)[:12]}): decoding with other weights "
                "would give wrong pixels; use the slidepress version that wrote it"
            )


def _weights_sha256(described: dict[str, Any]) -> Any:
    """A codec's weights hash from its describe() or a manifest's `codec` (None: no model)."""
    model = described.get("model")
    return model.get("weights_sha256") if isinstance(model, dict) else None


def _known_weights(codec: str, model: dict[str, Any] | None) -> str | None:
    """The folder of the weights, shipped or registered, that `codec` was coded with (the hash
    its manifest records), if this slidepress holds them: an older default, or a folder
    recorded by a path that is not on this machine."""
    sha = (model or {}).get("weights_sha256")
    if not isinstance(sha, str):
        return None
    w = zoo.by_sha256(sha, "codec", codec)
    return None if w is None else str(w.folder)


def _kind(value: Any) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number" if isinstance(value, int | float) else "value")


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, dict | list) else f"a JSON {_kind(value)}"
    return text if len(text) <= 40 else text[:37] + "..."
