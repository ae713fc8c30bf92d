"""petqlora.cloud.vertex_*: dry runs show the real SDK requests; real calls go through the real SDK to a local fake.

The fake (tests/fakes/vertex_api.py) serves the Vertex REST surface on 127.0.0.1; the SDK reaches it via
api_endpoint="http://127.0.0.1:PORT" with the REST transport and AnonymousCredentials. No cloud, no
credentials, CPU only.
"""

# No `from __future__ import annotations`: kfp reads the component's annotations as real types.
import json
import re

import google.auth
import pytest
from google.auth.exceptions import DefaultCredentialsError
from hypothesis import given, settings
from hypothesis import strategies as st

from petqlora.cloud import vertex_common, vertex_pipelines, vertex_schedules

from vertex_support import (  # noqa: F401 (fixtures)
    ALT, LOCATION, PROJECT, REGION, ROOT, SA, compile_to, cloud, fake, no_credentials, tiny_pipeline,
)

NETWORK = "projects/123456/global/networks/vpc"
SCHEDULES = f"{LOCATION}/schedules"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> str:
    return compile_to(tmp_path_factory.mktemp("ir") / "tiny.yaml", tiny_pipeline)


# ------------------------------------------------------------------------------------------ dry runs


def test_dry_run_submit_prints_the_create_pipeline_job_request(template, no_credentials, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a dry run must not look for credentials")

    monkeypatch.setattr(google.auth, "default", refuse)
    lines = []
    request = vertex_pipelines.submit_pipeline(
        template_path=template, project=PROJECT, region=REGION, pipeline_root=ROOT,
        parameter_values={"n": 3, "s": "y"}, service_account=SA, network=NETWORK,
        labels={"team": "pets"}, display_name="my run", dry_run=True, out=lines.append,
    )
    assert json.loads(lines[0]) == request
    assert (request["method"], request["http"]) == ("CreatePipelineJob", f"POST /v1/{LOCATION}/pipelineJobs")
    assert request["query"] == {"pipelineJobId": request["pipeline_job_id"], **ALT}  # the ID goes in the URL
    assert request["parent"] == f"projects/{PROJECT}/locations/{REGION}"
    assert request["pipeline_job_id"].startswith("tiny-pipeline-")
    job = request["pipeline_job"]
    assert job["pipeline_spec"]["pipelineInfo"]["name"] == "tiny-pipeline"
    assert job["runtime_config"]["gcs_output_directory"] == ROOT
    assert job["runtime_config"]["parameter_values"] == {"n": 3, "s": "y"}
    assert job["service_account"] == SA and job["network"] == NETWORK
    assert job["labels"] == {"team": "pets"} and job["display_name"] == "my run"
    assert "experiment" not in request


def test_dry_run_schedule_prints_the_create_schedule_request(template, no_credentials):
    lines = []
    request = vertex_schedules.create_schedule(
        template_path=template, project=PROJECT, region=REGION, pipeline_root=ROOT,
        parameter_values={"n": 2}, cron="TZ=Europe/Paris 0 3 * * 1", display_name="weekly",
        max_run_count=10, service_account=SA, dry_run=True, out=lines.append,
    )
    assert json.loads(lines[0]) == request
    assert (request["method"], request["http"]) == ("CreateSchedule", f"POST /v1/{LOCATION}/schedules")
    assert request["parent"] == f"projects/{PROJECT}/locations/{REGION}"
    schedule = request["schedule"]
    assert schedule["cron"] == "TZ=Europe/Paris 0 3 * * 1"
    assert schedule["display_name"] == "weekly"
    assert schedule["max_concurrent_run_count"] == "1" and schedule["max_run_count"] == "10"  # int64 -> str
    job = schedule["create_pipeline_job_request"]["pipeline_job"]
    assert job["service_account"] == SA
    assert job["runtime_config"]["gcs_output_directory"] == ROOT
    assert job["runtime_config"]["parameter_values"] == {"n": 2}
    assert "pipeline_spec" in job


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "cron",
    ["0 3 * * 1", "TZ=Europe/Paris 0 3 * * 1", "CRON_TZ=America/New_York */15 1-5 * JAN-MAR MON-FRI",
     "0 0 1,15 * *", "5-55/10 * * * 0"],
)
def test_valid_cron_accepted(cron):
    assert vertex_schedules.validate_cron(cron) == cron


