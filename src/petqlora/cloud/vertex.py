"""Vertex AI edge: submit, schedule and dry-run the compiled pipeline; register adapters in Model Registry.

Every command has a dry run that builds the real request with the real SDK (offline, with
``AnonymousCredentials``) and prints it as JSON, so a reviewer can see exactly what would be sent
without credentials. The SDK is imported inside the functions: importing it takes seconds, and the
trainer image does not install it.

Commands run inside ``_vertex_session``, which gives the SDK a fresh configuration for the call and puts
the previous one back afterwards. ``aiplatform.init`` mutates a process-global config that outlives the
call (an ``api_endpoint`` pointed at a local fake, or cached credentials, would leak into the next
command); the scoped swap keeps each call explicit. Not thread-safe: the CLI is single-threaded.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import zoneinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping
from petqlora.cloud.names import (
    PROJECT_RE as _PROJECT_RE,
    LABEL_KEY_RE as _LABEL_KEY_RE,
    LABEL_VALUE_RE as _LABEL_VALUE_RE,
    ALIAS_RE as _ALIAS_RE,
)

if TYPE_CHECKING:  # the SDK is only needed at call time
    from google.cloud import aiplatform

__all__ = [
    "VertexAuthError",
    "build_pipeline_job",
    "change_schedule",
    "create_schedule",
    "list_schedules",
    "pipeline_run_link",
    "register_vertex_model",
    "run_alias",
    "submit_pipeline",
    "to_vertex_labels",
    "validate_cron",
    "vertex_label_key",
    "vertex_label_value",
]

Out = Callable[[str], Any]

# The label that ties a model version to the pipeline run that produced it (idempotent registration).
RUN_ID_LABEL = "run_id"

_SERVICE_ACCOUNT_RE = re.compile(r"^[^@\s]+@[^@\s]+\.gserviceaccount\.com$")
_NETWORK_RE = re.compile(r"^projects/[^/\s]+/global/networks/[^/\s]+$")
_GCS_URI_RE = re.compile(r"^gs://[a-z0-9][a-z0-9._-]{1,221}[a-z0-9](/.*)?$")
_SCHEDULE_NAME_RE = re.compile(r"^projects/[^/]+/locations/[^/]+/schedules/[^/]+$")
_MAX_LABELS = 64

_AUTH_HELP = (
    "no Google Cloud credentials were found. Authenticate with one of:\n"
    "  - `gcloud auth application-default login` (your user account, for interactive use), or\n"
    "  - GOOGLE_APPLICATION_CREDENTIALS=/path/to/service-account-key.json (a service account key file), or\n"
    "  - workload identity / the attached service account when running on Google Cloud.\n"
    "Or use a dry run, which prints the request without credentials."
)


class VertexAuthError(RuntimeError):
    """Raised when a command that talks to Vertex AI finds no credentials."""


# ---------------------------------------------------------------------------------------------------
# Validation: collect every problem, raise once.


class _Problems:
    def __init__(self, command: str):
        self.command = command
        self.items: list[str] = []

    def add(self, name: str, value: Any, rule: str, fix: str) -> None:
        self.items.append(f"{name}={value!r}: {rule}; fix: {fix}")

    def raise_if_any(self) -> None:
        if self.items:
            raise ValueError(
                f"invalid arguments for {self.command}:\n" + "\n".join(f"  - {p}" for p in self.items)
            )


def _supported_regions() -> frozenset[str]:
    from google.cloud.aiplatform import constants

    return frozenset(constants.base.SUPPORTED_REGIONS) | frozenset(constants.base.MREP_JURISDICTIONS)


def _check_project_region(p: _Problems, project: Any, region: Any) -> None:
    if not isinstance(project, str) or not _PROJECT_RE.match(project):
        p.add(
            "project", project,
            "must be a Google Cloud project ID (6-30 chars: lowercase letters, digits, hyphens; starts "
            "with a letter)",
            "pass the ID shown by `gcloud config get-value project`, not the project name or number",
        )
    if not isinstance(region, str) or region.lower() not in _supported_regions():
        p.add("region", region, "must be a Vertex AI region",
              "pass a region such as 'us-central1' or 'europe-west4'")


def _check_labels(p: _Problems, name: str, labels: Any) -> None:
    if labels is None:
        return
    if not isinstance(labels, Mapping):
        p.add(name, labels, "must be a dict of str to str", "pass e.g. {'team': 'pets'}")
        return
    if len(labels) > _MAX_LABELS:
        p.add(name, f"<{len(labels)} labels>", f"Vertex allows at most {_MAX_LABELS} labels",
              "drop some labels")
    for k, v in labels.items():
        if not isinstance(k, str) or not _LABEL_KEY_RE.match(k):
            p.add(
                f"{name} key", k,
                "label keys must be 1-63 chars of lowercase letters, digits, '_' or '-', "
                "starting with a letter",
                "use petqlora.cloud.vertex.to_vertex_labels() to sanitise them",
            )
        if not isinstance(v, str) or not _LABEL_VALUE_RE.match(v):
            p.add(
                f"{name}[{k!r}]", v,
                "label values must be at most 63 chars of lowercase letters, digits, '_' or '-'",
                "use petqlora.cloud.vertex.to_vertex_labels() to sanitise them",
            )


def _template_parameters(template_path: str) -> set[str] | None:
    """Parameter names the compiled pipeline accepts, or None when the template is not a local IR file."""
    import yaml

    spec = yaml.safe_load(Path(template_path).read_text())
    if not isinstance(spec, dict):
        return None
    spec = spec.get("pipelineSpec", spec)  # a PipelineJob JSON wraps the IR
    params = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    return set(params)


def _check_job_args(
    p: _Problems,
    *,
    template_path: Any,
    project: Any,
    region: Any,
    pipeline_root: Any,
    parameter_values: Any,
    service_account: Any = None,
    network: Any = None,
    labels: Any = None,
    display_name: Any = None,
) -> None:
    _check_project_region(p, project, region)
    remote = isinstance(template_path, str) and template_path.startswith(("https://", "gs://"))
    if not isinstance(template_path, str) or not template_path:
        p.add("template_path", template_path, "must be a path to a compiled pipeline YAML",
              "compile the pipeline to YAML first (kfp.compiler.Compiler().compile) and pass its path")
    elif not remote and not Path(template_path).is_file():
        p.add("template_path", template_path, "file not found",
              "compile the pipeline first, or pass the path of the compiled YAML")
    if not isinstance(pipeline_root, str) or not _GCS_URI_RE.match(pipeline_root):
        p.add("pipeline_root", pipeline_root, "Vertex AI Pipelines needs a Cloud Storage URI (bucket names are 3-63 chars)",
              "pass gs://<bucket>/<prefix> in the same region as the run")
    if not isinstance(parameter_values, Mapping) or not all(isinstance(k, str) for k in parameter_values):
        p.add("parameter_values", parameter_values, "must be a dict keyed by pipeline parameter name",
              "pass e.g. {'epochs': 3}")
    elif isinstance(template_path, str) and not remote and Path(template_path).is_file():
        try:
            known = _template_parameters(template_path)
        except Exception as err:  # noqa: BLE001 - any parse failure means the same fix
            p.add("template_path", template_path, f"is not a compiled pipeline YAML ({type(err).__name__})",
                  "pass the file written by kfp.compiler.Compiler().compile")
            known = None
        unknown = sorted(set(parameter_values) - known) if known is not None else []
        if unknown:
            p.add("parameter_values", unknown, f"not parameters of the pipeline (it takes {sorted(known)})",
                  "fix the names or recompile the pipeline")
    if service_account is not None and (
        not isinstance(service_account, str) or not _SERVICE_ACCOUNT_RE.match(service_account)
    ):
        p.add("service_account", service_account, "must be a service account email",
              "pass e.g. trainer@my-project.iam.gserviceaccount.com")
    if network is not None and (not isinstance(network, str) or not _NETWORK_RE.match(network)):
        p.add("network", network, "must be a full VPC network name",
              "pass projects/<project-number>/global/networks/<network>")
    if display_name is not None and (not isinstance(display_name, str) or not 0 < len(display_name) <= 128):
        p.add("display_name", display_name, "must be 1-128 characters", "shorten it")
    _check_labels(p, "labels", labels)


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
# Labels and aliases.


def vertex_label_key(key: str) -> str:
    """A Vertex label key from any string: lowercase, [a-z0-9_-], starts with a letter, at most 63 chars."""
    text = re.sub(r"[^a-z0-9_-]", "_", str(key).strip().lower())
    if not text:
        raise ValueError(f"label key {key!r}: empty after sanitising; fix: use a key with letters or digits")
    if not text[0].isalpha():
        text = "m_" + text  # keys must start with a letter; "m_" keeps e.g. "f1" and "1f" apart
    return text[:63]


def vertex_label_value(value: Any) -> str:
    """A Vertex label value: metrics become e.g. 0.8734 -> "0_8734"; other text is lowercased and sanitised."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            text = str(value).lower()  # "nan", "inf", "-inf"
        else:
            text = format(value, ".6g")  # 6 significant digits: short, and stable across runs
    else:
        text = str(value)
    return re.sub(r"[^a-z0-9_-]", "_", text.strip().lower())[:63]


