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
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import DefaultCredentialsError
from hypothesis import given, settings
from hypothesis import strategies as st
from kfp import compiler, dsl

from petqlora.cloud import vertex_common, vertex_models, vertex_pipelines, vertex_schedules

from fakes.vertex_api import FakeVertexAPI

PROJECT, REGION, ROOT = "my-proj", "us-central1", "gs://my-bucket/pipeline-root"
SA = "trainer@my-proj.iam.gserviceaccount.com"
NETWORK = "projects/123456/global/networks/vpc"


@dsl.component(base_image="python:3.11-slim")
def _echo(n: int, s: str) -> str:
    return f"{s}{n}"


@dsl.pipeline(name="tiny-pipeline")
def _tiny_pipeline(n: int = 1, s: str = "x"):
    _echo(n=n, s=s)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ir") / "tiny.yaml"
    compiler.Compiler().compile(_tiny_pipeline, str(path))
    return str(path)


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """An environment where google.auth.default really finds nothing, without probing the network."""
    for var in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "CLOUD_ML_PROJECT_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no application_default_credentials.json
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # skip the metadata-server probe


@pytest.fixture
def fake():
    with FakeVertexAPI() as api:
        yield api


def _cloud(fake) -> dict:
    return {"credentials": AnonymousCredentials(), "api_endpoint": fake.endpoint}


# ------------------------------------------------------------------------------------------ dry runs


