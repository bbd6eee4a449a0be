"""The weights zoo: one listing, one hash, the values outputs recorded before it existed."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from slidepress import zoo
from slidepress.cli.main import app
from slidepress.errors import UsageError

# The weights hashes the shipped weights had in grids and containers before the zoo (three
# hash functions then); a container records them and refuses to decode with another value.
SHIPPED_SHA256 = {
    "codec-he-shallow": "15eb094a59a987369dfb509d4072053b1cfd4074afdc776d9c11682bca59d6af",
    "codec-he-shallow-f32": "cfbc9fba277015779e59915ca3080bfa33233127e0c43ec13fe38dad82224083",
    "featsim-resnet18": "6825973411d93467ac517dad1ad8dd3cef294de8c66f3206f8e3ceee1fc26044",
    "pathae-he-f8c8": "95791a408339446ac24fc624094a5dc3eff87fd2f8384ecdb660ec1b94c60881",
    "nic-bigan": "dddb33506d7649db269b05581b402298ecad7c8cc5ed54f7c2b8f883cd939679",
    "nic-contrastive": "f730505c1dcd2ee86ca9b43966f560151e4fe65660c8e9922223ec4290d2c5c6",
    "nic-multitask": "a1b526adece26748d6a7a069af7d5880c6410b60e3725c6d1632cbaa99b4d11c",
    "nic-simclr": "d3ae0bee646ad96e2560ff61a3f9c880240d13789909bb6305728493827230e8",
    "nic-supervised": "0bc5f20d8f16ed0f93b2b89d75c7fdeeb9538db0cb2db2e869e7b9e67edc75df",
    "nic-vae": "8bad8262f0c5637f74faa322191f275c96b1b7b1f51f81742c7f3268bee0d275",
}
KINDS = {"codec-he-shallow": "codec", "codec-he-shallow-f32": "codec", "pathae-he-f8c8": "codec",
         "featsim-resnet18": "metric"}  # fmt: skip
SRC = Path(zoo.__file__).resolve().parent


@pytest.mark.parametrize("name", sorted(SHIPPED_SHA256))
def test_shipped_weights_keep_their_recorded_hash(name):
    w = zoo.WEIGHTS.get(name)
    assert w.shipped and w.folder == zoo.shipped_path(name) == zoo.ROOT / name
    assert w.sha256 == SHIPPED_SHA256[name]
    assert zoo.weights_sha256(w.folder) == SHIPPED_SHA256[name]  # format recognised
    assert zoo.detect_format(w.folder) is w.format
    assert w.kind == KINDS.get(name, "encoder")
    assert w.card == w.folder / "MODEL_CARD.md"
    assert w.size == sum(f.stat().st_size for f in w.files()) > 1e6


def test_every_shipped_folder_is_in_the_zoo():
    folders = sorted(p.name for p in zoo.ROOT.iterdir() if p.is_dir())
    assert folders == sorted(w.name for w in zoo.shipped()) == sorted(SHIPPED_SHA256)
    assert [w.name for w in zoo.shipped(kind="codec")] == [
        "codec-he-shallow-f32", "codec-he-shallow", "pathae-he-f8c8"]  # fmt: skip
    assert zoo.used_by("codec", "learned").name == "codec-he-shallow-f32"  # the default
    assert zoo.default_path("codec", "learned") == zoo.shipped_path("codec-he-shallow-f32")
    with pytest.raises(UsageError, match="no shipped weights"):
        zoo.default_path("codec", "jpeg")
    assert zoo.used_by("encoder", "nic-vae").name == "nic-vae"
    assert zoo.used_by("codec", "jpeg") is None
    with pytest.raises(UsageError, match="unknown weights 'nope'; choose from codec-he-shallow"):
        zoo.shipped_path("nope")


def test_loaders_record_the_zoo_hash():
    from slidepress.codecs.learned.codec import load_model

    assert load_model().weights_sha256 == SHIPPED_SHA256["codec-he-shallow-f32"]  # numpy only
    old = load_model(zoo.shipped_path("codec-he-shallow"))
    assert old.weights_sha256 == SHIPPED_SHA256["codec-he-shallow"]
    pytest.importorskip("torch")
    from slidepress.codecs.autoencoder.loading import load_bundle
    from slidepress.encoders import get_encoder

    assert (
        load_bundle(zoo.shipped_path("pathae-he-f8c8")).weights_sha256
        == SHIPPED_SHA256["pathae-he-f8c8"]
    )
    assert get_encoder("nic-supervised").weights_hash == SHIPPED_SHA256["nic-supervised"]
    assert zoo.WEIGHTS.get("nic-supervised").load().name == "nic-supervised"


# -- the one hash reproduces each of the three old ones ------------------------------------


def _old_file(path: Path) -> str:  # encoders/base.file_sha256: one file's bytes
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _old_learned(folder: Path) -> str:  # codecs/learned/export.weights_hash
    h = hashlib.sha256()
    for name in ("decoder.npz", "encoder.safetensors"):
        h.update((folder / name).read_bytes())
    return h.hexdigest()


def _old_bundle(files: list[Path]) -> str:  # codecs/autoencoder/loading.weights_hash
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


def test_one_hash_reproduces_the_three_old_ones(tmp_path):
    root = zoo.ROOT
    for name in ("nic-bigan", "featsim-resnet18"):
        assert _old_file(root / name / "model.safetensors") == SHIPPED_SHA256[name]
    assert _old_learned(root / "codec-he-shallow") == SHIPPED_SHA256["codec-he-shallow"]
    ae = root / "pathae-he-f8c8"
    assert (
        _old_bundle([ae / "model.safetensors", ae / "quantizers.npz"])
        == SHIPPED_SHA256["pathae-he-f8c8"]
    )
    # a single weights file (torchscript:PATH, timm:MODEL@FILE, a featsim state dict)
    f = tmp_path / "w.pt"
    f.write_bytes(b"weights" * 1000)
    assert zoo.weights_sha256(f) == _old_file(f)
    # a diffusers bundle: the model's weight files at any depth (sorted), then quantizers.npz
    b = tmp_path / "kl"
    (b / "model" / "sub").mkdir(parents=True)
    (b / "pathae.json").write_text(json.dumps({"format": "slidepress-pathae/1",
                                               "kind": "diffusers"}))  # fmt: skip
    for rel, data in [("model/config.json", b"{}"), ("model/sub/x.bin", b"x"),
                      ("model/diffusion.safetensors", b"w"), ("model/README.md", b"no"),
                      ("quantizers.npz", b"q")]:  # fmt: skip
        (b / rel).write_bytes(data)
    files = [b / "model/config.json", b / "model/diffusion.safetensors", b / "model/sub/x.bin"]
    assert zoo.weights_sha256(b) == _old_bundle([*files, b / "quantizers.npz"])
    from slidepress.codecs.autoencoder.loading import weights_hash

    assert weights_hash([*files, b / "quantizers.npz"]) == zoo.weights_sha256(b)


def test_only_the_zoo_builds_weights_paths_and_hashes_weights():
    texts = {str(p.relative_to(SRC)): p.read_text() for p in SRC.rglob("*.py")}
    paths = [f for f, t in texts.items() if "__file__" in t and '"weights"' in t]
    hashers = [f for f, t in texts.items() if "hashlib.sha256()" in t and "weights" in t]
    assert paths == hashers == ["zoo.py"]


# -- user weights --------------------------------------------------------------------------


def _user_copy(name: str, dst: Path, files: tuple[str, ...]) -> Path:
    dst.mkdir()
    for f in files:
        shutil.copy(zoo.shipped_path(name) / f, dst / f)
    return dst


def test_user_folders_are_described_like_shipped_ones(tmp_path):
    nic = _user_copy("nic-multitask", tmp_path / "my-run", ("config.json", "model.safetensors"))
    codec = _user_copy("codec-he-shallow", tmp_path / "my-codec",
                       ("config.json", "decoder.npz", "encoder.safetensors"))  # fmt: skip
    fs = _user_copy("featsim-resnet18", tmp_path / "my-fs", ("config.json", "model.safetensors"))
    for folder, fmt, kind, shipped in [(nic, "nic-encoder", "encoder", "nic-multitask"),
                                       (codec, "learned-codec", "codec", "codec-he-shallow"),
                                       (fs, "featsim", "metric", "featsim-resnet18")]:  # fmt: skip
        w = zoo.from_folder(folder)
        assert (w.name, w.format.name, w.kind, w.shipped) == (folder.name, fmt, kind, False)
        assert w.sha256 == SHIPPED_SHA256[shipped] and w.card is None
    w = zoo.register(nic, name="mine")
    try:
        assert zoo.WEIGHTS.get("mine") is w and w not in zoo.shipped()
        with pytest.raises(UsageError, match="names shipped weights"):
            zoo.register(nic, name="nic-vae")
    finally:
        zoo.WEIGHTS.remove("mine")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="not a weights folder slidepress knows"):
        zoo.from_folder(tmp_path / "empty")
    (codec / "decoder.npz").unlink()  # no longer a learned codec; config.json alone is nothing
    with pytest.raises(UsageError, match="not a weights folder"):
        zoo.from_folder(codec)


def test_learned_codec_from_a_user_folder_records_its_hash(tmp_path):
    from slidepress.codecs import get_codec

    folder = _user_copy("codec-he-shallow", tmp_path / "w",
                        ("config.json", "decoder.npz", "encoder.safetensors"))  # fmt: skip
    dec = dict(np.load(folder / "decoder.npz"))
    dec["synth.0.bias"] = dec["synth.0.bias"] + 1
    with open(folder / "decoder.npz", "wb") as f:
        np.savez(f, **dec)
    sha = get_codec("learned", weights=str(folder)).describe()["model"]["weights_sha256"]
    assert sha == zoo.from_folder(folder).sha256 != SHIPPED_SHA256["codec-he-shallow"]


# -- listings ------------------------------------------------------------------------------


def test_weights_encoders_and_codecs_listings(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["weights"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split() == ["name", "kind", "use", "size", "sha256", "model", "card"]
    for name, sha in SHIPPED_SHA256.items():
        row = next(line for line in lines if line.startswith(name + " "))
        assert sha[:12] in row and "MB" in row and row.endswith("MODEL_CARD.md")
    assert "--codec learned" in r.output and "--encoder nic-vae" in r.output
    # the default learned weights are the codec's; the older folder only decodes its outputs
    rows = {line.split()[0]: line for line in lines[1:]}
    assert "(decodes its outputs)" not in rows["codec-he-shallow-f32"]
    assert "--codec learned (decodes its outputs)" in rows["codec-he-shallow"]
    run = _user_copy("nic-vae", tmp_path / "run1", ("config.json", "model.safetensors"))
    r = runner.invoke(app, ["weights", str(run), "--json"])
    assert r.exit_code == 0, r.output
    listed = {d["name"]: d for d in json.loads(r.output)}
    assert listed["run1"]["sha256"] == SHIPPED_SHA256["nic-vae"] and not listed["run1"]["shipped"]
    assert listed["pathae-he-f8c8"]["format"] == "autoencoder"
    r = runner.invoke(app, ["weights", str(tmp_path)])
    assert r.exit_code == 2 and "not a weights folder" in r.output
    r = runner.invoke(app, ["encoders"])
    assert f"sha256 {SHIPPED_SHA256['nic-bigan'][:12]}" in r.output
    r = runner.invoke(app, ["codecs"])
    learned = next(line for line in r.output.splitlines() if line.startswith("learned "))
    assert (
        "weights codec-he-shallow-f32, 2.3 MB, sha256 "
        f"{SHIPPED_SHA256['codec-he-shallow-f32'][:12]}"
    ) in learned
