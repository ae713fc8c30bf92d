"""How the FAKE Cloud Run Admin API (tests/fakes/cloud_run_api.py) starts and moves its executions.

An execution records the task template it was started from: the job's template at that instant, with the
run's overrides applied (args replaced, env merged by name, timeout), as the real API records it in
``Execution.template``. It then follows an :class:`ExecutionPlan`, one step per GET of the execution.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from urllib.parse import quote

from google.cloud import run_v2
from google.protobuf import timestamp_pb2

_Cond = run_v2.Condition


def now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


@dataclass
class ExecutionPlan:
    """How the next execution behaves: ``outcome`` is "succeed", "fail" or "slow" (never ends on its own);
    it ends on the ``polls``-th GET of the execution (0: it has ended when created)."""

    outcome: str = "succeed"
    polls: int = 1
    reason: run_v2.Condition.ExecutionReason = _Cond.ExecutionReason.NON_ZERO_EXIT_CODE
    message: str = "Task {task} failed with message: The container exited with an exit code of 1."

    def __post_init__(self) -> None:
        if self.outcome not in ("succeed", "fail", "slow"):
            raise ValueError(f"outcome={self.outcome!r} must be 'succeed', 'fail' or 'slow'")
        if self.polls < 0:
            raise ValueError(f"polls={self.polls!r} must be >= 0")


def apply_overrides(job: run_v2.Job, overrides: run_v2.RunJobRequest.Overrides) -> run_v2.TaskTemplate:
    """The task template an execution of ``job`` runs with ``overrides``. Raises ValueError (the fake
    answers 400) for a container override that names no container of the job."""
    template = run_v2.TaskTemplate(job.template.template)
    for override in overrides.container_overrides:
        index = next((i for i, c in enumerate(template.containers)
                      if not override.name or c.name == override.name), None)
        if index is None:
            raise ValueError(f"container override {override.name!r} names no container of the job")
        container = template.containers[index]
        if override.args or override.clear_args:
            container.args = list(override.args)
        env = {e.name: e for e in container.env}
        env.update({e.name: e for e in override.env})  # merged, override wins (as documented)
        container.env = list(env.values())
        template.containers[index] = container
    if "timeout" in overrides:
        template.timeout = overrides.timeout
    return template


def new_execution(job: run_v2.Job, short: str, project: str, template: run_v2.TaskTemplate,
                  task_count: int) -> run_v2.Execution:
    """A just-created execution of ``job`` named ``short``, pending, with its own copy of ``template``."""
    return run_v2.Execution(
        name=f"{job.name}/executions/{short}", uid=str(uuid.uuid4()), job=job.name.rsplit("/", 1)[1],
        generation=1, create_time=now(), labels=dict(job.template.labels), task_count=task_count,
        parallelism=job.template.parallelism or task_count, template=template,
        log_uri=(f"https://console.cloud.google.com/logs/viewer?project={project}&advancedFilter="
                 + quote(f'resource.type="cloud_run_job"\nlabels."run.googleapis.com/execution_name"="{short}"')),
        conditions=[run_v2.Condition(type_="Completed", state=_Cond.State.CONDITION_PENDING)],
    )


@dataclass
class FakeExecution:
    """An execution and its plan; :meth:`advance` on each GET, :meth:`cancel` on ``:cancel``."""

    execution: run_v2.Execution
    plan: ExecutionPlan
    polls: int = 0
    ended: bool = False

    def advance(self, *, poll: bool) -> None:
        """Move the execution along its plan; each GET of it counts as one poll."""
        if self.ended:
            return
        if poll:
            self.polls += 1
        ex, plan = self.execution, self.plan
        if plan.outcome != "slow" and self.polls >= plan.polls:
            self.ended = True
            ex.running_count = 0
            ex.completion_time = now()
            if plan.outcome == "succeed":
                ex.succeeded_count = ex.task_count
                ex.conditions = [run_v2.Condition(
                    type_="Completed", state=_Cond.State.CONDITION_SUCCEEDED,
                    message="Execution completed successfully.", last_transition_time=now())]
            else:
                ex.failed_count = ex.task_count
                ex.retried_count = ex.task_count if ex.template.max_retries else 0
                task = f"{ex.name.rsplit('/', 1)[-1]}-task0"
                ex.conditions = [run_v2.Condition(
                    type_="Completed", state=_Cond.State.CONDITION_FAILED, severity=_Cond.Severity.ERROR,
                    execution_reason=plan.reason, message=plan.message.format(task=task),
                    last_transition_time=now())]
        elif "start_time" not in ex:
            ex.start_time = now()
            ex.running_count = ex.task_count
            ex.conditions = [run_v2.Condition(type_="Completed", state=_Cond.State.CONDITION_RECONCILING,
                                              last_transition_time=now())]

    def cancel(self) -> None:
        if self.ended:
            return
        ex = self.execution
        self.ended = True
        ex.cancelled_count, ex.running_count = ex.task_count, 0
        ex.completion_time = now()
        ex.conditions = [run_v2.Condition(
            type_="Completed", state=_Cond.State.CONDITION_FAILED, execution_reason=_Cond.ExecutionReason.CANCELLED,
            message="The execution was cancelled.", last_transition_time=now())]