def test_dry_run_submit_prints_the_create_pipeline_job_request(template, no_credentials, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a dry run must not look for credentials")

    monkeypatch.setattr(google.auth, "default", refuse)
    lines = []
    request = vertex_pipelines.submit_pipeline(
        template_path=template, project=PROJECT, region=REGION, pipeline_root=ROOT,
        parameter_values={"n": 3, "s": "y"}, service_account=SA, network=NETWORK,
        labels={"team": "pets"}, dry_run=True, out=lines.append,
    )
    assert json.loads(lines[0]) == request
    assert request["method"] == "CreatePipelineJob"
    assert request["parent"] == f"projects/{PROJECT}/locations/{REGION}"
    assert request["pipeline_job_id"].startswith("tiny-pipeline-")
    job = request["pipeline_job"]
    assert job["pipeline_spec"]["pipelineInfo"]["name"] == "tiny-pipeline"
    assert job["runtime_config"]["gcs_output_directory"] == ROOT
    assert job["runtime_config"]["parameter_values"] == {"n": 3, "s": "y"}
    assert job["service_account"] == SA and job["network"] == NETWORK
    assert job["labels"] == {"team": "pets"} and job["display_name"] == "tiny-pipeline"


def test_dry_run_schedule_prints_the_create_schedule_request(template, no_credentials):
    lines = []
    request = vertex_schedules.create_schedule(
        template_path=template, project=PROJECT, region=REGION, pipeline_root=ROOT,
        parameter_values={"n": 2}, cron="TZ=Europe/Paris 0 3 * * 1", display_name="weekly",
        max_run_count=10, service_account=SA, dry_run=True, out=lines.append,
    )
    assert json.loads(lines[0]) == request
    assert request["method"] == "CreateSchedule"
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


SCHEDULES = f"projects/{PROJECT}/locations/{REGION}/schedules"


@pytest.mark.parametrize(
    "action, name, expected",
    [
        # A bare ID is expanded to the full resource name; a full name is passed through unchanged.
        ("pause", "42", {"method": "PauseSchedule", "name": f"{SCHEDULES}/42"}),
        ("resume", "42", {"method": "ResumeSchedule", "name": f"{SCHEDULES}/42"}),
        ("delete", f"{SCHEDULES}/42", {"method": "DeleteSchedule", "name": f"{SCHEDULES}/42"}),
        ("resume", "projects/other/locations/europe-west4/schedules/7",
         {"method": "ResumeSchedule", "name": "projects/other/locations/europe-west4/schedules/7"}),
    ],
    ids=["pause-id", "resume-id", "delete-full-name", "resume-full-name"],
)
def test_dry_run_schedule_commands_name_the_request(action, name, expected, no_credentials):
    lines = []
    request = vertex_schedules.change_schedule(action, name, project=PROJECT, region=REGION, dry_run=True, out=lines.append)
    # Exactly this request, returned and printed (one JSON document), for exactly this action.
    assert request == expected
    assert [json.loads(line) for line in lines] == [expected]


def test_dry_run_list_schedules_names_the_request(no_credentials):
    lines = []
    request = vertex_schedules.list_schedules(project=PROJECT, region=REGION, dry_run=True, out=lines.append)
    expected = {"method": "ListSchedules", "parent": f"projects/{PROJECT}/locations/{REGION}"}
    assert request == expected
    assert [json.loads(line) for line in lines] == [expected]


def test_dry_run_register_prints_the_upload_request(no_credentials):
    request = vertex_models.register_vertex_model(
        project=PROJECT, region=REGION, display_name="petqlora-gemma4", artifact_uri="gs://b/adapter",
        serving_container_image_uri="us-docker.pkg.dev/p/r/serve:0.1.0", parent_model=None,
        version_aliases=["candidate"], labels={"accuracy": 0.8734}, run_id="tiny-pipeline-2026",
        dry_run=True, out=lambda _: None,
    )
    assert request["method"] == "UploadModel"
    model = request["model"]
    assert model["labels"] == {"accuracy": "0_8734", "run_id": "tiny-pipeline-2026"}
    assert model["version_aliases"] == ["candidate", "run-tiny-pipeline-2026", "default"]
    assert model["container_spec"]["image_uri"].endswith(":0.1.0")
    assert request["parent_model_lookup"]["filter"] == 'display_name="petqlora-gemma4"'


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


def _register(fake, run_id: str, **overrides) -> dict:
    args = dict(
        project=PROJECT, region=REGION, display_name="petqlora-gemma4", artifact_uri=f"gs://b/{run_id}/adapter",
        serving_container_image_uri="us-docker.pkg.dev/p/r/serve:0.1.0", parent_model=None,
        version_aliases=["candidate"], labels={"accuracy": 0.8734, "base": "gemma-4"}, run_id=run_id,
        out=lambda _: None, **_cloud(fake),
    )
    return vertex_models.register_vertex_model(**{**args, **overrides})


def test_register_creates_parent_then_adds_versions_and_is_idempotent(fake):
    from google.cloud.aiplatform import initializer

    config_before = initializer.global_config
    first = _register(fake, "run-1")
    assert first["version_id"] == "1" and not first["reused"]
    assert first["labels"] == {"accuracy": "0_8734", "base": "gemma-4", "run_id": "run-1"}
    assert set(first["aliases"]) == {"candidate", "run-run-1", "default"}

    second = _register(fake, "run-2")
    assert second["resource_name"] == first["resource_name"]  # same parent model
    assert second["version_id"] == "2"
    assert set(second["aliases"]) == {"candidate", "run-run-2", "default"}

    again = _register(fake, "run-2", artifact_uri="gs://b/elsewhere")
    assert again["reused"] and again["version_id"] == "2"
    assert fake.count("POST", "models:upload") == 2  # the retry did not upload

    model_id = first["resource_name"].rsplit("/", 1)[1]
    v1 = fake.models[model_id][1]
    assert v1["versionAliases"] == ["run-run-1"]  # "candidate" and "default" moved to version 2
    assert fake.models[model_id][2]["containerSpec"]["imageUri"].endswith(":0.1.0")
    assert initializer.global_config is config_before  # the SDK's global config is left as it was


def test_register_under_an_explicit_parent_and_without_default(fake):
    first = _register(fake, "run-1")
    other = _register(fake, "run-9", parent_model=first["resource_name"].rsplit("/", 1)[1],
                      display_name="renamed", version_aliases=[], make_default=False)
    assert other["resource_name"] == first["resource_name"] and other["version_id"] == "2"
    assert other["aliases"] == ["run-run-9"]
    assert "default" in fake.models[first["resource_name"].rsplit("/", 1)[1]][1]["versionAliases"]


def test_register_refuses_an_ambiguous_display_name(fake):
    _register(fake, "run-1")
    _register(fake, "run-2", parent_model=None, display_name="petqlora-gemma4-b")
    fake.models[max(fake.models)][1]["displayName"] = "petqlora-gemma4"  # two models, one name
    with pytest.raises(ValueError, match="parent_model"):
        _register(fake, "run-3")


def test_submit_and_watch_through_the_sdk(template, fake, monkeypatch):
    from google.cloud.aiplatform.utils import gcs_utils

    # submit() first makes sure the pipeline-root bucket exists, through Cloud Storage and Resource
    # Manager, which this fake does not serve; stand that one helper down.
    checked = []
    monkeypatch.setattr(gcs_utils, "create_gcs_bucket_for_pipeline_artifacts_if_it_does_not_exist",
                        lambda **kw: checked.append(kw["output_artifacts_gcs_dir"]))
    lines = []
    result = vertex_pipelines.submit_pipeline(
        template_path=template, project=PROJECT, region=REGION, pipeline_root=ROOT,
        parameter_values={"n": 5}, service_account=SA, watch=True, out=lines.append, **_cloud(fake),
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


def test_schedule_lifecycle_through_the_sdk(template, fake):
    created = vertex_schedules.create_schedule(
        template_path=template, project=PROJECT, region=REGION, pipeline_root=ROOT, parameter_values={},
        cron="TZ=UTC 0 3 * * 1", display_name="weekly", service_account=SA, out=lambda _: None, **_cloud(fake),
    )
    assert created["state"] == "ACTIVE" and created["cron"] == "TZ=UTC 0 3 * * 1"
    sent = fake.schedules[created["name"]]
    assert sent["createPipelineJobRequest"]["pipelineJob"]["serviceAccount"] == SA
    assert sent["maxConcurrentRunCount"] == "1"

    name = created["name"]
    assert re.fullmatch(rf"{SCHEDULES}/[0-9]+", name)
    path = f"/v1/{name}"
    common = dict(project=PROJECT, region=REGION, out=lambda _: None, **_cloud(fake))

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
        vertex_schedules.change_schedule("stop", "42", project=PROJECT, region=REGION, out=lines.append, **_cloud(fake))
    assert lines == [] and fake.calls == []
