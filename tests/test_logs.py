"""logs: the one logging setup (JSON with a severity in the cloud, one plain timestamped line locally) and the
relay that logs a child's lines again in the parent with the child's own severity, logger and time."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import textwrap
import warnings
from datetime import datetime
from pathlib import Path

import pytest

import petqlora
from petqlora.backends import Backend
from petqlora.logs import ChildLogRelay, log_format, setup_logging

# One timestamp, the level, the logger: "2026-11-03 12:00:01,123 WARNING petqlora.x: message"
ONE_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")
TIMESTAMP = re.compile(r"\d\d:\d\d:\d\d")


@pytest.fixture
def restore_logging():
    """setup_logging changes process-wide state: the root logger, warnings capture, sys.excepthook."""
    root = logging.getLogger()
    handlers, level, hook = root.handlers[:], root.level, sys.excepthook
    yield
    for h in root.handlers[:]:
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)
    sys.excepthook = hook


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, "text"),
    ({"CLOUD_RUN_JOB": "petqlora-train-adapter"}, "json"),  # a Cloud Run Job task
    ({"K_SERVICE": "classifier"}, "json"),  # a Cloud Run service
    ({"AIP_DEPLOYED_MODEL_ID": "4021", "AIP_HTTP_PORT": "8080"}, "json"),  # the server on a Vertex endpoint
    ({"AIP_HTTP_PORT": "8080", "AIP_PREDICT_ROUTE": "/predict"}, "text"),  # the same server started by hand
    ({"CLOUD_ML_JOB_ID": "123"}, "json"),  # a Vertex AI custom job: what a pipeline step runs as
    ({"CLOUD_RUN_JOB": "j", "PETQLORA_LOG_FORMAT": "text"}, "text"),  # the explicit choice wins
    ({"PETQLORA_LOG_FORMAT": " JSON "}, "json"),
    ({"CLOUD_RUN_JOB": ""}, "text"),
])
def test_the_format_follows_the_runtime(environ, expected):
    assert log_format(environ) == expected


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="PETQLORA_LOG_FORMAT='xml': must be 'json' or 'text'"):
        log_format({"PETQLORA_LOG_FORMAT": "xml"})


def test_cloud_records_are_json_with_severity_and_one_entry_per_traceback(restore_logging):
    out = io.StringIO()
    assert setup_logging({"CLOUD_RUN_JOB": "j"}, stream=out) == "json"
    logging.getLogger("petqlora.train.train_adapter").info("step %d/%d", 5, 144)
    try:
        raise ValueError("bad batch")
    except ValueError:
        logging.getLogger("petqlora.x").exception("step failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the traceback is inside the second record, not lines of its own
    info, error = (json.loads(line) for line in lines)
    assert set(info) == {"severity", "message", "time", "logger"}
    assert (info["severity"], info["message"], info["logger"]) == ("INFO", "step 5/144", "petqlora.train.train_adapter")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", info["time"])
    assert error["severity"] == "ERROR" and error["message"].startswith("step failed\nTraceback")
    assert error["message"].endswith("ValueError: bad batch")


def test_library_warnings_are_logged_at_warning(restore_logging):
    out = io.StringIO()
    setup_logging({"CLOUD_ML_JOB_ID": "1"}, stream=out)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(True)  # catch_warnings restored showwarning on entry: capture again inside
        warnings.warn("`foo` is deprecated", FutureWarning)
    entry = json.loads(out.getvalue().splitlines()[-1])
    assert entry["severity"] == "WARNING" and entry["logger"] == "py.warnings"
    assert "FutureWarning: `foo` is deprecated" in entry["message"]


def test_local_records_are_one_line_with_one_timestamp(restore_logging):
    out = io.StringIO()
    assert setup_logging({}, stream=out) == "text"
    logging.getLogger("petqlora.steps").warning("disk at %d%%", 91)
    line = out.getvalue().rstrip("\n")
    assert ONE_TIMESTAMP.match(line) and line.endswith(" WARNING petqlora.steps: disk at 91%")
    assert len(TIMESTAMP.findall(line)) == 1


def test_setup_replaces_the_console_handler_and_keeps_others(restore_logging, tmp_path):
    root = logging.getLogger()
    kfp_console = logging.StreamHandler(io.StringIO())  # what kfp's executor's basicConfig installs
    kept = logging.FileHandler(tmp_path / "run.log")
    root.addHandler(kfp_console)
    root.addHandler(kept)
    setup_logging({}, stream=io.StringIO())
    setup_logging({}, stream=io.StringIO())  # twice: still one console handler
    consoles = [h for h in root.handlers if type(h) is logging.StreamHandler]
    assert kfp_console not in root.handlers and kept in root.handlers and len(consoles) == 1
    kept.close()


def _relayed(lines: list[str]) -> list[logging.LogRecord]:
    relay = ChildLogRelay(logging.getLogger("petqlora.backends"))
    return [relay.record(line) for line in lines]


def test_the_relay_keeps_each_child_line_s_own_severity_logger_and_time():
    child_time = "2026-11-03T12:00:01.250Z"
    records = _relayed([
        json.dumps({"severity": "INFO", "message": "step 5/144", "time": child_time,
                    "logger": "petqlora.train.train_adapter"}),
        json.dumps({"severity": "WARNING", "message": "dropped 2 examples", "time": child_time, "logger": "petqlora.t"}),
        # A library's warning printed before the child set up logging (at import), and its source line.
        "/venv/lib/transformers/utils.py:12: FutureWarning: `x` is deprecated",
        "  warnings.warn(",
        "plain output of a print()",
        "Traceback (most recent call last):",
        '  File "train.py", line 3, in <module>',
        "ValueError: bad",
        "after the crash",
        "2026-11-03 12:00:02,500 ERROR petqlora.x: a text record",
        "WARNING:root:logging's default format",
    ])
    assert [(r.levelname, r.name) for r in records] == [
        ("INFO", "petqlora.train.train_adapter"), ("WARNING", "petqlora.t"),
        ("WARNING", "petqlora.backends"), ("WARNING", "petqlora.backends"),
        ("INFO", "petqlora.backends"),
        ("ERROR", "petqlora.backends"), ("ERROR", "petqlora.backends"), ("ERROR", "petqlora.backends"),
        ("INFO", "petqlora.backends"),
        ("ERROR", "petqlora.x"), ("WARNING", "root"),
    ]
    assert records[0].getMessage() == "step 5/144"
    assert records[0].created == datetime.fromisoformat(child_time).timestamp()
    assert records[9].getMessage() == "a text record"
    assert records[9].created == datetime(2026, 11, 3, 12, 0, 2, 500000).timestamp()


def test_a_child_s_lines_through_the_local_backend_have_one_timestamp_and_their_own_severity(
        tmp_path, monkeypatch, restore_logging):
    # A real child process: it sets up logging as every entrypoint does, logs, warns, prints, and exits.
    (tmp_path / "chatty_step.py").write_text(textwrap.dedent("""
        import logging, os, sys, warnings
        from petqlora.logs import setup_logging

        setup_logging(os.environ)
        logging.getLogger("petqlora.chatty").info("loading %s", sys.argv[2])
        warnings.warn("`foo` is deprecated", FutureWarning)
        print("a plain print", flush=True)
        logging.getLogger("petqlora.chatty").error("gave up")
    """))
    src = Path(petqlora.__file__).resolve().parents[1]
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{src}")
    monkeypatch.delenv("CLOUD_RUN_JOB", raising=False)
    out = io.StringIO()
    setup_logging({}, stream=out)  # the pipeline step, locally: plain lines

    Backend().run("chatty_step", ["--dataset", "d", "--output", str(tmp_path / "out")], "task-1")

    lines = out.getvalue().splitlines()
    records = [line for line in lines if not line[:1].isspace()]  # a warning's source line is indented under it
    assert all(ONE_TIMESTAMP.match(line) and len(TIMESTAMP.findall(line)) == 1 for line in records), lines
    lines = records
    assert " INFO petqlora.chatty: loading d" in lines[0]
    warning = next(line for line in lines if "FutureWarning" in line)
    assert " WARNING py.warnings: " in warning  # was re-logged at INFO with a second timestamp before
    assert any(line.endswith(" INFO petqlora.backends: a plain print") for line in lines)
    assert lines[-1].endswith(" ERROR petqlora.chatty: gave up")