@pytest.mark.parametrize(
    "cron, reason",
    [
        ("0 3 * *", "exactly 5 fields"),
        ("0 3 * * 1 2026", "exactly 5 fields"),
        ("61 3 * * 1", "minute field"),
        ("0 24 * * 1", "hour field"),
        ("0 3 * * MONDAY", "day of week field"),
        ("*/0 3 * * 1", "step"),
        ("TZ=Mars/Olympus 0 3 * * 1", "IANA"),
        ("", "cron expression string"),
    ],
)
def test_bad_cron_rejected_with_a_fix(cron, reason, template):
    with pytest.raises(ValueError) as err:
        vertex_schedules.create_schedule(
            template_path=template, project=PROJECT, region=REGION, pipeline_root=ROOT,
            parameter_values={}, cron=cron, display_name="weekly", dry_run=True, out=lambda _: None,
        )
    assert reason in str(err.value) and "fix:" in str(err.value)


def test_bad_arguments_are_reported_together(template):
    with pytest.raises(ValueError) as err:
        vertex_pipelines.submit_pipeline(
            template_path=template, project="My Project", region="mars-north1", pipeline_root="/local/dir",
            parameter_values={"epochs": 3}, service_account="not-an-email", labels={"Team": "Pets"},
            dry_run=True, out=lambda _: None,
        )
    message = str(err.value)
    names = ("project=", "region=", "pipeline_root=", "parameter_values=", "service_account=", "labels key=")
    for name in names:
        assert name in message
    assert "['n', 's']" in message  # the parameters the pipeline does take


def test_missing_template_points_at_compile(tmp_path):
    with pytest.raises(ValueError, match="compile"):
        vertex_pipelines.submit_pipeline(
            template_path=str(tmp_path / "missing.yaml"), project=PROJECT, region=REGION, pipeline_root=ROOT,
            parameter_values={}, dry_run=True, out=lambda _: None,
        )


def test_submit_without_credentials_says_how_to_authenticate(template, no_credentials):
    with pytest.raises(vertex_common.VertexAuthError) as err:
        vertex_pipelines.submit_pipeline(
            template_path=template, project=PROJECT, region=REGION, pipeline_root=ROOT,
            parameter_values={}, out=lambda _: None,
        )
    assert "gcloud auth application-default login" in str(err.value)
    assert "GOOGLE_APPLICATION_CREDENTIALS" in str(err.value)
    assert isinstance(err.value.__cause__, DefaultCredentialsError)


# ------------------------------------------------------------------------------------------ labels


def test_metric_values_become_label_values():
    labels = vertex_common.to_vertex_labels({"accuracy": 0.8734, "Macro F1": 0.5, "epochs": 3, "base": "Gemma-4/31B"})
    assert labels == {"accuracy": "0_8734", "macro_f1": "0_5", "epochs": "3", "base": "gemma-4_31b"}
    with pytest.raises(ValueError, match="both become"):
        vertex_common.to_vertex_labels({"a b": "1", "a_b": "2"})


@settings(max_examples=200)
@given(st.text(min_size=1, max_size=100).filter(lambda s: re.search(r"[A-Za-z0-9]", s)),
       st.one_of(st.text(max_size=100), st.floats(), st.integers(), st.booleans()))
def test_sanitised_labels_always_satisfy_vertex_rules(key, value):
    ((k, v),) = vertex_common.to_vertex_labels({key: value}).items()
    assert re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", k)
    assert re.fullmatch(r"[a-z0-9_-]{0,63}", v)


@given(st.text(min_size=1, max_size=300).filter(lambda s: re.search(r"[A-Za-z0-9]", s)))
def test_run_alias_satisfies_vertex_alias_rules(run_id):
    assert re.fullmatch(r"[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]", vertex_common.run_alias(run_id))


# ------------------------------------------------------------------------------------------ the fake


