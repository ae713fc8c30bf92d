"""Vertex AI pipeline schedules: cron validation, and create, list, pause, resume and delete a schedule that
runs the compiled pipeline (or print the requests, dry run: each as the REST call the client makes).

A scheduled run is created by Vertex, not by this client, so it cannot be put in an experiment at submit
time: `experiment` becomes the run's ``experiment`` pipeline parameter, and the pipeline's
add_to_experiment step adds the run itself (vertex_experiments)."""

from __future__ import annotations

import re
import zoneinfo
from typing import Any

from petqlora.cloud.vertex_common import (
    Out,
    check_experiment,
    check_project_region,
    print_json,
    rest_request,
    to_json_dict,
    vertex_session,
)
from petqlora.cloud.vertex_pipelines import check_job_args, pipeline_job_session
from petqlora.problems import Problems

__all__ = ["SCHEDULE_ACTIONS", "change_schedule", "create_schedule", "list_schedules", "validate_cron"]

SCHEDULE_ACTIONS = ("pause", "resume", "delete")

_SCHEDULE_NAME_RE = re.compile(r"^projects/[^/]+/locations/[^/]+/schedules/[^/]+$")

# ---------------------------------------------------------------------------------------------------
# Cron.

_CRON_FIELDS = (  # name, low, high, names accepted in place of numbers
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day of week", 0, 7, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)


def _cron_value(token: str, low: int, high: int, names: tuple[str, ...]) -> int | None:
    if token.upper() in names:
        return names.index(token.upper()) + low
    if token.isdigit() and low <= int(token) <= high:
        return int(token)
    return None


def _cron_field_problem(text: str, low: int, high: int, names: tuple[str, ...]) -> str | None:
    for part in text.split(","):
        base, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            return f"step {step!r} in {part!r} is not a positive number"
        if base == "*":
            continue
        ends = base.split("-")
        if len(ends) > 2 or any(_cron_value(e, low, high, names) is None for e in ends):
            return f"{part!r} is not '*', a value in {low}-{high}, a range or a list"
    return None


def validate_cron(cron: Any) -> str:
    """Return `cron` if Vertex can run it: 5 fields, optionally after "TZ=<zone>" or "CRON_TZ=<zone>"."""
    example = "fix: pass e.g. 'TZ=Europe/Paris 0 3 * * 1' (03:00 every Monday, Paris time)"
    if not isinstance(cron, str) or not cron.strip():
        raise ValueError(f"cron={cron!r}: must be a cron expression string; {example}")
    tokens = cron.split()
    if tokens[0].startswith(("TZ=", "CRON_TZ=")):
        zone = tokens.pop(0).split("=", 1)[1]
        try:
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"cron={cron!r}: time zone {zone!r} is not an IANA time zone name; {example}"
            ) from None
    if len(tokens) != 5:
        raise ValueError(
            f"cron={cron!r}: needs exactly 5 fields (minute hour day-of-month month day-of-week) after the "
            f"optional TZ= prefix, got {len(tokens)}; {example}"
        )
    for token, (field, low, high, names) in zip(tokens, _CRON_FIELDS):
        problem = _cron_field_problem(token, low, high, names)
        if problem:
            raise ValueError(f"cron={cron!r}: {field} field: {problem}; {example}")
    return cron


# ---------------------------------------------------------------------------------------------------
# Schedules.


def _create_schedule_request(
    job: Any,
    *,
    cron: str,
    display_name: str,
    max_concurrent_run_count: int,
    max_run_count: int | None,
    service_account: str | None,
) -> dict:
    """The CreateScheduleRequest that PipelineJob.create_schedule sends, built without calling the API.

    Mirrors PipelineJobSchedule.__init__ (which only builds the resource) and the field assignments of
    PipelineJobSchedule._create, minus the API call.
    """
    from google.cloud import aiplatform
    from google.cloud.aiplatform.compat.types import schedule_service

    schedule = aiplatform.PipelineJobSchedule(
        pipeline_job=job, display_name=display_name, credentials=job.credentials,
        project=job.project, location=job.location,
    )
    resource = schedule._gca_resource
    resource.cron = cron
    if max_run_count:
        resource.max_run_count = max_run_count
    if max_concurrent_run_count:
        resource.max_concurrent_run_count = max_concurrent_run_count
    if service_account:
        resource.create_pipeline_job_request.pipeline_job.service_account = service_account
    request = schedule_service.CreateScheduleRequest(parent=schedule._parent, schedule=resource)
    return {**rest_request("schedule_service", "CreateSchedule", request, with_body=False), **to_json_dict(request)}


