"""The service's log: one line per event (a job started, finished, failed, was requeued or
cancelled; an upload stored, refused or cut off by the client), as text or as JSON objects
(`--log-format json`), on stderr of the web process and of each worker process."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER = logging.getLogger("slidepress.service")


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        d = {"ts": round(record.created, 3), "level": record.levelname.lower(),
             "event": record.getMessage(), **getattr(record, "fields", {})}  # fmt: skip
        return json.dumps(d, default=str, ensure_ascii=False)


class _Text(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        fields = " ".join(f"{k}={_text(v)}" for k, v in getattr(record, "fields", {}).items())
        return f"{stamp} {record.levelname.lower()} {record.getMessage()} {fields}".rstrip()


def _text(v: Any) -> str:
    s = str(v)
    return json.dumps(s, ensure_ascii=False) if (not s or any(c in s for c in ' "=\n')) else s


def setup(fmt: str = "text") -> None:
    """Log service events to stderr in `fmt` (text | json); again: switch the format."""
    handler = next((h for h in LOGGER.handlers if getattr(h, "_slidepress", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._slidepress = True  # type: ignore[attr-defined]
        LOGGER.addHandler(handler)
    handler.setFormatter(_Json() if fmt == "json" else _Text())
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """One line: `name` (job.started, upload.disconnected, ...) and its fields."""
    LOGGER.log(level, name, extra={"fields": {k: v for k, v in fields.items() if v is not None}})