def test_submit_and_watch_through_the_sdk(template, fake, monkeypatch):
    from google.cloud.aiplatform.utils import gcs_utils

    # submit() first makes sure the pipeline-root bucket exists, through Cloud Storage and Resource
    # Manager, which this fake does not serve; stand that one helper down.
    checked = []
    monkeypatch.setattr(gcs_utils, "create_gcs_bucket_for_pipeline_artifacts_if_it_does_not_exist",
                        lambda **kw: checked.append(kw["output_artifacts_gcs_dir"]))
    lines = []
    fake.running_polls = 0  # a run done by the first poll: spares the SDK's 5 s sleep between polls
    result = vertex_pipelines.submit_pipeline(
        template_path=template, project=PROJECT, region=REGION, pipeline_root=ROOT,
        parameter_values={"n": 5}, service_account=SA, watch=True, out=lines.append, display_name="my run",
        labels={"team": "pets", "trigger": "manual"}, **cloud(fake),
    )
    assert checked == [ROOT]
    assert result["state"] == "PIPELINE_STATE_SUCCEEDED"
    assert result["link"] == (
        f"https://console.cloud.google.com/vertex-ai/locations/{REGION}/pipelines/runs/{result['job_id']}"
        f"?project={PROJECT}"
    )
    assert result["link"] in lines[0]
    sent = fake.pipeline_jobs[result["name"]]
    assert sent["serviceAccount"] == SA
    assert sent["runtimeConfig"]["gcsOutputDirectory"] == ROOT
    assert sent["runtimeConfig"]["parameterValues"] == {"n": 5}
    assert sent["displayName"] == "my run" and sent["labels"] == {"team": "pets", "trigger": "manual"}
    assert result["experiment"] is None  # none asked: no experiment context is read or made
    assert [c["schemaTitle"] for c in fake.contexts.values()] == ["system.PipelineRun"]


def test_schedule_lifecycle_through_the_sdk(template, fake):
    created = vertex_schedules.create_schedule(
        template_path=template, project=PROJECT, region=REGION, pipeline_root=ROOT, parameter_values={},
        cron="TZ=UTC 0 3 * * 1", display_name="weekly", service_account=SA, labels={"trigger": "schedule"},
        out=lambda _: None, **cloud(fake),
    )
    assert created["state"] == "ACTIVE" and created["cron"] == "TZ=UTC 0 3 * * 1"
    sent = fake.schedules[created["name"]]
    run = sent["createPipelineJobRequest"]["pipelineJob"]
    assert (sent["displayName"], run["serviceAccount"], run["labels"]) == ("weekly", SA, {"trigger": "schedule"})
    assert sent["maxConcurrentRunCount"] == "1"

    name = created["name"]
    assert re.fullmatch(rf"{SCHEDULES}/[0-9]+", name)
    path = f"/v1/{name}"
    common = dict(project=PROJECT, region=REGION, out=lambda _: None, **cloud(fake))

    def calls_of(action) -> tuple:
        """What one call returned, and the (HTTP method, path) pairs it sent, in order."""
        before = len(fake.calls)
        result = action()
        return result, fake.calls[before:]

    listed, sent = calls_of(lambda: vertex_schedules.list_schedules(**common))
    assert sent == [("GET", f"/v1/projects/{PROJECT}/locations/{REGION}/schedules")]
    assert listed == {"schedules": [{"name": name, "display_name": "weekly", "cron": "TZ=UTC 0 3 * * 1",
                                     "state": "ACTIVE"}]}

    schedule_id = name.rsplit("/", 1)[1]
    # Each action is fetched by its full name, then exactly its own REST method: pause is never a resume.
    result, sent = calls_of(lambda: vertex_schedules.change_schedule("pause", schedule_id, **common))
    assert sent == [("GET", path), ("POST", f"{path}:pause")]
    assert result == {"method": "PauseSchedule", "name": name, "done": True}
    assert fake.schedules[name]["state"] == "PAUSED"

    result, sent = calls_of(lambda: vertex_schedules.change_schedule("resume", name, **common))
    assert sent == [("GET", path), ("POST", f"{path}:resume")]
    assert result == {"method": "ResumeSchedule", "name": name, "done": True}
    assert fake.schedules[name]["state"] == "ACTIVE"

    result, sent = calls_of(lambda: vertex_schedules.change_schedule("delete", schedule_id, **common))
    assert sent == [("GET", path), ("DELETE", path)]
    assert result == {"method": "DeleteSchedule", "name": name, "done": True}
    assert fake.schedules == {}


def test_change_schedule_names_an_unknown_action(fake):
    lines = []
    # "Pause": actions are not case-folded into a real one; "stop" is no action at all.
    for action in ("stop", "Pause"):
        with pytest.raises(ValueError) as err:
            vertex_schedules.change_schedule(action, "42", project=PROJECT, region=REGION, dry_run=True, out=lines.append)
        assert str(err.value).splitlines()[1:] == [
            f"  - action={action!r}: must be one of pause, resume, delete; fix: pass pause, resume or delete"]
    # Refused before any request: nothing printed, and a real call never reaches the API.
    with pytest.raises(ValueError, match="action='stop'"):
        vertex_schedules.change_schedule("stop", "42", project=PROJECT, region=REGION, out=lines.append, **cloud(fake))
    assert lines == [] and fake.calls == []

