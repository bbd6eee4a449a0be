"""Compression as a service: FastAPI app, job database, worker processes, web page.

The web process only authenticates, stores uploads, records jobs and serves files; worker
processes (`worker.py`) claim jobs from the database and run them through the pipeline's batch
runner (`pipeline/batch.py`), the same code the CLI and the Dask runner drive.
"""

from .config import ServiceConfig

__all__ = ["ServiceConfig", "create_app"]


def create_app(config: ServiceConfig, *, start_workers: bool = True):  # noqa: ANN201
    """The FastAPI app (imported lazily: `slidepress --help` needs no FastAPI)."""
    from .app import create_app as _create

    return _create(config, start_workers=start_workers)