def to_vertex_labels(labels: Mapping[str, Any]) -> dict[str, str]:
    """Sanitise a mapping (strings, metric values) into labels Vertex accepts; reject keys that collide."""
    out: dict[str, str] = {}
    origin: dict[str, str] = {}
    for key, value in labels.items():
        k = vertex_label_key(key)
        if k in out:
            raise ValueError(
                f"labels: keys {origin[k]!r} and {key!r} both become {k!r} under Vertex label rules; "
                "fix: rename one of them"
            )
        out[k] = vertex_label_value(value)
        origin[k] = key
    if len(out) > _MAX_LABELS:
        raise ValueError(f"labels: {len(out)} labels, Vertex allows at most {_MAX_LABELS}; fix: drop some")
    return out


def run_alias(run_id: str) -> str:
    """The version alias that names the run which registered a version, e.g. "run-petqlora-20261128"."""
    slug = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", str(run_id).lower())).strip("-")
    return ("run-" + slug)[:128].rstrip("-")


# ---------------------------------------------------------------------------------------------------
# SDK plumbing.


@contextlib.contextmanager
def _vertex_session(
    project: str, region: str, credentials: Any = None, api_endpoint: str | None = None
) -> Iterator[None]:
    """A fresh SDK config for one command (see the module docstring); turns a missing login into advice."""
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud.aiplatform import initializer

    saved = initializer.global_config
    config = initializer._Config()
    config.init(
        project=project,
        location=region,
        credentials=credentials,
        api_endpoint=api_endpoint,
        # a custom endpoint is a REST one (a local fake, a private endpoint); gRPC stays the SDK default
        api_transport="rest" if api_endpoint else None,
    )
    initializer.global_config = config
    try:
        yield
    except DefaultCredentialsError as err:
        raise VertexAuthError(_AUTH_HELP) from err
    finally:
        initializer.global_config = saved


