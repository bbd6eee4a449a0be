"""Preloaded into each worker process of a local cluster (Dask's `preload`): the worker ignores
SIGINT. Ctrl-C in a terminal goes to the whole process group; the CLI handles it (cancel,
shut the cluster down, remove partial files, one line, exit 130), whereas each worker would
print a traceback of its own and die mid-task."""

from __future__ import annotations

import signal
import threading
from typing import Any


def dask_setup(worker: Any) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
