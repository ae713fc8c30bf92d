"""Live training progress: the trainer writes OUTPUT/progress.json at every log step, and the pipeline step
that launched it reads that file on a timer and logs one line when it changed (:class:`ProgressWatcher`).

Why a file: the Cloud Run Job and the Vertex pipeline step mount the same Cloud Storage bucket at the same
path (/gcs/<bucket>/...), so the step reads the job's progress with no API call and no log query; locally
the output folder is simply shared. The file is small and replaced atomically, so a reader never sees half
of it. This module needs only the standard library: the backends import it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from petqlora.evaluation.formats import format_seconds

__all__ = ["PROGRESS_FILE", "ProgressWatcher", "TrainProgress", "format_progress", "read_progress",
           "write_progress"]

PROGRESS_FILE = "progress.json"


@dataclass(frozen=True)
class TrainProgress:
    """Where a training run is, as of its last log step."""

    step: int
    total_steps: int
    epoch: float  # epochs done, fractional: 1.5 is half-way through the second
    total_epochs: float
    loss: float  # the last optimizer step's loss
    samples_per_s: float  # over this attempt's steps
    eta_s: float  # the remaining steps at this attempt's rate
    elapsed_s: float  # time in training steps, over all attempts


_FIELDS = tuple(TrainProgress.__dataclass_fields__)


def write_progress(output_dir: str | Path, progress: TrainProgress) -> Path:
    """OUTPUT/progress.json: the fields of ``progress`` and ``updated`` (UTC), written to a temporary file and
    renamed over the old one."""
    path = Path(output_dir) / PROGRESS_FILE
    value = {**asdict(progress), "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)
    return path


def read_progress(path: str | Path) -> dict | None:
    """The progress in ``path``, or None while there is none (not yet written, or not readable right now)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(value, dict) or any(k not in value for k in _FIELDS):
        return None
    return value


def format_progress(p: dict) -> str:
    """step 40/144 (28%), epoch 0.83/3, loss 0.8123, 3.20 samples/s, ETA 5m 12s"""
    share = p["step"] / p["total_steps"] if p["total_steps"] else 0.0
    eta = "done" if p["step"] >= p["total_steps"] else f"ETA {format_seconds(max(p['eta_s'], 0.0))}"
    return (f"step {p['step']}/{p['total_steps']} ({share:.0%}), epoch {p['epoch']:.2f}/{p['total_epochs']:.3g}, "
            f"loss {p['loss']:.4f}, {p['samples_per_s']:.2f} samples/s, {eta}")


class ProgressWatcher:
    """``with ProgressWatcher(path, log, interval_s):`` a background thread reads ``path`` every ``interval_s``
    seconds and calls ``log(line)`` when its content changed; on leaving the block the thread stops and the
    file is read once more, so the last state is logged however short the run."""

    def __init__(self, path: str | Path, log: Callable[[str], object], interval_s: float) -> None:
        if isinstance(interval_s, bool) or not isinstance(interval_s, (int, float)) or not interval_s > 0:
            raise ValueError(f"interval_s={interval_s!r}: must be a number of seconds > 0, e.g. 30")
        self.path, self.log, self.interval_s = Path(path), log, float(interval_s)
        self._last: dict | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"progress:{self.path}", daemon=True)

    def __enter__(self) -> ProgressWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.check()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()

    def check(self) -> None:
        """Read the file; log a line if it differs from the last one logged."""
        progress = read_progress(self.path)
        if progress is None or progress == self._last:
            return
        self._last = progress
        try:
            self.log(format_progress(progress))
        except Exception:  # a log that fails must not end the watch, nor the run it watches
            logging.getLogger(__name__).exception("could not log the progress in %s", self.path)
