"""Structured logs: one JSON object per line with the request id, behind ``CLIPRS_LOG_FORMAT``.

``CLIPRS_LOG_FORMAT=text`` (the default) keeps the plain ``time level logger: message`` lines;
``json`` writes ``{"ts", "level", "logger", "service", "msg", "request_id", ...}`` per line, the
form a log shipper (Loki, Elasticsearch, CloudWatch) indexes without parsing rules.

The request id is per request and crosses services: the HTTP services accept ``X-Request-ID`` (or
make one), answer it, the search-api forwards it to the embedder, and Celery tasks carry it in a
task header (``request_id``) so a worker's lines about an area name the request that created it.
Secrets are never logged: the log lines name paths, never query strings or headers.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar

__all__ = [
    "REQUEST_ID",
    "JsonFormatter",
    "accept_request_id",
    "configure_logging",
    "log_format",
    "new_request_id",
]

REQUEST_ID: ContextVar[str | None] = ContextVar("cliprs_request_id", default=None)

# What a caller's X-Request-ID may be; anything else (log injection, huge values) is replaced.
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

# Attributes every LogRecord has: the rest were passed with ``extra=`` and go into the JSON.
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept_request_id(value: str | None) -> str:
    """The caller's request id when it is a sane token (letters, digits, ``._:-``, at most 128),
    else a new one."""
    if value and _REQUEST_ID_OK.match(value):
        return value
    return new_request_id()


def log_format() -> str:
    """``json`` or ``text`` from ``CLIPRS_LOG_FORMAT`` (anything else reads as text)."""
    from cliprs.settings import CoreSettings

    return CoreSettings().log_format


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``extra=`` fields are kept, the request id is added."""

    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "service": self.service,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or REQUEST_ID.get()
        if rid:
            out["request_id"] = rid
        for key, value in vars(record).items():
            if (
                key not in _RECORD_FIELDS
                and key not in out
                and not key.startswith("_")
                and key != "color_message"
            ):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


_configured: dict[str, str] = {}


def configure_logging(service: str, fmt: str | None = None) -> str:
    """Point the root logger (and uvicorn's and Celery's) at one stderr handler in ``fmt``
    (default `log_format()`). Text keeps the existing handlers untouched; returns the format."""
    fmt = fmt or log_format()
    if fmt != "json" or _configured.get("json") == service:
        return fmt
    # The real stderr: Celery replaces sys.stderr with a proxy that logs, which would loop.
    handler = logging.StreamHandler(sys.__stderr__)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "celery", "celery.task", "celery.worker"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True
    # The HTTP middleware writes one access line per request with the route and request id.
    access = logging.getLogger("uvicorn.access")
    for h in list(access.handlers):
        access.removeHandler(h)
    access.propagate = False
    _configured["json"] = service
    return fmt