def _to_json_dict(message: Any) -> dict:
    """A proto-plus message as the JSON Vertex receives, with snake_case field names."""
    from google.protobuf import json_format

    return json_format.MessageToDict(type(message).pb(message), preserving_proto_field_name=True)


def _print_json(out: Out, payload: dict) -> None:
    out(json.dumps(payload, indent=2, sort_keys=True))


def _anonymous() -> Any:
    from google.auth.credentials import AnonymousCredentials

    return AnonymousCredentials()


def pipeline_run_link(project: str, region: str, job_id: str) -> str:
    """The run's page in the Vertex AI Pipelines console."""
    return (
        f"https://console.cloud.google.com/vertex-ai/locations/{region}/pipelines/runs/{job_id}"
        f"?project={project}"
    )


# ---------------------------------------------------------------------------------------------------
# Pipeline runs.


def build_pipeline_job(
    *,
    template_path: str,
    project: str,
    region: str,
    pipeline_root: str,
    parameter_values: dict,
    display_name: str | None = None,
    labels: dict | None = None,
    enable_caching: bool | None = None,
    credentials: Any = None,
) -> "aiplatform.PipelineJob":
    """The SDK's PipelineJob for the compiled pipeline (nothing is sent until submit)."""
    p = _Problems("build_pipeline_job")
    _check_job_args(
        p, template_path=template_path, project=project, region=region, pipeline_root=pipeline_root,
        parameter_values=parameter_values, labels=labels, display_name=display_name,
    )
    if enable_caching is not None and not isinstance(enable_caching, bool):
        p.add("enable_caching", enable_caching, "must be True, False or None (use the compiled settings)",
              "pass a bool")
    p.raise_if_any()
    from google.cloud import aiplatform

    if display_name is None:
        import yaml

        spec = yaml.safe_load(Path(template_path).read_text()) if Path(template_path).is_file() else {}
        spec = spec.get("pipelineSpec", spec) if isinstance(spec, dict) else {}
        display_name = spec.get("pipelineInfo", {}).get("name") or "petqlora"
    return aiplatform.PipelineJob(
        display_name=display_name,
        template_path=template_path,
        pipeline_root=pipeline_root,
        parameter_values=dict(parameter_values),
        enable_caching=enable_caching,
        labels=dict(labels) if labels else None,
        credentials=credentials,
        project=project,
        location=region,
    )


