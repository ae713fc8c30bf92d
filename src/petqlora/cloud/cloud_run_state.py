"""Reading a Cloud Run execution: where it stands, why it failed, which pipeline task and image it runs.

Executions have no state field: :func:`execution_state` reads the ``Completed`` condition, with the task
counts as a fallback. :func:`task_id_of` and :func:`execution_images` read the execution's own template,
which Cloud Run records when the execution starts (the job's task template with the run's overrides), so
they say what the execution really runs, whatever the job looks like now.
"""

from __future__ import annotations

import enum

from google.cloud import run_v2

from petqlora.cloud.cloud_run_spec import TASK_ID_ENV

__all__ = ["ExecutionState", "execution_images", "execution_state", "failure_reason", "task_id_of"]


class ExecutionState(str, enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (ExecutionState.SUCCEEDED, ExecutionState.FAILED, ExecutionState.CANCELLED)


_COND = run_v2.Condition


def _completed_condition(execution: run_v2.Execution) -> run_v2.Condition | None:
    return next((c for c in execution.conditions if c.type_ == "Completed"), None)


def execution_state(execution: run_v2.Execution) -> ExecutionState:
    """Where an execution stands. Executions have no state field: the ``Completed`` condition says it,
    with the task counts as a fallback."""
    cond = _completed_condition(execution)
    cancelled = (execution.cancelled_count > 0
                 or (cond is not None and cond.execution_reason in (
                     _COND.ExecutionReason.CANCELLED, _COND.ExecutionReason.CANCELLING)))
    if cond is not None and cond.state == _COND.State.CONDITION_SUCCEEDED:
        return ExecutionState.SUCCEEDED
    if cond is not None and cond.state == _COND.State.CONDITION_FAILED:
        return ExecutionState.CANCELLED if cancelled else ExecutionState.FAILED
    if "completion_time" in execution:
        if execution.succeeded_count >= max(execution.task_count, 1):
            return ExecutionState.SUCCEEDED
        return ExecutionState.CANCELLED if cancelled else ExecutionState.FAILED
    return ExecutionState.RUNNING if execution.running_count > 0 else ExecutionState.PENDING


def failure_reason(execution: run_v2.Execution) -> str:
    """A one-line reason read from the execution's conditions and counts."""
    parts = []
    failed = [c for c in execution.conditions if c.state == _COND.State.CONDITION_FAILED]
    failed.sort(key=lambda c: c.type_ != "Completed")  # the terminal condition first
    for c in failed:
        codes = [r.name for r in (c.execution_reason, c.reason, c.revision_reason)
                 if r and r.name and not r.name.endswith("UNDEFINED")]
        text = f"{c.type_}: " + " ".join(filter(None, [", ".join(codes), c.message]))
        parts.append(text.strip())
    parts.append(f"tasks: {execution.succeeded_count} succeeded, {execution.failed_count} failed, "
                 f"{execution.cancelled_count} cancelled, {execution.retried_count} retried")
    return "; ".join(parts)


def task_id_of(execution: run_v2.Execution) -> str | None:
    """The pipeline task the execution was started for (its ``PETQLORA_TASK_ID`` env), or None."""
    for container in execution.template.containers[:1]:
        for env in container.env:
            if env.name == TASK_ID_ENV:
                return env.value
    return None


def execution_images(execution: run_v2.Execution) -> list[str]:
    """The images of the execution's containers, as its recorded template says."""
    return [container.image for container in execution.template.containers]


def _repository(image: str) -> str:
    """``REPO`` of ``REPO:TAG``, ``REPO@sha256:...`` or ``REPO:TAG@sha256:...`` (a port's colon is kept)."""
    name = image.split("@", 1)[0]
    return name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name


def same_image(asked: str, recorded: str) -> bool:
    """Whether an execution that records ``recorded`` runs the image ``asked`` for. Equal references are;
    a tag asked for may be recorded as its resolved digest (``REPO@sha256:...``, unconfirmed against the live
    API: accepted for the same repository, since the job named after its spec already pins the tag); a
    digest asked for must be recorded as that digest."""
    if asked == recorded:
        return True
    if "@" in asked:
        return asked.split("@", 1)[1] == recorded.split("@", 1)[-1] and _repository(asked) == _repository(recorded)
    return "@sha256:" in recorded and _repository(asked) == _repository(recorded)
