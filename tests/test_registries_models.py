"""The registries of NIC methods, slide models and tasks: names listable without torch, unknown
names refused with the valid ones, tasks and methods owning their switches; grids of every
registered suffix found; `train encoder --mpp-override` reaching the slides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from slidepress.cli.main import app
from slidepress.encoders.nic import DEFAULT_LR, METHODS, NICConfig, default_lr
from slidepress.errors import UsageError
from slidepress.slidemodel import SLIDE_MODELS, TASKS, build_slide_model, build_task
from slidepress.store import write_grid
from slidepress.store.formats import grid_suffixes
from slidepress.store.grid import EmbeddingGrid

runner = CliRunner()

REGISTRIES = [
    (METHODS, "NIC method", ["vae", "contrastive", "bigan", "multitask", "supervised", "simclr"]),
    (SLIDE_MODELS, "slide model", ["nic-cnn", "abmil"]),
    (TASKS, "task", ["classify", "regress", "survival"]),
]


@pytest.mark.parametrize(("registry", "kind", "names"), REGISTRIES)
def test_unknown_names_are_refused_with_the_valid_ones(registry, kind, names):
    assert registry.names() == names
    for call in (registry.get, registry.entry):
        with pytest.raises(UsageError) as e:
            call("nope")
        assert str(e.value) == f"unknown {kind} 'nope'; choose from {', '.join(names)}"
    assert all(registry.entry(n).summary for n in names)  # help texts need no import


def test_builders_refuse_unknown_names_with_usage_errors():
    for build, name in [
        (lambda: build_slide_model("vit", 4, 2), "vit"),
        (lambda: build_task("segment"), "segment"),
        (lambda: NICConfig("gan"), "gan"),  # the default LR lookup already knows the method
    ]:
        with pytest.raises(UsageError, match=f"'{name}'; choose from "):
            build()


def test_methods_declare_their_learning_rate():
    assert NICConfig("bigan").lr == default_lr("bigan") == 2e-4
    assert NICConfig("vae").lr == default_lr("vae") == DEFAULT_LR
    assert NICConfig("bigan", lr=1e-2).lr == 1e-2  # an explicit rate wins


def _torch_after(args: list[str]) -> bool:
    code = (
        "import sys\n"
        "from slidepress.cli.main import app\n"
        "try:\n"
        f"    app({args!r}, standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize(
    "args",
    [["train", "--help"], ["train", "slide-model", "--help"], ["train", "encoder", "--help"]],
)
def test_train_help_does_not_import_torch(args):
    assert not _torch_after(args)


def test_train_help_lists_the_registered_names():
    for args, registries in [
        (["train", "encoder", "--help"], [METHODS]),
        (["train", "slide-model", "--help"], [TASKS, SLIDE_MODELS]),
    ]:
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        text = " ".join(r.output.replace("│", " ").split())  # undo rich's wrapping
        for registry in registries:
            for name in registry:
                assert f"{name}: {registry.entry(name).summary}" in text


# -- grids of every registered suffix ------------------------------------------------------


def _cohort(folder: Path, suffix: str, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir()
    rows = ["slide,label"]
    for i in range(n):
        f = rng.normal(0, 0.3, (6, 6, 3)).astype(np.float32)
        f[2:4, 2:4, 0] += 3.0 * (i % 2)
        write_grid(EmbeddingGrid.from_features(f, np.ones((6, 6), bool), cell=64),
                   folder / f"s{i}{suffix}")  # fmt: skip
        rows.append(f"s{i},{'ab'[i % 2]}")
    labels = folder.parent / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return labels


def test_find_grids_knows_every_format_suffix(tmp_path):
    from slidepress.slidemodel.data import find_grids, slide_id

    assert ".hdf5" in grid_suffixes()
    _cohort(tmp_path / "g", ".hdf5", n=2)
    (tmp_path / "g" / "notes.txt").write_text("not a grid")
    found = find_grids([tmp_path / "g"])
    assert [p.name for p in found] == ["s0.hdf5", "s1.hdf5"]
    assert [slide_id(p) for p in found] == ["s0", "s1"]
    assert find_grids([tmp_path / "g" / "s1.hdf5"]) == [tmp_path / "g" / "s1.hdf5"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"holds no grids \(.*\.hdf5"):
        find_grids([tmp_path / "empty"])


def test_train_slide_model_and_predict_on_hdf5_grids(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("h5py")
    labels = _cohort(tmp_path / "grids", ".hdf5")
    run = tmp_path / "run"
    args = ["train", "slide-model", str(tmp_path / "grids"), str(labels), "-o", str(run),
            "--folds", "3", "--crop", "6", "--epochs", "1", "--steps-per-epoch", "1",
            "--batch-size", "2", "--tta-crops", "1"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (run / "config.json").is_file()
    out = tmp_path / "p.csv"
    r = runner.invoke(app, ["predict", str(run), str(tmp_path / "grids"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert [ln.split(",")[0] for ln in out.read_text().splitlines()[1:]] == [
        f"s{i}" for i in range(6)
    ]


# -- tasks own their switches --------------------------------------------------------------


def test_a_new_task_needs_no_change_to_labels_or_folds(tmp_path):
    """A task registered from outside reads its own columns and strata; read_labels and
    assign_folds do not know it by name."""
    from slidepress.slidemodel import register_task
    from slidepress.slidemodel.cv import assign_folds
    from slidepress.slidemodel.data import read_labels
    from slidepress.slidemodel.tasks import RegressTask

    class CountTask(RegressTask):
        columns = ("count",)

        def parse_targets(self, table):
            return np.log1p(table.numbers("count")).astype(np.float32), []

        def strata(self, targets):
            return (targets > np.median(targets)).astype(int)

    register_task("count")(CountTask)
    try:
        p = tmp_path / "c.csv"
        p.write_text("slide,count\n" + "".join(f"s{i},{i * 10}\n" for i in range(8)))
        lab = read_labels(p, "count")
        np.testing.assert_allclose(lab.targets, np.log1p(np.arange(8) * 10), rtol=1e-6)
        folds = assign_folds(lab, 4, seed=0)
        high = lab.targets > np.median(lab.targets)
        for f in range(4):  # strata from the task: one low and one high slide per fold
            assert sorted(high[folds == f].tolist()) == [False, True]
        p.write_text("slide,value\na,1\n")
        with pytest.raises(UsageError, match="task count needs column"):
            read_labels(p, "count")
    finally:
        TASKS.remove("count")


def test_task_columns_strata_and_report_hooks():
    classify, regress, survival = (build_task(n) for n in ("classify", "regress", "survival"))
    y = np.array([0, 1, 1, 0])
    assert classify.strata(y).tolist() == y.tolist() and classify.bootstrap_strata(y) is y
    assert regress.bootstrap_strata(np.ones(4)) is None
    assert [len(p) for p in classify.batch_pools(y, 3)] == [2, 2]  # empty class dropped
    cols = classify.prediction_columns(np.array([[2.0, 0.0], [0.0, 2.0]]), ["neg", "pos"])
    assert list(cols) == ["prob_neg", "prob_pos", "predicted"]
    assert cols["predicted"].tolist() == ["neg", "pos"]
    assert classify.target_columns(np.int64(1), ["neg", "pos"]) == {"label": "pos"}
    assert regress.target_columns(np.float32(2.5), []) == {"value": 2.5}
    assert survival.target_columns(np.array([3.0, 1.0]), []) == {"time": 3.0, "event": 1}
    tv = np.array([[1.0, 1], [2, 0], [3, 1], [4, 1]])
    assert survival.strata(tv).tolist() == [1, 0, 1, 1]
    assert (classify.cam_target(2), classify.cam_target(3), survival.cam_target(1)) == (
        1,
        None,
        None,
    )


# -- NIC methods own their inputs; --mpp-override reaches the slides -----------------------


def test_supervised_refuses_a_second_folder_before_loading(tmp_path):
    pytest.importorskip("torch")
    from slidepress.training.nic.data import DataSpec, FeedInputs
    from slidepress.training.nic.trainer import TrainSettings, build_feed

    missing = [
        DataSpec("a", tmp_path / "nowhere-a", 0.5),
        DataSpec("b", tmp_path / "nowhere-b", 0.5),
    ]
    config = NICConfig("supervised", patch_size=32)
    with pytest.raises(UsageError, match="supervised: exactly one --data folder"):
        build_feed(config, FeedInputs(data=missing), TrainSettings())
    with pytest.raises(UsageError, match="contrastive: give --slides"):
        build_feed(NICConfig("contrastive", patch_size=32), FeedInputs(), TrainSettings())


def test_load_canvas_uses_the_mpp_override(sample_svs):
    from slidepress.training.nic.data import load_canvas

    native = load_canvas(sample_svs, 8.0)
    coarse = load_canvas(sample_svs, 8.0, mpp_override=1.0)  # CMU-1 is ~0.5 um/px
    finer = load_canvas(sample_svs, 8.0, mpp_override=2.0)
    side = {k: max(c.rgb.shape[:2]) for k, c in (("native", native), ("1.0", coarse),
                                                  ("2.0", finer))}  # fmt: skip
    assert abs(side["2.0"] - 2 * side["1.0"]) <= 2
    assert abs(side["1.0"] - 2 * side["native"]) <= 0.05 * side["1.0"]


def test_slide_mpp_is_an_alias_of_mpp_override(tmp_path, sample_svs):
    base = ["train", "encoder", "--method", "multitask", "--slides", str(sample_svs),
            "-o", str(tmp_path / "run")]  # fmt: skip
    r = runner.invoke(app, [*base, "--mpp-override", "0.5", "--slide-mpp", "0.25"])
    assert r.exit_code == 2 and "old name of --mpp-override" in r.output
    for flag in ("--mpp-override", "--slide-mpp"):  # either spelling is checked like an override
        r = runner.invoke(app, [*base, flag, "1e6"])
        assert r.exit_code == 2, r.output
        assert "mpp override 1000000.0 outside" in r.output and "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) == 1
    assert "--slide-mpp" not in runner.invoke(app, ["train", "encoder", "--help"]).output
    assert not (tmp_path / "run").exists()