def _create_pipeline_job_request(job: Any, service_account: str | None, network: str | None) -> dict:
    """The CreatePipelineJobRequest that PipelineJob.submit sends, as JSON."""
    from google.cloud.aiplatform.compat.types import pipeline_service

    # submit() sets these on the resource just before sending; do the same so the dry run shows them
    if service_account:
        job._gca_resource.service_account = service_account
    if network:
        job._gca_resource.network = network
    request = pipeline_service.CreatePipelineJobRequest(
        parent=job._parent, pipeline_job=job._gca_resource, pipeline_job_id=job.job_id
    )
    return {"method": "CreatePipelineJob", **_to_json_dict(request)}


def submit_pipeline(
    *,
    template_path: str,
    project: str,
    region: str,
    pipeline_root: str,
    parameter_values: dict,
    service_account: str | None = None,
    network: str | None = None,
    labels: dict | None = None,
    watch: bool = False,
    dry_run: bool = False,
    out: Out = print,
    display_name: str | None = None,
    enable_caching: bool | None = None,
    credentials: Any = None,
    api_endpoint: str | None = None,
) -> dict:
    """Submit one run of the compiled pipeline to Vertex AI Pipelines (or print the request, dry_run).

    Returns the request (dry run) or {"name", "job_id", "link", "state"}.
    """
    p = _Problems("submit_pipeline")
    _check_job_args(
        p, template_path=template_path, project=project, region=region, pipeline_root=pipeline_root,
        parameter_values=parameter_values, service_account=service_account, network=network,
        labels=labels, display_name=display_name,
    )
    p.raise_if_any()
    job_args = dict(
        template_path=template_path, project=project, region=region, pipeline_root=pipeline_root,
        parameter_values=parameter_values, display_name=display_name, labels=labels,
        enable_caching=enable_caching,
    )
    if dry_run:
        with _vertex_session(project, region, _anonymous()):
            job = build_pipeline_job(**job_args, credentials=_anonymous())
            request = _create_pipeline_job_request(job, service_account, network)
        _print_json(out, request)
        return request

    with _vertex_session(project, region, credentials, api_endpoint):
        job = build_pipeline_job(**job_args, credentials=credentials)
        job.submit(service_account=service_account, network=network)
        link = pipeline_run_link(project, region, job.job_id)
        out(f"Submitted {job.resource_name}\nView the run: {link}")
        result = {"name": job.resource_name, "job_id": job.job_id, "link": link, "state": None}
        if watch:
            job.wait()
            result["state"] = job.state.name
            out(f"Run {job.job_id} finished: {result['state']}")
    return result


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
    return {"method": "CreateSchedule", **_to_json_dict(request)}


