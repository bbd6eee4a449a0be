"""`slidepress serve`, `slidepress token ...`, `slidepress admin ...` and `slidepress remote
...`: the service, its API tokens, storage usage and purge, and the Python client from the
command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ..service.config import CONFIG_ENV, DATA_DIR, DATABASE, SETTINGS
from .common import EXIT_BAD_INPUT, console, expand_slides, guarded
from .options import annotation, with_options

# the service's settings are declared once, in service/config.py (SETTINGS)
DataDirOpt = annotation(DATA_DIR)
DatabaseOpt = annotation(DATABASE)
UrlOpt = Annotated[
    str, typer.Option("--url", envvar="SLIDEPRESS_URL", help="The service's address.")
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="SLIDEPRESS_TOKEN", show_envvar=True,
                 help="API token (better: set SLIDEPRESS_TOKEN, so it stays out of ps)."),
]  # fmt: skip


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", envvar=CONFIG_ENV, show_envvar=True,
                 help="TOML file of settings (keys as the flags, with _: workers = 4); "
                 "flags and environment variables beat it."),
]  # fmt: skip


@with_options(SETTINGS)
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    config: ConfigOpt = None,
    forwarded_allow_ips: Annotated[
        str, typer.Option(help="Proxies whose X-Forwarded-For/-Proto uvicorn trusts.")
    ] = "127.0.0.1",
    workers_only: Annotated[
        bool,
        typer.Option(
            "--workers-only",
            help="Run jobs only: worker processes and their supervisor, no HTTP (other "
            "instances on the same database and storage serve the API).",
        ),
    ] = False,
    *,
    options: dict[str, Any],
) -> None:
    """Run the REST service and its web page (http://HOST:PORT/, API docs at /docs and
    /redoc). Each setting: flag > environment variable > config file > default; the values
    and their sources are printed at start-up. Several instances may share one PostgreSQL
    database and one --storage (e.g. s3://bucket/prefix): each runs jobs (a job is claimed
    once; a dead instance's jobs are run again by another); --workers 0 serves the API only,
    --workers-only runs jobs only."""
    from ..service.config import ServiceConfig

    def body() -> None:
        import uvicorn

        from ..service import create_app
        from ..service.worker import private_umask

        private_umask()  # the database, uploads and results: the service's user only
        # only what was typed counts as a flag: typer also fills values from the environment
        # and defaults, which the config file must still be able to beat
        flags = {o.field: options[o.name] for o in SETTINGS
                 if _source(ctx, o.name) == "COMMANDLINE"}  # fmt: skip
        cfg = ServiceConfig.resolve(flags, config)
        if workers_only:
            return _run_workers(cfg)
        _check_port(host, port)  # before workers start: a taken port is one line, exit 2
        app = create_app(cfg)
        where = f"http://{host}:{port}{cfg.root_path}/"
        console.print(f"slidepress service on {where} (data in {cfg.data_dir})")
        for name, v in cfg.settings().items():
            console.print(f"  {name} = {v['value']!r} ({v['source']})", highlight=False)
        uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=True,
                    forwarded_allow_ips=forwarded_allow_ips)  # fmt: skip

    guarded(body)


def _run_workers(cfg) -> None:
    """`serve --workers-only`: the supervisor and its workers until SIGINT or SIGTERM."""
    import signal
    import threading

    from ..errors import UsageError
    from ..service.db import make_engine
    from ..service.logs import setup as setup_logs
    from ..service.storage import check_storage
    from ..service.supervisor import Supervisor

    if cfg.workers < 1:
        raise UsageError("--workers-only needs --workers 1 or more")
    cfg.prepare()
    setup_logs(cfg.log_format)
    make_engine(cfg.url)  # the schema migrated before any worker starts
    check_storage(cfg)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    supervisor = Supervisor(cfg, http=False)
    supervisor.start()
    console.print(f"slidepress workers: {cfg.workers} (instance {supervisor.instance}, data in "
                  f"{cfg.data_dir}); no HTTP")  # fmt: skip
    for name, v in cfg.settings().items():
        console.print(f"  {name} = {v['value']!r} ({v['source']})", highlight=False)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        supervisor.stop()


def _source(ctx: typer.Context, name: str) -> str:
    source = ctx.get_parameter_source(name)
    return source.name if source is not None else "DEFAULT"


def _check_port(host: str, port: int) -> None:
    import socket

    from ..errors import UsageError

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


token_app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)


def _sessions(data_dir: Path | None, database: str | None):
    from ..service.config import ServiceConfig
    from ..service.db import make_engine, sessions
    from ..service.worker import private_umask

    private_umask()  # a SQLite database made here is the service's user's only
    cfg = ServiceConfig.from_env(data_dir, database_url=database)
    cfg.prepare()
    return sessions(make_engine(cfg.url))


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="User name; created on first use.")],
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Create a token for user NAME and print it once (only its hash is stored)."""

    def body() -> None:
        from ..service.auth import create_token

        with _sessions(data_dir, database)() as s:
            token, key = create_token(s, name)
        console.print(f"token for {name} (key {key}); shown once, store it safely:")
        typer.echo(token)

    guarded(body)


@token_app.command("list")
def token_list(data_dir: DataDirOpt = None, database: DatabaseOpt = None) -> None:
    """List tokens (key, user, revoked); tokens themselves are not stored."""

    def body() -> None:
        from ..service.auth import list_tokens

        with _sessions(data_dir, database)() as s:
            for t in list_tokens(s):
                state = "revoked" if t["revoked"] else "active"
                typer.echo(f"{t['key']}  {t['user']}  {state}")

    guarded(body)


@token_app.command("revoke")
def token_revoke(
    key_or_name: Annotated[str, typer.Argument(help="A token key, or a user (all tokens).")],
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Revoke a token by its key, or every token of a user."""

    def body() -> None:
        from ..service.auth import revoke

        with _sessions(data_dir, database)() as s:
            n = revoke(s, key_or_name)
        console.print(f"revoked {n} token(s)")

    guarded(body)


remote_app = typer.Typer(
    help="Use a running service: upload slides, submit jobs, wait, download results.",
    no_args_is_help=True,
)


def _client(url: str, token: str | None):
    from ..client import Client

    c = Client(url, token)
    c.overwrite_hint = "--overwrite"  # the command line's spelling
    return c


@remote_app.command("upload")
def remote_upload(
    slides: Annotated[list[str], typer.Argument(help="Slide files, DICOM folders or @sample.")],
    url: UrlOpt = "http://127.0.0.1:8000",
    token: TokenOpt = None,
) -> None:
    """Upload slides; prints one upload id per line (stdout)."""

    def body() -> None:
        from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

        with _client(url, token) as c, Progress(
            *Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(),
            console=console, transient=True,
        ) as prog:  # fmt: skip
            for path in expand_slides(slides):
                task = prog.add_task(path.name, total=None)
                up = c.upload(path, lambda sent, total, t=task: prog.update(
                    t, completed=sent, total=total))  # fmt: skip
                console.print(f"{path.name}: uploaded as {up['id']} ({up['kind']})")
                typer.echo(up["id"])

    guarded(body)


def _value(raw: str):
    try:
        return json.loads(raw)
    except ValueError:
        return raw


@remote_app.command("submit")
def remote_submit(
    kind: Annotated[str, typer.Argument(help="encode, compress, compare or export.")],
    uploads: Annotated[list[str] | None, typer.Argument(help="Upload ids.")] = None,
    url: UrlOpt = "http://127.0.0.1:8000",
    token: TokenOpt = None,
    result: Annotated[
        list[str] | None,
        typer.Option(
            "--result",
            help="A result id (repeatable) of a container a compress job made: its input "
            "without uploading it again (encode it, transcode it with --set codec=..., "
            "compare it with its original, export it as TIFF or DICOM).",
        ),
    ] = None,  # fmt: skip
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Job option KEY=VALUE (repeatable), e.g. encoder=mean-rgb, "
            "augment=dihedral, format=mha, codec=jpegxl, quality=80, format=dicom; see /docs.",
        ),
    ] = None,  # fmt: skip
) -> None:
    """Queue a job over uploads and/or results (--result: containers on the server); prints
    its id (stdout)."""

    def body() -> None:
        from ..errors import UsageError

        opts = {}
        for kv in option or []:
            key, sep, raw = kv.partition("=")
            if not sep or not key:
                raise UsageError(f"--set {kv!r}: expected KEY=VALUE")
            opts[key.replace("-", "_")] = _value(raw)
        if not uploads and not result:
            raise UsageError("give upload ids, or --result ID of a container, or both")
        with _client(url, token) as c:
            job = c.submit(kind, uploads or [], results=result or [], **opts)
        n = len(uploads or []) + len(result or [])
        console.print(f"job {job['id']} queued ({kind}, {n} slide(s))")
        typer.echo(job["id"])

    guarded(body)


@remote_app.command("wait")
def remote_wait(
    job_id: Annotated[str, typer.Argument(help="A job id.")],
    url: UrlOpt = "http://127.0.0.1:8000",
    token: TokenOpt = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 3600,
) -> None:
    """Wait for a job with a progress bar; exit 0 if it succeeded, 2 otherwise."""

    def body() -> int:
        from rich.progress import Progress

        with _client(url, token) as c, Progress(console=console, transient=True) as prog:
            task = prog.add_task("queued", total=1.0)

            def show(job: dict) -> None:
                prog.update(task, completed=job["progress"], description=job["message"][:60])

            job = c.wait(job_id, timeout=timeout, progress=show, check=False)
        if job["state"] != "succeeded":
            console.print(f"job {job_id} {job['state']}: {job['error'] or job['message']}")
            return EXIT_BAD_INPUT
        console.print(f"job {job_id} succeeded: {job['message']}")
        return 0

    raise typer.Exit(guarded(body))


@remote_app.command("download")
def remote_download(
    job_id: Annotated[str, typer.Argument(help="A job id.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder (or .zip file).")],
    url: UrlOpt = "http://127.0.0.1:8000",
    token: TokenOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing files.")] = False,
) -> None:
    """Download a job's results into a folder, or as one zip when OUTPUT ends in .zip."""

    def body() -> None:
        with _client(url, token) as c:
            if output.suffix == ".zip":
                paths = [c.download_zip(job_id, output, overwrite=overwrite)]
            else:
                paths = c.download(job_id, output, overwrite=overwrite)
        for p in paths:
            typer.echo(str(p))

    guarded(body)


@remote_app.command("list")
def remote_list(
    what: Annotated[str, typer.Argument(help="jobs or uploads.")] = "jobs",
    url: UrlOpt = "http://127.0.0.1:8000",
    token: TokenOpt = None,
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many (newest).")] = None,
) -> None:
    """List your jobs (id, state, progress, kind, message) or uploads (id, kind, bytes,
    name), one per line, oldest first."""

    def body() -> None:
        from ..errors import UsageError

        with _client(url, token) as c:
            if what == "jobs":
                for j in c.jobs(state)[-limit if limit else None :]:
                    typer.echo(f"{j['id']}  {j['state']:<9}  {j['progress']:4.0%}  {j['kind']:<8}  "
                               f"{j['error'] or j['message']}")  # fmt: skip
            elif what == "uploads":
                for u in c.uploads()[-limit if limit else None :]:
                    typer.echo(f"{u['id']}  {u['kind']:<5}  {u['bytes']:>12}  {u['filename']}")
            else:
                raise UsageError(f"list what? jobs or uploads, not {what!r}")

    guarded(body)


@remote_app.command("status")
def remote_status(
    job_id: Annotated[str, typer.Argument(help="A job id.")],
    url: UrlOpt = "http://127.0.0.1:8000",
    token: TokenOpt = None,
) -> None:
    """A job as JSON (state, progress, message, error, outcomes); exit 0 unless it failed."""

    def body() -> int:
        with _client(url, token) as c:
            job = c.job(job_id)
        typer.echo(json.dumps(job, indent=2))
        return EXIT_BAD_INPUT if job["state"] == "failed" else 0

    raise typer.Exit(guarded(body))


@remote_app.command("cancel")
def remote_cancel(
    job_id: Annotated[str, typer.Argument(help="A job id.")],
    url: UrlOpt = "http://127.0.0.1:8000",
    token: TokenOpt = None,
) -> None:
    """Cancel a queued or running job."""

    def body() -> None:
        with _client(url, token) as c:
            job = c.cancel(job_id)
        console.print(f"job {job_id}: {job['state']} ({job['message']})")

    guarded(body)


@remote_app.command("delete")
def remote_delete(
    ids: Annotated[list[str], typer.Argument(help="Job ids (with their results) or upload ids.")],
    url: UrlOpt = "http://127.0.0.1:8000",
    token: TokenOpt = None,
) -> None:
    """Delete finished jobs with their results, or uploads no running job uses."""

    def body() -> None:
        from ..client import ServiceError

        with _client(url, token) as c:
            for i in ids:
                try:
                    c.delete_job(i)
                    what = "job"
                except ServiceError as e:
                    if e.status != 404:
                        raise
                    c.delete_upload(i)
                    what = "upload"
                console.print(f"deleted {what} {i}")

    guarded(body)


admin_app = typer.Typer(
    help="Storage per user, purging old results, and the running instances.",
    no_args_is_help=True,
)


@admin_app.command("usage")
def admin_usage(data_dir: DataDirOpt = None, database: DatabaseOpt = None) -> None:
    """Per user: uploads and results, count and bytes (tab-separated, with a header)."""

    def body() -> None:
        from ..service.storage import usage

        with _sessions(data_dir, database)() as s:
            rows = usage(s)
        typer.echo("user\tuploads\tupload_bytes\tresults\tresult_bytes")
        for r in rows:
            typer.echo("\t".join(str(r[k]) for k in ("user", "uploads", "upload_bytes",
                                                     "results", "result_bytes")))  # fmt: skip

    guarded(body)


@admin_app.command("instances")
def admin_instances(data_dir: DataDirOpt = None, database: DatabaseOpt = None) -> None:
    """The running instances sharing the database (tab-separated, with a header): id, API or
    workers only, workers, seconds since their last heartbeat, running jobs."""

    def body() -> None:
        import time

        from sqlalchemy import select

        from ..service.db import Instance, Job

        with _sessions(data_dir, database)() as s:
            rows = s.scalars(select(Instance).order_by(Instance.started_at)).all()
            workers = s.scalars(select(Job.worker).where(Job.state == "running")).all()
        typer.echo("instance\thttp\tworkers\tseen_s_ago\trunning_jobs")
        for i in rows:
            running = sum(w.startswith(i.id + "/") for w in workers)
            typer.echo(f"{i.id}\t{'api' if i.http else 'workers-only'}\t{i.workers}\t"
                       f"{time.time() - i.seen_at:.1f}\t{running}")  # fmt: skip

    guarded(body)


@admin_app.command("purge")
def admin_purge(
    older_than_days: Annotated[
        float,
        typer.Option(min=0, help="Finished jobs and unused uploads older than this many days."),
    ],
    user: Annotated[str | None, typer.Option(help="Only this user's.")] = None,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Delete finished jobs (with their results) and unused uploads older than N days."""

    def body() -> None:
        from ..service.config import ServiceConfig
        from ..service.storage import purge

        cfg = ServiceConfig.from_env(data_dir, database_url=database)
        n = purge(cfg, _sessions(data_dir, database), older_than_days or 1e-9, user)
        console.print(f"purged {n['jobs']} job(s) and {n['uploads']} upload(s), "
                      f"{n['bytes']} bytes")  # fmt: skip

    guarded(body)
