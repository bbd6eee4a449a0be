"""One options spec per job kind (slidepress.jobs.options): `encode` / `batch ... encode` and
`compress` / `batch ... compress` take the same options with the same names, defaults, ranges
and help as the service's request models (and so its OpenAPI schema), the pipeline's options
dataclasses agree with it, and the drifts it replaced stay fixed: the service's default grid
format, `--threads` (old name `--workers`), a flag before `batch`'s job name, the service's
settings from the environment, one syntax of quality sweeps."""

from __future__ import annotations

import dataclasses
import socket

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from slidepress.cli.batch import BatchGroup
from slidepress.cli.main import app
from slidepress.errors import UsageError
from slidepress.jobs.options import BATCH, CLI, COMPRESS, ENCODE, SERVICE, JobSpec

runner = CliRunner()
ROOT = get_command(app)
SPECS = [ENCODE, COMPRESS]


def _params(*path: str) -> dict:
    cmd = ROOT
    for name in path:
        cmd = cmd.commands[name]
    return {p.name: p for p in cmd.params}


def _schema(spec: JobSpec) -> dict:
    from slidepress.service.jobs import CompressRequest, EncodeRequest

    model = {"encode": EncodeRequest, "compress": CompressRequest}[spec.kind]
    return model.model_json_schema()["properties"]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_cli_batch_and_service_options_come_from_one_spec(spec):
    cli, batch = _params(spec.kind), _params("batch", spec.kind)
    service = _schema(spec)
    for o in spec:
        for target, params in ((CLI, cli), (BATCH, batch)):
            assert (o.name in params) == (target in o.targets), (o.name, target)
            if o.name not in params:
                continue
            p = params[o.name]
            assert (p.help, p.default, p.hidden) == (o.describe(), o.default, False), o.name
            assert p.envvar == o.envvar
            for alias in o.aliases:  # old spellings: accepted, not shown
                old = next(q for q in params.values() if alias in q.opts)
                assert old.hidden
        assert (o.name in service) == (SERVICE in o.targets), o.name
        if o.name in service:
            prop = service[o.name]
            typed = next(b for b in prop.get("anyOf", [prop]) if b.get("type") != "null")
            assert prop["description"] == o.describe() and prop.get("default") == o.default
            low = "exclusiveMinimum" if o.min_exclusive else "minimum"
            assert (typed.get(low), typed.get("maximum")) == (o.min, o.max), o.name
            assert typed.get("multipleOf") == o.multiple_of
            assert typed.get("enum", list(o.choices)) == list(o.choices)
    # the same help for the same option wherever it is shown
    shared = set(cli) & set(batch)
    assert {n: cli[n].help for n in shared} == {n: batch[n].help for n in shared}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_pipeline_options_agree_with_the_spec(spec):
    """The pipeline's options dataclasses keep their own defaults and checks (they are the
    Python API); they must say what the spec says."""
    from slidepress.pipeline.batch import job_from_dict
    from slidepress.pipeline.compress import CompressOptions
    from slidepress.pipeline.encode import EncodeOptions

    cls = {"encode": EncodeOptions, "compress": CompressOptions}[spec.kind]
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for o in spec:
        if o.name in spec.top_level:
            continue
        assert defaults[o.field] == o.default, o.name

    def build(**values):
        return job_from_dict(spec.job_dict(values))

    build()  # every default is valid
    for o in spec:
        for ok in [*o.names()[:8], *(v for v in (o.min, o.max) if v is not None)]:
            if o.min_exclusive and ok == o.min or o.name == "codec":
                continue
            build(**{o.name: o.type(ok)})  # a value the spec allows, the pipeline takes
        if o.choices:
            with pytest.raises(UsageError):
                build(**{o.name: "nonsense"})
        if o.max is not None and o.name != "level":  # above the range: both refuse it
            with pytest.raises(UsageError):
                o.check(o.type(o.max * 2 + 1))
            with pytest.raises(UsageError):
                build(**{o.name: o.type(o.max * 2 + 1)})


def test_service_encodes_to_the_cli_default_format():
    """The service's default was npz, the CLI's zarr: now both are the spec's (zarr; the
    service delivers a zarr folder as a zip, which Client.download unpacks)."""
    from slidepress.pipeline.encode import EncodeOptions
    from slidepress.service.jobs import EncodeRequest, batch_job

    req = EncodeRequest(kind="encode", uploads=["a" * 32])
    assert req.format == ENCODE["format"].default == EncodeOptions().fmt == "zarr"
    assert batch_job(req, threads=1)["options"]["fmt"] == "zarr"
    assert _params("encode")["format"].default == "zarr"


def test_service_job_dict_is_the_cli_job_dict():
    """Same spec, same job dict: the service's is the CLI's for the options it offers, with
    the server's threads per slide."""
    from slidepress.service.jobs import CompressRequest, EncodeRequest, batch_job

    for spec, model in ((ENCODE, EncodeRequest), (COMPRESS, CompressRequest)):
        served = batch_job(model(kind=spec.kind, uploads=["a" * 32]), threads=3)
        cli = spec.job_dict({**spec.defaults(SERVICE), "threads": 3})
        assert served == cli


def test_threads_and_the_hidden_workers_alias(tmp_path):
    group = ("batch", "IN", "-o", "OUT")
    for path in (("encode",), ("compress",), (*group, "encode"), (*group, "compress")):
        r = runner.invoke(app, [*path, "--help"], terminal_width=200)
        assert "--threads" in r.output and "--workers" not in r.output, path
    r = runner.invoke(app, ["batch", "--help"], terminal_width=200)
    assert "--workers" in r.output  # Dask worker processes keep the name
    out = str(tmp_path / "x.spz")
    r = runner.invoke(app, ["compress", "@sample", "-o", out, "--workers", "1000"])
    assert r.exit_code == 2 and "threads must be within 1-64, got 1000" in r.output
    r = runner.invoke(app, ["compress", "@sample", "-o", out, "--threads", "2", "--workers", "3"])
    assert r.exit_code == 2 and "not both" in r.output
    r = runner.invoke(app, ["decompress", out, "-o", str(tmp_path / "r.tiff"), "--workers", "0"])
    assert r.exit_code == 2 and "threads must be within" in r.output


