"""Logging for every entrypoint, component and the command line: one setup (:func:`setup_logging`) and the
relay that re-logs a child process's output in its parent (:class:`ChildLogRelay`).

In the cloud (a Cloud Run Job, a Vertex AI pipeline step) each record is one JSON line carrying the fields
Cloud Logging reads from a container's output (``severity``, ``message``, ``time``) plus ``logger``, so a
warning is a warning in the Logs Explorer and a traceback stays one entry. Locally a record is one plain line
with one timestamp.

A GPU step's entrypoint runs as a child of the pipeline step (``run_local``). The child is told to write
JSON lines; the parent parses each and re-logs it with the child's own severity, logger and time, so the
run-local output has one timestamp per line and a child's FutureWarning is not demoted to INFO. Lines that
are not JSON (a library's warning printed before logging was set up, a traceback) are classified by their
shape.

The environment is read by the caller (an entrypoint, a component body, the CLI), never at import.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TextIO

__all__ = ["LOG_FORMAT_ENV", "ChildLogRelay", "CloudLoggingFormatter", "log_format", "setup_logging"]

# "json" or "text": overrides the detection below. run_local sets it to "json" for its child.
LOG_FORMAT_ENV = "PETQLORA_LOG_FORMAT"
# Variables the platform sets in every container it runs: Cloud Run Jobs (CLOUD_RUN_JOB, with
# CLOUD_RUN_EXECUTION and CLOUD_RUN_TASK_*), Cloud Run services (K_SERVICE), Vertex AI custom jobs, which is
# what a Vertex pipeline step runs as (CLOUD_ML_JOB_ID: aiplatform's training_utils.environment_variables reads it),
# and Vertex prediction containers, the server on an endpoint or in batch prediction (AIP_DEPLOYED_MODEL_ID: set
# by Vertex, not configurable; AIP_HTTP_PORT is no signal, an image may set it itself).
CLOUD_ENV_VARS = ("CLOUD_RUN_JOB", "K_SERVICE", "CLOUD_ML_JOB_ID", "AIP_DEPLOYED_MODEL_ID")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Cloud Logging's LogSeverity names; Python's levels map onto them one to one (WARNING, not WARN).
_SEVERITY = ((logging.CRITICAL, "CRITICAL"), (logging.ERROR, "ERROR"), (logging.WARNING, "WARNING"),
             (logging.INFO, "INFO"), (logging.DEBUG, "DEBUG"))
_LEVEL_OF_SEVERITY = {"DEFAULT": logging.INFO, "DEBUG": logging.DEBUG, "INFO": logging.INFO,
                      "NOTICE": logging.INFO, "WARNING": logging.WARNING, "WARN": logging.WARNING,
                      "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL, "ALERT": logging.CRITICAL,
                      "EMERGENCY": logging.CRITICAL}


def log_format(environ: Mapping[str, str]) -> str:
    """"json" in the cloud (or when PETQLORA_LOG_FORMAT says so), "text" otherwise."""
    explicit = environ.get(LOG_FORMAT_ENV, "").strip().lower()
    if explicit:
        if explicit not in ("json", "text"):
            raise ValueError(f"{LOG_FORMAT_ENV}={explicit!r}: must be 'json' or 'text' (or unset: json in the "
                             f"cloud, detected by {', '.join(CLOUD_ENV_VARS)})")
        return explicit
    return "json" if any(environ.get(name) for name in CLOUD_ENV_VARS) else "text"


def severity(levelno: int) -> str:
    return next((name for level, name in _SEVERITY if levelno >= level), "DEFAULT")


class CloudLoggingFormatter(logging.Formatter):
    """One JSON object per record, in Cloud Logging's structured-logging fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().rstrip("\n")
        if record.exc_info:
            # In the message, not a field of its own: Error Reporting finds a stack trace there.
            message += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            message += "\n" + self.formatStack(record.stack_info)
        created = datetime.fromtimestamp(record.created, tz=timezone.utc)
        return json.dumps({
            "severity": severity(record.levelno),
            "message": message,
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "logger": record.name,
        }, ensure_ascii=False)


