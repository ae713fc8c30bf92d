"""Vertex AI Experiments: a submitted run joins its experiment through PipelineJob.submit(experiment=...), a
scheduled run through the pipeline's add_to_experiment step; both end with the run's pipeline-run context a
child of the experiment's context, which is how Vertex shows the run's parameters and metrics there. Dry
runs show the SDK's requests; the real ones go through the real SDK to the fake."""

import functools
import json

import pytest

from petqlora.cloud import vertex_experiments, vertex_pipelines, vertex_schedules

from vertex_support import (  # noqa: F401 (fixtures)
    ALT, LOCATION, PROJECT, REGION, ROOT, STORE, as_sent, cloud, compile_to, fake, no_credentials, sent,
    tiny_experiment_pipeline, tiny_pipeline,
)

EXPERIMENT = f"{STORE}/contexts/pets-weekly"
NOTE = "; a dry run makes no live lookup, so this request is not built"


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ir")
    return {"plain": compile_to(root / "tiny.yaml", tiny_pipeline),
            "experiment": compile_to(root / "tiny-experiment.yaml", tiny_experiment_pipeline)}


@pytest.fixture
def no_bucket_check(monkeypatch):
    """submit() first makes sure the pipeline-root bucket exists, through Cloud Storage and Resource Manager,
    which this fake does not serve: stand that one helper down."""
    from google.cloud.aiplatform.utils import gcs_utils

    monkeypatch.setattr(gcs_utils, "create_gcs_bucket_for_pipeline_artifacts_if_it_does_not_exist", lambda **kw: None)


def test_experiment_requests_are_the_sdks_around_create_pipeline_job():
    assert vertex_experiments.experiment_requests(project=PROJECT, region=REGION, experiment="pets-weekly",
                                                  pipeline_job="run-1") == {
        "name": "pets-weekly",
        "before_create": [
            {"method": "GetMetadataStore", "http": f"GET /v1/{STORE}", "query": ALT},
            {"method": "CreateMetadataStore", "http": f"POST /v1/{LOCATION}/metadataStores",
             "query": {"metadataStoreId": "default", **ALT}, "body": {},
             "only_if": "GetMetadataStore answers 404 (the project's first use of ML Metadata)"},
            {"method": "GetContext", "http": f"GET /v1/{EXPERIMENT}", "query": ALT},
            {"method": "CreateContext", "http": f"POST /v1/{STORE}/contexts", "query": {"contextId": "pets-weekly", **ALT},
             "body": {"displayName": "pets-weekly", "schemaTitle": "system.Experiment", "schemaVersion": "0.0.1",
                      "metadata": {"experiment_deleted": False}},
             "only_if": "GetContext answers 404 (a new experiment)"},
        ],
        "after_create": [
            {"method": "GetPipelineJob", "http": f"GET /v1/{LOCATION}/pipelineJobs/run-1", "query": ALT,
             "until": "job_detail.pipeline_run_context is set (the run has started)"},
            {"method": "AddContextChildren",
             "needs_lookup": "its child is the run's pipeline_run_context, which Vertex names once the run starts; "
                             f"its context is {EXPERIMENT}" + NOTE},
        ],
    }


def test_submit_dry_run_shows_the_experiment(templates, no_credentials):
    lines = []
    request = vertex_pipelines.submit_pipeline(
        template_path=templates["plain"], project=PROJECT, region=REGION, pipeline_root=ROOT, parameter_values={},
        experiment="pets-weekly", dry_run=True, out=lines.append)
    assert json.loads(lines[0]) == request
    assert request["experiment"] == vertex_experiments.experiment_requests(
        project=PROJECT, region=REGION, experiment="pets-weekly", pipeline_job=request["pipeline_job_id"])


def test_submit_into_an_experiment_through_the_sdk(templates, fake, no_bucket_check):
    lines = []
    result = vertex_pipelines.submit_pipeline(
        template_path=templates["plain"], project=PROJECT, region=REGION, pipeline_root=ROOT,
        parameter_values={"n": 3}, experiment="pets-weekly", out=lines.append, **cloud(fake))
    experiment = fake.contexts[EXPERIMENT]
    assert (experiment["schemaTitle"], experiment["displayName"]) == ("system.Experiment", "pets-weekly")
    run_context = fake.contexts[f"{STORE}/contexts/{result['job_id']}"]
    assert run_context["schemaTitle"] == "system.PipelineRun" and run_context["parentContexts"] == [EXPERIMENT]
    # the parameters Vertex shows in the experiment are the run's own
    assert fake.pipeline_jobs[result["name"]]["runtimeConfig"]["parameterValues"] == {"n": 3}
    assert result["experiment"] == "pets-weekly" and "experiments/pets-weekly" in lines[1]
    # every request the dry run built is what the SDK sent, in that order
    dry = vertex_pipelines.submit_pipeline(
        template_path=templates["plain"], project=PROJECT, region=REGION, pipeline_root=ROOT,
        parameter_values={"n": 3}, experiment="pets-weekly", dry_run=True, out=lambda _: None)["experiment"]
    built = [r for r in dry["before_create"] + dry["after_create"] if "http" in r]
    built[-1]["http"] = built[-1]["http"].replace(dry["after_create"][0]["http"].rsplit("/", 1)[1], result["job_id"])
    calls = iter(sent(fake))
    assert all(any(call == as_sent(r) for call in calls) for r in built)
    (added,) = [r for r in fake.requests if r["path"].endswith(":addContextChildren")]
    assert added["body"] == {"childContexts": [run_context["name"]]}


