"""Which Cloud Run Admin API errors are worth retrying, and the bounded backoff that retries them.

The rule, call by call:

- **Reads** (get/list jobs and executions, cancel, which is idempotent): retried on
  :data:`TRANSIENT_ERRORS` with exponential backoff until a deadline, through ``google.api_core.retry``
  (:meth:`Backoff.reads`). A single 500 while polling a 24-hour training run must not fail the step.
- **Writes whose repeat is harmless**: ``create_job`` (a repeat of a create that went through answers 409,
  which the caller reads as "it exists") and ``delete_job`` (a repeat answers 404, "it is gone") take the
  same retry.
- **Writes that are not idempotent are never retried blindly**: ``run_job`` repeated after a 500 whose
  first attempt did start an execution would start a second GPU run, so the launcher looks for the
  execution by task id before each new attempt; ``update_job`` carries the etag it read, and a 409 (stale
  etag: someone changed the job in between) or a transient error is answered by re-reading the job and
  deciding again, at most :data:`MAX_UPDATE_ATTEMPTS` times (:meth:`Backoff.delays` paces both loops).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

from google.api_core import exceptions as core_exceptions
from google.api_core import retry as core_retry

__all__ = ["CONFLICT_ERRORS", "MAX_UPDATE_ATTEMPTS", "TRANSIENT_ERRORS", "Backoff", "PollPace"]

# 429 (ResourceExhausted is a TooManyRequests), 500, 502, 503 and 504 (DeadlineExceeded is a
# GatewayTimeout): the server or a proxy in front of it failed this once; the same request may succeed.
TRANSIENT_ERRORS = (
    core_exceptions.TooManyRequests,
    core_exceptions.InternalServerError,
    core_exceptions.BadGateway,
    core_exceptions.ServiceUnavailable,
    core_exceptions.GatewayTimeout,
)

# Over REST, api_core maps every HTTP 409 to a plain Conflict (it picks the class from the HTTP status,
# not from the body's "ABORTED"/"ALREADY_EXISTS"); over gRPC they arrive as Aborted/AlreadyExists, both
# Conflict subclasses. Catching AlreadyExists alone would miss the REST case.
CONFLICT_ERRORS = (core_exceptions.Conflict,)

# A job's update is re-read and retried at most this many times: more than that means something keeps
# changing the job, which a retry loop should report, not fight.
MAX_UPDATE_ATTEMPTS = 5


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff from ``initial_s`` doubling to ``max_s``, within ``timeout_s`` overall.

    ``log`` receives one line per retry; ``sleep`` paces the hand-written loops (tests inject it).
    ``google.api_core.retry`` sleeps on its own, so tests make ``initial_s`` small instead.
    """

    initial_s: float
    max_s: float
    timeout_s: float
    log: Callable[[str], object]
    sleep: Callable[[float], object] = time.sleep

    def reads(self) -> core_retry.Retry:
        """The retry for reads and for writes whose repeat is harmless (see the module docstring)."""
        return core_retry.Retry(
            predicate=core_retry.if_exception_type(*TRANSIENT_ERRORS),
            initial=self.initial_s, maximum=self.max_s, multiplier=2.0, timeout=self.timeout_s,
            on_error=lambda exc: self.log(f"[cloud-run] transient API error, retrying: {exc}"),
        )

    def delays(self) -> Iterator[float]:
        """Successive delays of a hand-written retry loop; it ends once the next would pass the deadline."""
        deadline = time.monotonic() + self.timeout_s
        delay = self.initial_s
        while time.monotonic() + delay <= deadline:
            yield delay
            delay = min(delay * 2, self.max_s)


class PollPace:
    """The pace of polling one long-running job (a Cloud Run execution, a Vertex CustomJob) until it ends:
    delays doubling from ``initial_s`` to ``max_s``, the last one cut short at the deadline ``timeout_s`` from
    now (None: no deadline). The caller polls, then asks :meth:`expired` and, if not, :meth:`pause`."""

    def __init__(self, initial_s: float, max_s: float, timeout_s: float | None,
                 sleep: Callable[[float], object] = time.sleep) -> None:
        self._delay, self._max_s, self._sleep = initial_s, max_s, sleep
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def expired(self) -> bool:
        return self._deadline is not None and self._deadline - time.monotonic() <= 0

    def pause(self) -> None:
        """Sleep until the next poll is due, and lengthen the next delay."""
        delay = self._delay if self._deadline is None else min(self._delay, self._deadline - time.monotonic())
        self._sleep(max(delay, 0.0))
        self._delay = min(self._delay * 2, self._max_s)