def test_workers_alias_runs_the_same_job(tmp_path):
    for flag in ("--threads", "--workers"):
        out = tmp_path / flag.strip("-")
        r = runner.invoke(app, ["encode", "@sample", "-o", str(out), flag, "1"])
        assert r.exit_code == 0, r.output
    grids = [(tmp_path / d / "CMU-1-Small-Region.zarr") for d in ("threads", "workers")]
    from slidepress.store import read_grid

    a, b = (read_grid(g) for g in grids)
    assert (a.features == b.features).all()


def _toy_group():
    """A group like `batch`, with a flag among its options."""
    seen = []
    toy = typer.Typer(cls=BatchGroup)

    @toy.callback()
    def group(
        ctx: typer.Context,
        source: str,
        output: str = typer.Option(..., "-o", "--output"),
        dry: bool = False,
        count: int = 1,
    ) -> None:
        ctx.obj = {"source": source, "output": output, "dry": dry, "count": count}

    @toy.command()
    def job(ctx: typer.Context, size: int = 0, fast: bool = False) -> None:
        seen.append({**ctx.obj, "size": size, "fast": fast})

    @toy.command()
    def other() -> None:
        pass

    return toy, seen


@pytest.mark.parametrize(
    "args",
    [
        ["IN", "--dry", "-o", "OUT", "--count", "2", "job", "--size", "3", "--fast"],
        ["IN", "-o", "OUT", "--dry", "--count=2", "job", "--fast", "--size", "3"],
        ["--dry", "IN", "-oOUT", "--count", "2", "job", "--size=3", "--fast"],
    ],
)
def test_batch_group_options_take_values_by_their_arity(args):
    """The hand parser took the word after any option as its value: a flag before the job
    name swallowed the next option (`--dry -o OUT`), `-oOUT` swallowed the next word."""
    toy, seen = _toy_group()
    r = runner.invoke(toy, args)
    assert r.exit_code == 0, r.output
    assert seen == [
        {"source": "IN", "output": "OUT", "dry": True, "count": 2, "size": 3, "fast": True}
    ]


def test_batch_reaches_the_job_with_attached_values(tmp_path):
    """`-oOUT` and `--workers=1` before the job name, a job flag after it: the job is built
    with its options (an unknown encoder stops it before Dask starts)."""
    r = runner.invoke(
        app,
        ["batch", str(tmp_path), f"-o{tmp_path / 'out'}", "--workers=1", "encode", "--float16",
         "--encoder", "no-such-encoder", "--threads", "1"],
    )  # fmt: skip
    assert r.exit_code == 2 and "no-such-encoder" in r.output, r.output
    r = runner.invoke(app, ["batch", str(tmp_path), "-o", "x", "--overwrite", "compress"])
    assert r.exit_code == 2 and "--overwrite" in r.output  # the job's, not the group's


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "env,flags,gb",
    [({}, [], 20), ({"SLIDEPRESS_MAX_UPLOAD_GB": "1.5"}, [], 1.5),
     ({"SLIDEPRESS_MAX_UPLOAD_GB": "1.5"}, ["--max-upload-gb", "3"], 3)],
)  # fmt: skip
def test_serve_settings_flag_over_environment_over_default(tmp_path, monkeypatch, env, flags, gb):
    import uvicorn

    import slidepress.service
    from slidepress.service.config import GB, ServiceConfig

    seen = {}
    monkeypatch.setattr(slidepress.service, "create_app", lambda cfg: seen.setdefault("cfg", cfg))
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    monkeypatch.delenv("SLIDEPRESS_MAX_UPLOAD_GB", raising=False)
    args = ["serve", "--data-dir", str(tmp_path), "--port", str(_free_port()), *flags]
    r = runner.invoke(app, args, env=env)
    assert r.exit_code == 0, r.output
    assert seen["cfg"].max_upload_bytes == int(gb * GB)
    for k, v in env.items():  # the Python API reads the same variables
        monkeypatch.setenv(k, v)
    assert ServiceConfig.from_env(tmp_path).max_upload_bytes == int((1.5 if env else 20) * GB)


def test_bad_environment_setting_is_one_line(tmp_path, monkeypatch):
    from slidepress.service.config import ServiceConfig

    monkeypatch.setenv("SLIDEPRESS_MAX_UPLOAD_GB", "lots")
    with pytest.raises(
        UsageError, match="SLIDEPRESS_MAX_UPLOAD_GB: .* must be a float, got 'lots'"
    ):
        ServiceConfig.from_env(tmp_path)


def test_one_syntax_for_quality_sweeps():
    from slidepress.bench.codecs import parse_qualities as bench_parse
    from slidepress.jobs.qualities import parse_qualities

    assert bench_parse is parse_qualities
    sweeps = {"jpeg": [50, 80], "learned": [1, 3]}
    assert parse_qualities("jpeg=50,80;learned=1,3") == sweeps
    assert parse_qualities(["jpeg=50,80", "learned=1,3"]) == sweeps  # the option repeated
    helps = [_params("bench", "codecs")["qualities"], _params("eval", "downstream")["qualities"]]
    assert helps[0].help == helps[1].help and helps[0].opts == helps[1].opts
