"""Structured logging: one JSON object per line on stderr."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool | None) else str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


def setup_logging(service: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The Kubernetes client logs request bodies at DEBUG: keep it quiet whatever our level is.
    for noisy in ("kubernetes", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def object_ref(namespace: str, name: str, resource_version: str = "") -> str:
    """How every stage names an object in its debug lines: ``namespace/name@resourceVersion``."""
    return f"{namespace}/{name}@{resource_version}" if resource_version else f"{namespace}/{name}"


def trace(logger: logging.Logger, stage: str, ref: str, what: str, *args: object) -> None:
    """One debug line of an object's path through the pipeline (``CERTCHECK_LOG_LEVEL=debug``), keyed by
    ``object_ref`` in the text and in the ``object`` field, so grepping for one object shows every
    stage it passed. Costs one level check when debug is off."""
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(f"{stage}: {ref} {what}", *args, extra={"object": ref, "stage": stage})
