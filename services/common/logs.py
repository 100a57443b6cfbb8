"""Structured logging: one JSON object per line on stderr, so log files are greppable and
machine-readable next to Envoy's JSON access logs; each line carries the trace id, span id and
request id of the work it is about, so a log line leads to its trace.

What a caller can cause as often as the edge lets it call (undecodable requests, failures it
provokes) is logged through a `ThrottledLog`: at most one line per second per reason.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from services.common.telemetry import log_ids

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON with time, level, logger, message and any `extra=` fields."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(log_ids())
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(service: str, level: str) -> None:
    """Send every log record of this process to stderr as JSON lines at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class ThrottledLog:
    """Logs through `logger` at most one line per `interval` seconds per reason, so a flood of
    one complaint is a line a second; the next line of a reason says how many were suppressed
    since the one before (`suppressed`). Reasons come from code (ErrorInfo reasons, status
    names), never from callers, so there are few of them."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        # reason -> (when its next line may go out, lines suppressed since its last one)
        self._windows: dict[str, tuple[float, int]] = {}

    def log(
        self,
        level: int,
        reason: str,
        message: str,
        extra: Mapping[str, object] | None = None,
        exc_info: bool = False,
    ) -> bool:
        """Log `message` with `reason` among its fields, unless a line of `reason` went out
        less than `interval` ago; returns whether it was logged."""
        if not self._logger.isEnabledFor(level):
            return False
        now = self._clock()
        until, suppressed = self._windows.get(reason, (now, 0))
        if now < until:
            self._windows[reason] = (until, suppressed + 1)
            return False
        self._windows[reason] = (now + self._interval, 0)
        fields = {"reason": reason, **(extra or {})}
        if suppressed:
            fields["suppressed"] = suppressed
        self._logger.log(level, message, extra=fields, exc_info=exc_info)
        return True