def test_submit_refuses_an_experiment_name_vertex_would_refuse(templates, fake):
    with pytest.raises(ValueError, match="experiment='Pets Weekly': must be 1-128 lowercase letters"):
        vertex_pipelines.submit_pipeline(
            template_path=templates["plain"], project=PROJECT, region=REGION, pipeline_root=ROOT,
            parameter_values={}, experiment="Pets Weekly", out=lambda _: None, **cloud(fake))
    assert fake.calls == []


def test_a_scheduled_run_carries_the_experiment_as_its_parameter(templates, fake, no_credentials):
    common = dict(project=PROJECT, region=REGION, pipeline_root=ROOT, cron="0 3 * * 1", display_name="weekly",
                  experiment="pets-weekly", out=lambda _: None)
    dry = vertex_schedules.create_schedule(template_path=templates["experiment"], parameter_values={"n": 2},
                                           dry_run=True, **common)
    job = dry["schedule"]["create_pipeline_job_request"]["pipeline_job"]
    assert job["runtime_config"]["parameter_values"] == {"n": 2, "experiment": "pets-weekly"}
    created = vertex_schedules.create_schedule(template_path=templates["experiment"], parameter_values={"n": 2},
                                               **common, **cloud(fake))
    run = fake.schedules[created["name"]]["createPipelineJobRequest"]["pipelineJob"]
    assert run["runtimeConfig"]["parameterValues"] == {"n": 2, "experiment": "pets-weekly"}
    # a pipeline without the parameter cannot honour it: refused, not dropped
    with pytest.raises(ValueError, match=r"\['experiment'\]: not parameters of the pipeline"):
        vertex_schedules.create_schedule(template_path=templates["plain"], parameter_values={}, dry_run=True,
                                         **common)


def _running_job(fake, job_id="sched-run-1") -> str:
    name = f"{LOCATION}/pipelineJobs/{job_id}"
    fake.pipeline_jobs[name] = {"name": name, "state": "PIPELINE_STATE_PENDING", "_polls": 0, "pipelineSpec": {}}
    return name


def test_the_step_adds_its_own_run_once(fake):
    job = _running_job(fake)
    args = dict(pipeline_job=job, experiment="pets-weekly", project=PROJECT, region=REGION, **cloud(fake))
    assert vertex_experiments.add_run_to_experiment(**args) == EXPERIMENT
    assert fake.contexts[f"{STORE}/contexts/sched-run-1"]["parentContexts"] == [EXPERIMENT]
    assert vertex_experiments.add_run_to_experiment(**args) == EXPERIMENT  # a retried step
    assert fake.count("POST", ":addContextChildren") == 1
    assert fake.count("POST", "/contexts") == 1  # the experiment was created once, then found


def test_the_step_refuses_a_run_context_outside_this_project(fake):
    job = _running_job(fake)
    fake.pipeline_jobs[job]["jobDetail"] = {"pipelineRunContext": {
        "name": "projects/other/locations/us-central1/metadataStores/default/contexts/x"}}
    with pytest.raises(RuntimeError, match="has no pipeline-run context in"):
        vertex_experiments.add_run_to_experiment(pipeline_job=job, experiment="pets-weekly", project=PROJECT,
                                                 region=REGION, **cloud(fake))
    assert fake.count("POST", ":addContextChildren") == 0


def test_add_to_experiment_component_calls_the_step(fake, monkeypatch):
    from components.add_to_experiment import add_to_experiment

    job = _running_job(fake)
    monkeypatch.setattr(vertex_experiments, "add_run_to_experiment",
                        functools.partial(vertex_experiments.add_run_to_experiment, **cloud(fake)))
    assert add_to_experiment.python_func(experiment="pets-weekly", project=PROJECT, region=REGION,
                                         pipeline_job=job) == EXPERIMENT
    with pytest.raises(ValueError, match="pipeline_job="):
        add_to_experiment.python_func(experiment="pets-weekly", project=PROJECT, region=REGION, pipeline_job="job")