def setup_logging(environ: Mapping[str, str], *, level: int = logging.INFO, stream: TextIO | None = None) -> str:
    """Route every logger to one handler on ``stream`` (stderr: stdout is left for a step's result line), in
    the format :func:`log_format` picks from ``environ``; returns that format.

    Replaces the root logger's handlers (kfp's executor installs its own format before a component runs),
    sends ``warnings`` through logging at WARNING, and logs an uncaught exception as one CRITICAL record.
    """
    fmt = log_format(environ)
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(CloudLoggingFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        # The console handler basicConfig installed (kfp's executor does) or an earlier call's; a handler of
        # another kind (a file, a test's capture) was attached on purpose and stays.
        if type(old) in (logging.StreamHandler, _StderrHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    return fmt


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each record (a redirect, a test's capture), not as it was at setup."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _log_uncaught(exc_type, exc, tb) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("petqlora").critical("uncaught exception", exc_info=(exc_type, exc, tb))


# ---------------------------------------------------------------------------------------------------------
# The parent's side: a child's output lines become records of this process.

# warnings.formatwarning: "path/file.py:12: FutureWarning: text"
_WARNING_LINE = re.compile(r"^\S.*:\d+: [A-Za-z_]*Warning: ")
# TEXT_FORMAT ("2026-11-03 12:00:01,123 WARNING name: message") and logging's default ("WARNING:name:message").
_TEXT_RECORD = re.compile(r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<level>[A-Z]+) (?P<name>\S+): "
                          r"(?P<message>.*)$")
_DEFAULT_RECORD = re.compile(r"^(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL):(?P<name>[^:\s]+):(?P<message>.*)$")


class ChildLogRelay:
    """``relay(line)`` re-logs one output line of a child process through ``logger``'s handlers.

    A JSON line of :class:`CloudLoggingFormatter` keeps its severity, logger name, time and message; a text
    record keeps its level and name; a library's warning line is WARNING; a traceback is ERROR to its last
    line; an indented line continues the level of the line before; anything else is INFO.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._level = logging.INFO
        self._in_traceback = False

    def __call__(self, line: str) -> None:
        record = self.record(line)
        self.logger.handle(record)  # through this logger's handlers, whatever name the child's logger had

    def record(self, line: str) -> logging.LogRecord:
        parsed = _json_record(line) or _text_record(line)
        if parsed is not None:
            self._in_traceback = False
            name, level, message, created = parsed
        else:
            name, level, message, created = self.logger.name, self._plain_level(line), line, None
        self._level = level
        fields = {"name": name, "levelno": level, "levelname": logging.getLevelName(level), "msg": message,
                  "args": None}
        record = logging.makeLogRecord(fields)
        if created is not None:  # the child's time: the line shows when it happened, once
            record.created, record.msecs = created, (created - int(created)) * 1000
        return record

    def _plain_level(self, line: str) -> int:
        if line.startswith("Traceback (most recent call last):"):
            self._in_traceback = True
            return logging.ERROR
        if line[:1].isspace() or not line:
            return self._level  # a continuation: a traceback frame, a warning's source line
        if self._in_traceback:  # the exception line that ends a traceback
            self._in_traceback = False
            return logging.ERROR
        if _WARNING_LINE.match(line):
            return logging.WARNING
        return logging.INFO


def _json_record(line: str) -> tuple[str, int, str, float | None] | None:
    if not line.startswith("{"):
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or "message" not in entry or "severity" not in entry:
        return None
    level = _LEVEL_OF_SEVERITY.get(str(entry["severity"]).upper(), logging.INFO)
    created = None
    try:
        created = datetime.fromisoformat(str(entry.get("time"))).timestamp()
    except ValueError:
        pass
    return str(entry.get("logger") or "child"), level, str(entry["message"]), created


def _text_record(line: str) -> tuple[str, int, str, float | None] | None:
    m = _TEXT_RECORD.match(line)
    if m and m["level"] in logging.getLevelNamesMapping():
        created = datetime.strptime(m["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return m["name"], logging.getLevelNamesMapping()[m["level"]], m["message"], created
    m = _DEFAULT_RECORD.match(line)
    if m:
        return m["name"], logging.getLevelNamesMapping()[m["level"]], m["message"], None
    return None