def create_schedule(
    *,
    template_path: str,
    project: str,
    region: str,
    pipeline_root: str,
    parameter_values: dict,
    cron: str,
    display_name: str,
    max_concurrent_run_count: int = 1,
    max_run_count: int | None = None,
    service_account: str | None = None,
    dry_run: bool = False,
    out: Out = print,
    labels: dict | None = None,
    enable_caching: bool | None = None,
    credentials: Any = None,
    api_endpoint: str | None = None,
) -> dict:
    """Run the compiled pipeline on a cron schedule (PipelineJob.create_schedule), or print the request."""
    p = _Problems("create_schedule")
    _check_job_args(
        p, template_path=template_path, project=project, region=region, pipeline_root=pipeline_root,
        parameter_values=parameter_values, service_account=service_account, labels=labels,
    )
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
    job_args = dict(
        template_path=template_path, project=project, region=region, pipeline_root=pipeline_root,
        parameter_values=parameter_values, labels=labels, enable_caching=enable_caching,
    )
    if dry_run:
        with _vertex_session(project, region, _anonymous()):
            job = build_pipeline_job(**job_args, credentials=_anonymous())
            request = _create_schedule_request(
                job, cron=cron, display_name=display_name, max_concurrent_run_count=max_concurrent_run_count,
                max_run_count=max_run_count, service_account=service_account,
            )
        _print_json(out, request)
        return request

    with _vertex_session(project, region, credentials, api_endpoint):
        job = build_pipeline_job(**job_args, credentials=credentials)
        schedule = job.create_schedule(
            cron=cron, display_name=display_name, max_concurrent_run_count=max_concurrent_run_count,
            max_run_count=max_run_count, service_account=service_account,
        )
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


def _schedule_name(p: _Problems, name: Any, project: Any, region: Any) -> str:
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
    """The pipeline schedules of a project and region."""
    p = _Problems("list_schedules")
    _check_project_region(p, project, region)
    p.raise_if_any()
    request = {"method": "ListSchedules", "parent": f"projects/{project}/locations/{region}"}
    if dry_run:
        _print_json(out, request)
        return request
    from google.cloud import aiplatform

    with _vertex_session(project, region, credentials, api_endpoint):
        schedules = aiplatform.PipelineJobSchedule.list(
            project=project, location=region, credentials=credentials
        )
        rows = [_schedule_summary(s._gca_resource) for s in schedules]
    for row in rows:
        out(f"{row['name']}  {row['display_name']}  {row['cron']}  {row['state']}")
    return {"schedules": rows}


SCHEDULE_ACTIONS = ("pause", "resume", "delete")


def change_schedule(
    action: str, name: str, *, project: str, region: str, dry_run: bool = False, out: Out = print,
    credentials: Any = None, api_endpoint: str | None = None,
) -> dict:
    """Pause (no new runs until resumed), resume, or delete (runs it already started are kept) a schedule."""
    method = f"{action.capitalize()}Schedule"
    p = _Problems(method)
    if action not in SCHEDULE_ACTIONS:
        p.add("action", action, f"must be one of {', '.join(SCHEDULE_ACTIONS)}", "pass pause, resume or delete")
    _check_project_region(p, project, region)
    full_name = _schedule_name(p, name, project, region)
    p.raise_if_any()
    request = {"method": method, "name": full_name}
    if dry_run:
        _print_json(out, request)
        return request
    from google.cloud import aiplatform

    with _vertex_session(project, region, credentials, api_endpoint):
        schedule = aiplatform.PipelineJobSchedule.get(
            schedule_id=full_name, project=project, location=region, credentials=credentials
        )
        getattr(schedule, action)()
    out(f"{method}: {full_name} done")
    return {**request, "done": True}


# ---------------------------------------------------------------------------------------------------
# Model Registry.


def _version_summary(model: Any, reused: bool) -> dict:
    """The result of register_vertex_model from a gapic Model (name may carry "@version")."""
    return {
        "resource_name": model.name.split("@", 1)[0],
        "version_id": model.version_id,
        "aliases": list(model.version_aliases),
        "labels": dict(model.labels),
        "reused": reused,
    }