def create_schedule(
    *, template_path: str, project: str, region: str, pipeline_root: str, parameter_values: dict, cron: str,
    display_name: str, max_concurrent_run_count: int = 1, max_run_count: int | None = None,
    service_account: str | None = None, dry_run: bool = False, out: Out = print, labels: dict | None = None,
    enable_caching: bool | None = None, credentials: Any = None, api_endpoint: str | None = None,
    experiment: str | None = None,
) -> dict:
    """Run the compiled pipeline on a cron schedule (PipelineJob.create_schedule), or print the request.

    `display_name` names the schedule (the run template the SDK sends carries no name of its own); `labels`
    go on every run; with `experiment`, every run adds itself to that Vertex AI experiment (the pipeline's
    ``experiment`` parameter).
    """
    p = Problems("arguments for create_schedule")
    check_experiment(p, experiment)
    if experiment and isinstance(parameter_values, dict):
        parameter_values = {**parameter_values, "experiment": experiment}  # the template must take it: checked
    job_args = dict(
        template_path=template_path, project=project, region=region, pipeline_root=pipeline_root,
        parameter_values=parameter_values, labels=labels,
    )
    check_job_args(p, **job_args, service_account=service_account)
    try:
        validate_cron(cron)
    except ValueError as err:
        p.items.append(str(err))
    if not isinstance(display_name, str) or not 0 < len(display_name) <= 128:
        p.add("display_name", display_name, "must be 1-128 characters", "pass e.g. 'petqlora-weekly'")
    if not _is_count(max_concurrent_run_count):
        p.add("max_concurrent_run_count", max_concurrent_run_count, "must be an integer >= 1",
              "pass 1 so two training runs never overlap")
    if max_run_count is not None and not _is_count(max_run_count):
        p.add("max_run_count", max_run_count, "must be None (no limit) or an integer >= 1", "pass e.g. 10")
    p.raise_if_any()
    job_args["enable_caching"] = enable_caching  # build_pipeline_job checks it
    schedule_args = dict(cron=cron, display_name=display_name, max_concurrent_run_count=max_concurrent_run_count,
                         max_run_count=max_run_count, service_account=service_account)
    if dry_run:
        with pipeline_job_session(job_args, dry_run=True) as job:
            request = _create_schedule_request(job, **schedule_args)
        print_json(out, request)
        return request

    with pipeline_job_session(job_args, credentials, api_endpoint) as job:
        schedule = job.create_schedule(**schedule_args)
        result = _schedule_summary(schedule._gca_resource)
    out(f"Created schedule {result['name']} ({result['cron']}, {result['state']})")
    return result


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _schedule_summary(resource: Any) -> dict:
    return {
        "name": resource.name,
        "display_name": resource.display_name,
        "cron": resource.cron,
        "state": resource.state.name,
    }


def _schedule_name(p: Problems, name: Any, project: Any, region: Any) -> str:
    """A full schedule resource name from either a full name or a bare schedule ID."""
    if isinstance(name, str) and _SCHEDULE_NAME_RE.match(name):
        return name
    if isinstance(name, str) and re.match(r"^[0-9]+$", name):
        return f"projects/{project}/locations/{region}/schedules/{name}"
    p.add("name", name, "must be a schedule ID or projects/<p>/locations/<r>/schedules/<id>",
          "copy it from `list_schedules`")
    return ""


def list_schedules(
    *,
    project: str,
    region: str,
    dry_run: bool = False,
    out: Out = print,
    credentials: Any = None,
    api_endpoint: str | None = None,
) -> dict:
    """The pipeline schedules of a project and region (dry run: the ListSchedules REST call)."""
    p = Problems("arguments for list_schedules")
    check_project_region(p, project, region)
    p.raise_if_any()
    if dry_run:
        from google.cloud.aiplatform.compat.types import schedule_service

        request = schedule_service.ListSchedulesRequest(parent=f"projects/{project}/locations/{region}")
        payload = {"requests": [rest_request("schedule_service", "ListSchedules", request)]}
        print_json(out, payload)
        return payload
    from google.cloud import aiplatform

    with vertex_session(project, region, credentials, api_endpoint):
        schedules = aiplatform.PipelineJobSchedule.list(
            project=project, location=region, credentials=credentials
        )
        rows = [_schedule_summary(s._gca_resource) for s in schedules]
    for row in rows:
        out(f"{row['name']}  {row['display_name']}  {row['cron']}  {row['state']}")
    return {"schedules": rows}


def change_schedule(
    action: str, name: str, *, project: str, region: str, dry_run: bool = False, out: Out = print,
    credentials: Any = None, api_endpoint: str | None = None,
) -> dict:
    """Pause (no new runs until resumed), resume, or delete (runs it already started are kept) a schedule.

    Like the SDK, it first gets the schedule, then acts on it; a dry run prints both REST calls.
    """
    method = f"{action.capitalize()}Schedule"
    p = Problems(f"arguments for {method}")
    if action not in SCHEDULE_ACTIONS:
        p.add("action", action, f"must be one of {', '.join(SCHEDULE_ACTIONS)}", "pass pause, resume or delete")
    check_project_region(p, project, region)
    full_name = _schedule_name(p, name, project, region)
    p.raise_if_any()
    request = {"method": method, "name": full_name}
    if dry_run:
        from google.cloud.aiplatform.compat.types import schedule_service

        action_request = getattr(schedule_service, f"{method}Request")(name=full_name)
        payload = {"requests": [
            rest_request("schedule_service", "GetSchedule", schedule_service.GetScheduleRequest(name=full_name)),
            rest_request("schedule_service", method, action_request)]}
        print_json(out, payload)
        return payload
    from google.cloud import aiplatform

    with vertex_session(project, region, credentials, api_endpoint):
        schedule = aiplatform.PipelineJobSchedule.get(
            schedule_id=full_name, project=project, location=region, credentials=credentials
        )
        getattr(schedule, action)()
    out(f"{method}: {full_name} done")
    return {**request, "done": True}
