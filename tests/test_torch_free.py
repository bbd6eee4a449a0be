"""A base install (no torch extra) decodes `learned` and conventional containers.

Containers are written here in the normal process; a child process with torch (and every
other package of the torch extra) made unimportable opens them, decodes them and runs
`slidepress decompress`; its pixels must equal the ones decoded here. A `pathae` container
needs torch (its decoder is a torch network): the child gets one line saying so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slidepress.pipeline.compress import CompressOptions, compress_slide
from slidepress.store.container import Container

from .torch_blocker import BLOCKED, PREAMBLE

_CHILD = (
    PREAMBLE
    + """
from slidepress.errors import SlidepressError
from slidepress.store.container import Container

out, result = sys.argv[1], {}
arrays = {}
for name, path in json.loads(sys.argv[2]).items():
    try:
        with Container(path) as c:
            lv = c.levels[0]
            arrays[name] = c.read_region(0, 0, lv.width, lv.height)
        result[name] = "ok"
    except SlidepressError as e:
        result[name] = f"{type(e).__name__}: {e}"
np.savez(out + ".npz", **arrays)

from slidepress.cli.main import app

try:
    app(["decompress", json.loads(sys.argv[2])["learned"], "-o", out + ".tiff", "--lossless"])
except SystemExit as e:
    result["decompress_exit"] = e.code
result["loaded"] = sorted(m for m in sys.modules
                          if m.split(".")[0] in BLOCKED and sys.modules[m] is not None)
print(json.dumps(result))
"""
)


def _region(path: Path) -> np.ndarray:
    with Container(path) as c:
        lv = c.levels[0]
        return c.read_region(0, 0, lv.width, lv.height)


@pytest.fixture(scope="module")
def containers(tmp_path_factory) -> dict[str, Path]:
    from slidepress.slide import sample_slide_path

    out = tmp_path_factory.mktemp("torch_free")
    paths = {}
    for codec in ("learned", "jpegxl", "pathae"):
        paths[codec] = out / f"{codec}.spz"
        opts = CompressOptions(codec=codec, tile=256, mpp=4.0, workers=1)  # 3 x 2 tiles
        compress_slide(sample_slide_path(), paths[codec], opts)
    return paths


def test_decodes_without_torch(containers, tmp_path):
    pytest.importorskip("torch")  # the pathae container was written with it
    want = {name: _region(p) for name, p in containers.items()}
    out = tmp_path / "child"
    arg = json.dumps({k: str(v) for k, v in containers.items()})
    r = subprocess.run([sys.executable, "-c", _CHILD, str(out), arg], capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []  # nothing of the torch extra came in
    assert result["learned"] == result["jpegxl"] == "ok"
    with np.load(f"{out}.npz") as got:
        for name in ("learned", "jpegxl"):
            np.testing.assert_array_equal(got[name], want[name])
    # `slidepress decompress --lossless` of the learned container: the same level 0
    assert result.get("decompress_exit", 0) == 0, r.stderr
    import tifffile

    np.testing.assert_array_equal(tifffile.imread(f"{out}.tiff", level=0), want["learned"])
    # pathae decodes with a torch network: one line naming what to install
    assert result["pathae"] == (
        "UsageError: codec pathae needs torch (its decoder is a torch network): "
        "pip install 'slidepress[torch]'"
    )


def test_learned_runtime_imports_no_torch():
    """The learned codec's decoder modules (not only a container) import without torch."""
    code = (
        "import sys\n"
        f"for m in {BLOCKED!r}:\n"
        "    sys.modules[m] = None\n"
        "from slidepress.codecs import get_codec\n"
        "codec = get_codec('learned')\n"
        "print(codec.describe()['model']['weights_sha256'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    from slidepress import zoo

    assert r.stdout.strip() == zoo.WEIGHTS.get("codec-he-shallow-f32").sha256  # the default