def register_vertex_model(
    *,
    project: str,
    region: str,
    display_name: str,
    artifact_uri: str,
    serving_container_image_uri: str,
    parent_model: str | None,
    version_aliases: list[str],
    labels: Mapping[str, Any],
    description: str = "",
    run_id: str,
    dry_run: bool = False,
    credentials: Any = None,
    api_endpoint: str | None = None,
    out: Out = print,
    make_default: bool = True,
) -> dict:
    """Upload the adapter as a new version of one Vertex AI Model (created on the first run).

    The parent is `parent_model` (resource name or ID) or else the one model with this display name.
    Labels are sanitised to Vertex's rules (metric 0.8734 -> "0_8734"); the run is recorded both as
    the label "run_id" and the alias "run-<run id>", so a retried run finds its version instead of
    uploading a second one. Returns {"resource_name", "version_id", "aliases", "labels", "reused"}.
    """
    p = _Problems("register_vertex_model")
    _check_project_region(p, project, region)
    if not isinstance(display_name, str) or not 0 < len(display_name) <= 128:
        p.add("display_name", display_name, "must be 1-128 characters", "pass e.g. 'petqlora-gemma4'")
    if not isinstance(artifact_uri, str) or not artifact_uri.startswith("gs://"):
        p.add("artifact_uri", artifact_uri, "must be a gs:// URI (Vertex reads the adapter from Cloud Storage)",
              "pass the adapter's gs:// directory")
    if not isinstance(serving_container_image_uri, str) or not serving_container_image_uri.strip():
        p.add("serving_container_image_uri", serving_container_image_uri,
              "Vertex needs a serving image for a model with artifacts",
              "pass the image URI (with a version tag) that serves the adapter")
    if parent_model is not None and (
        not isinstance(parent_model, str)
        or not re.match(r"^(projects/[^/]+/locations/[^/]+/models/)?[A-Za-z0-9_-]+$", parent_model)
    ):
        p.add("parent_model", parent_model, "must be a model ID or projects/<p>/locations/<r>/models/<id>",
              "pass None to find the parent by display name")
    if not isinstance(run_id, str) or not run_id.strip():
        p.add("run_id", run_id, "must be a non-empty string", "pass the pipeline run's job id")
    if not isinstance(version_aliases, (list, tuple)):
        p.add("version_aliases", version_aliases, "must be a list of strings", "pass e.g. ['candidate']")
        version_aliases = []
    for alias in version_aliases:
        if not isinstance(alias, str) or not _ALIAS_RE.match(alias) or alias.isdigit():
            p.add("version_aliases", alias,
                  "aliases must match [a-z][a-zA-Z0-9-]{0,126}[a-z0-9] (letters, digits, '-')",
                  "use e.g. 'candidate' or 'champion'")
    if not isinstance(labels, Mapping):
        p.add("labels", labels, "must be a dict", "pass e.g. {'accuracy': 0.87}")
        labels = {}
    if not isinstance(description, str):
        p.add("description", description, "must be a string", "pass text or ''")
    if not isinstance(make_default, bool):
        p.add("make_default", make_default, "must be a bool", "pass True or False")
    final_labels: dict[str, str] = {}
    try:
        final_labels = to_vertex_labels({**labels, RUN_ID_LABEL: run_id} if isinstance(run_id, str) else labels)
    except ValueError as err:
        p.items.append(str(err))
    p.raise_if_any()

    alias_for_run = run_alias(run_id)
    aliases = list(dict.fromkeys([*version_aliases, alias_for_run]))
    if make_default and "default" not in aliases:
        aliases.append("default")  # what Model.upload(is_default_version=True) adds

    if dry_run:
        from google.cloud.aiplatform.compat.types import model as gca_model
        from google.cloud.aiplatform.compat.types import model_service

        parent = f"projects/{project}/locations/{region}"
        request = model_service.UploadModelRequest(
            parent=parent,
            parent_model=(
                parent_model if parent_model is None or parent_model.startswith("projects/")
                else f"{parent}/models/{parent_model}"
            ),
            model=gca_model.Model(
                display_name=display_name,
                description=description,
                version_description=description,
                version_aliases=aliases,
                labels=final_labels,
                artifact_uri=artifact_uri,
                container_spec=gca_model.ModelContainerSpec(image_uri=serving_container_image_uri),
            ),
        )
        payload = {"method": "UploadModel", **_to_json_dict(request)}
        if parent_model is None:
            # the parent is looked up at run time; show the lookup that will fill parent_model
            payload["parent_model_lookup"] = {
                "method": "ListModels", "parent": parent, "filter": f'display_name="{display_name}"',
            }
        _print_json(out, payload)
        return payload

    from google.cloud import aiplatform
    from google.cloud.aiplatform.compat.types import model_service

    with _vertex_session(project, region, credentials, api_endpoint):
        if parent_model is None:
            matches = aiplatform.Model.list(
                filter=f'display_name="{display_name}"', project=project, location=region,
                credentials=credentials,
            )
            if len(matches) > 1:
                names = ", ".join(m.resource_name for m in matches)
                raise ValueError(
                    f"display_name={display_name!r}: {len(matches)} Vertex models have this name ({names}); "
                    "fix: pass parent_model=<the resource name of the one to add versions to>"
                )
            parent_model = matches[0].resource_name if matches else None

        if parent_model is not None:
            registry = aiplatform.models.ModelRegistry(
                parent_model, project=project, location=region, credentials=credentials
            )
            request = model_service.ListModelVersionsRequest(name=registry.model_resource_name)
            for version in registry.client.list_model_versions(request=request):
                same_run = version.labels.get(RUN_ID_LABEL) == final_labels[RUN_ID_LABEL]
                if same_run or alias_for_run in version.version_aliases:
                    summary = _version_summary(version, reused=True)
                    out(f"Run {run_id} already registered {summary['resource_name']}@{summary['version_id']}")
                    return summary

        model = aiplatform.Model.upload(
            display_name=display_name,
            artifact_uri=artifact_uri,
            serving_container_image_uri=serving_container_image_uri,
            parent_model=parent_model,
            is_default_version=make_default,
            version_aliases=list(aliases),  # the SDK appends to this list: hand it a copy
            version_description=description or None,
            description=description or None,
            labels=final_labels,
            project=project,
            location=region,
            credentials=credentials,
        )
        summary = _version_summary(model._gca_resource, reused=False)
    out(f"Registered {summary['resource_name']}@{summary['version_id']} aliases={summary['aliases']}")
    return summary


