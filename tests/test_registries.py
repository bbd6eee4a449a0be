"""One Registry type: lazy entries, the project's errors listing valid names, fast help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from slidepress.errors import CodecError, EncoderError, FormatError, SlideError, UsageError
from slidepress.registry import Registry


def test_registry_lazy_entries_and_errors():
    r: Registry = Registry("widget", UsageError, name_attr="name")
    r.add("json", "json:JSONDecoder", summary="the standard library's decoder")
    r.add("mod", "textwrap", suffixes=(".txt", ".text"))

    @r.register("local")
    class Local:
        """A widget defined here."""

    assert r.names() == ["json", "mod", "local"] and "json" in r and len(r) == 3
    assert r.entry("json").lazy and r.entry("json").summary.startswith("the standard")
    assert r.entry("local").summary == "A widget defined here."
    import json

    assert r.get("json") is json.JSONDecoder and json.JSONDecoder.name == "json"
    assert r["mod"].__name__ == "textwrap"
    assert r.for_suffix(".TEXT") == "mod" and r.suffixes() == [".txt", ".text"]
    with pytest.raises(UsageError, match=r"unknown widget 'nope'; choose from json, mod, local"):
        r.get("nope")
    del json.JSONDecoder.name


@pytest.mark.parametrize(
    "lookup,error,valid",
    [
        ("slidepress.slide:READERS", SlideError, "openslide"),
        ("slidepress.codecs:CODECS", CodecError, "jpegxl"),
        ("slidepress.store.formats:FORMATS", FormatError, "zarr"),
        ("slidepress.encoders:ENCODERS", EncoderError, "mean-rgb"),
        ("slidepress.encoders:LOADERS", EncoderError, "torchscript"),
    ],
)
def test_every_registry_rejects_unknown_names(lookup, error, valid):
    import importlib

    module, _, attr = lookup.partition(":")
    reg = getattr(importlib.import_module(module), attr)
    with pytest.raises(error, match=rf"unknown .*'bogus'; choose from .*{valid}"):
        reg.get("bogus")


def test_front_doors_name_the_valid_choices(sample_svs):
    from slidepress.codecs import get_codec
    from slidepress.encoders import get_encoder
    from slidepress.slide import open_slide
    from slidepress.store import format_for

    with pytest.raises(CodecError, match="choose from jpeg, jpegxl"):
        get_codec("gif")
    with pytest.raises(EncoderError, match="choose from mean-rgb.*nic-multitask.*timm:"):
        get_encoder("resnet")
    with pytest.raises(SlideError, match="unknown reader 'bioformats'; choose from spz, tifffile"):
        open_slide(sample_svs, reader="bioformats")
    with pytest.raises(FormatError, match=r"\.zarr, \.npz, \.mha, \.h5, \.hdf5"):
        format_for("grid.parquet")


HEAVY = ("torch", "imagecodecs", "openslide", "zarr", "SimpleITK", "h5py")


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["encode", "--help"], ["compress", "--help"], ["encoders"]],
    ids=["help", "encode-help", "compress-help", "encoders"],
)
def test_help_and_listing_import_nothing_heavy(argv):
    code = (
        "import sys\n"
        "from slidepress.cli.main import app\n"
        "try:\n"
        f"    app({argv!r}, standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout


def test_encoders_listing_includes_shipped_nic():
    r = subprocess.run(
        [sys.executable, "-m", "slidepress", "encoders"], capture_output=True, text=True
    )
    assert r.returncode == 0
    names = r.stdout.split()
    assert "mean-rgb" in names and "nic-multitask" in names and "torchscript:..." in names