def default_version_artifact_uri(*, project: str, region: str, display_name: str, credentials: Any = None,
                                 api_endpoint: str | None = None) -> str | None:
    """The artifact URI of the default version of the model named `display_name`, or None if none exists.

    Champion/challenger on Vertex: a retraining run evaluates this version on the same split.
    """
    from google.cloud import aiplatform

    with _vertex_session(project, region, credentials, api_endpoint):
        matches = aiplatform.Model.list(filter=f'display_name="{display_name}"', project=project, location=region,
                                        credentials=credentials)
        if not matches:
            return None
        if len(matches) > 1:
            names = ", ".join(m.resource_name for m in matches)
            raise ValueError(f"display_name={display_name!r}: {len(matches)} Vertex models have this name ({names}); "
                             "rename the extra ones so the champion is unambiguous")
        # Model.list returns each model at its default version.
        return matches[0].uri or None


def model_version_uri(
    display_name: str, version: str = "default", *, project: str, region: str, dry_run: bool = False,
    credentials: Any = None, api_endpoint: str | None = None, out: Out = print,
) -> str | None:
    """The artifact URI of NAME@VERSION (a version number or an alias) in Model Registry, or None when no
    model has this display name."""
    p = _Problems("model_version_uri")
    _check_project_region(p, project, region)
    if not isinstance(version, str) or not re.match(r"^([0-9]+|[a-z][a-zA-Z0-9-]{0,126}[a-z0-9])$", version):
        p.add("version", version, "must be a version number or an alias", "pass e.g. 3 or default")
    p.raise_if_any()
    parent = f"projects/{project}/locations/{region}"
    if dry_run:
        _print_json(out, {"requests": [
            {"method": "ListModels", "parent": parent, "filter": f'display_name="{display_name}"'},
            {"method": "GetModel", "name": f"<the model found by ListModels>@{version}"}]})
        return f"<artifact_uri of {display_name}@{version}>"
    from google.cloud import aiplatform

    with _vertex_session(project, region, credentials, api_endpoint):
        matches = aiplatform.Model.list(filter=f'display_name="{display_name}"', project=project, location=region,
                                        credentials=credentials)
        if len(matches) > 1:
            raise ValueError(f"display_name={display_name!r}: {len(matches)} Vertex models have this name; "
                             "rename the extra ones")
        if not matches:
            return None
        return aiplatform.Model(f"{matches[0].resource_name}@{version}", project=project, location=region,
                                credentials=credentials).uri
