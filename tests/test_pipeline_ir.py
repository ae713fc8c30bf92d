"""The compiled pipeline (KFP IR) as Vertex receives it: retry policies and resources on every step, the source
fingerprint feeding prepare_data uncached, the GPU steps behind the training decision, the images in the
user's registry (pinned, never the placeholder), and the caching flags of submit and schedule."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pipeline  # noqa: E402
from components import images  # noqa: E402
from petqlora import __version__, params  # noqa: E402
from petqlora.problems import Problems  # noqa: E402

REGISTRY = "europe-west4-docker.pkg.dev/acme-ml/pets"
RUN_ID = "{{$.pipeline_job_name}}"  # what dsl.PIPELINE_JOB_NAME_PLACEHOLDER compiles to
BACKEND = json.dumps({"kind": "cloud_run", "image": "us-central1-docker.pkg.dev/p/r/trainer:0.1.0",
                      "service_account": "job@my-proj.iam.gserviceaccount.com", "bucket": "my-bucket",
                      "hf_token_secret": "hf-token"})
RUN = ["--project", "my-proj", "--region", "us-central1", "--pipeline-root", "gs://my-bucket/root",
       "--param", f"backend={BACKEND}"]


@pytest.fixture(scope="module")
def ir(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("ir") / "pipeline.yaml"
    assert pipeline.main(["compile", "--output", str(path), "--image-registry", REGISTRY]) == 0
    return yaml.safe_load(path.read_text())


def _tasks(ir: dict) -> dict:
    """Every step of every DAG (root, conditions, the trials loop), by task name; the groups left out."""
    dags = [ir["root"]["dag"], *(c["dag"] for c in ir["components"].values() if "dag" in c)]
    return {name: task for dag in dags for name, task in dag["tasks"].items()
            if not task["componentRef"]["name"].startswith(("comp-condition", "comp-for-loop"))}


def _executor(ir: dict, task: dict) -> dict:
    label = ir["components"][task["componentRef"]["name"]]["executorLabel"]
    return ir["deploymentSpec"]["executors"][label]["container"]


def test_every_step_has_its_retry_policy(ir):
    tasks = _tasks(ir)
    for step, s in pipeline.STEP_SETTINGS.items():
        policy = tasks[step.replace("_", "-")]["retryPolicy"]
        assert policy == {"maxRetryCount": s.retries, "backoffDuration": s.backoff, "backoffFactor": 2.0,
                          "backoffMaxDuration": "3600s"}, step
    for name, task in tasks.items():
        assert task.get("retryPolicy", {}).get("maxRetryCount", 0) >= 1, f"{name} has no retry policy"
    # bounded GPU cost: a failed execution has had Cloud Run's own task retries; one more pipeline attempt
    assert tasks["train-adapter"]["retryPolicy"]["maxRetryCount"] == 1


def test_every_step_has_cpu_and_memory_as_request_and_limit(ir):
    tasks = _tasks(ir)
    for name, task in tasks.items():
        resources = _executor(ir, task).get("resources", {})
        assert {"resourceCpuLimit", "resourceCpuRequest", "resourceMemoryLimit", "resourceMemoryRequest"} <= set(
            resources), f"{name}: {resources}"
    for step, s in pipeline.STEP_SETTINGS.items():
        resources = _executor(ir, tasks[step.replace("_", "-")])["resources"]
        assert (resources["resourceCpuLimit"], resources["resourceCpuRequest"]) == (s.cpu, s.cpu), step
        assert (resources["resourceMemoryLimit"], resources["resourceMemoryRequest"]) == (s.memory, s.memory), step
    # the launchers are small machines: the GPU work runs in the Cloud Run job
    assert _executor(ir, tasks["train-adapter"])["resources"]["cpuLimit"] <= 2


def test_the_fingerprint_feeds_prepare_data_and_is_never_cached(ir):
    root = ir["root"]["dag"]["tasks"]
    fed = root["prepare-data"]["inputs"]["parameters"]["source_fingerprint"]["taskOutputParameter"]
    assert fed == {"producerTask": "fingerprint-source", "outputParameterKey": "Output"}
    assert root["fingerprint-source"]["inputs"]["parameters"]["source"] == {"componentInputParameter": "source"}
    assert not root["fingerprint-source"].get("cachingOptions", {}).get("enableCache", False)
    assert root["prepare-data"]["cachingOptions"]["enableCache"] is True  # cached, keyed by the fingerprint
    assert root["validate-token-boundaries"]["cachingOptions"]["enableCache"] is True


def test_steps_that_must_run_every_time_take_the_run_id(ir):
    """The SDK's enable_caching=True (--enable-caching) turns the cache on for every task; a per-run input
    keeps these from ever matching an earlier run's cache entry."""
    for name in ("fingerprint-source", "decide-training", "train-adapter", "score-trial", "evaluate", "register-model"):
        task = _tasks(ir)[name]
        assert task["inputs"]["parameters"]["run_id"] == {"runtimeValue": {"constant": RUN_ID}}, name
        assert not task.get("cachingOptions", {}).get("enableCache", False), name


def test_the_decision_sees_every_training_value_train_adapter_gets(ir):
    """The skip decision fingerprints the configs train_adapter trains with: plan_trials makes each trial's
    from the run's values and the trials, the same inputs decide_training gets; train_adapter takes the
    tunable ones from its trial (the loop item), the others from the run."""
    from petqlora.trials.plan import TUNABLE

    tasks = _tasks(ir)
    train = tasks["train-adapter"]["inputs"]["parameters"]
    plan = tasks["plan-trials"]["inputs"]["parameters"]
    decide = tasks["decide-training"]["inputs"]["parameters"]
    for name in set(plan) - {"sample"}:
        assert decide[name] == plan[name] == {"componentInputParameter": name}, name
    item = "pipelinechannel--plan-trials-Output-loop-item"
    for name in set(train) - {"backend", "run_id", "project", "region"}:
        if name in TUNABLE or name == "trial":
            field = "index" if name == "trial" else name
            assert train[name] == {"componentInputParameter": item,
                                   "parameterExpressionSelector": f'parseJson(string_value)["{field}"]'}, name
        else:
            assert name in plan and train[name]["componentInputParameter"] == f"pipelinechannel--{name}", name
    assert decide["force_training"] == {"componentInputParameter": "force_training"}


def test_the_trials_fan_out_in_a_parallel_for_and_are_collected(ir):
    """One branch per plan_trials item, at most pipeline.TRIAL_PARALLELISM at once; select_trial takes every
    branch's figures and adapter; evaluate and register_model take the winner's."""
    gpu = ir["components"]["comp-condition-1"]["dag"]["tasks"]
    loop = gpu["for-loop-2"]
    assert loop["parameterIterator"]["items"] == {"inputParameter": "pipelinechannel--plan-trials-Output"}
    assert loop["iteratorPolicy"] == {"parallelismLimit": pipeline.TRIAL_PARALLELISM}
    assert loop["taskInfo"]["name"] == "trials"
    outputs = ir["components"]["comp-for-loop-2"]["outputDefinitions"]
    assert outputs["parameters"]["pipelinechannel--score-trial-Output"]["parameterType"] == "LIST"
    assert outputs["artifacts"]["pipelinechannel--train-adapter-adapter"]["isArtifactList"] is True
    select = gpu["select-trial"]["inputs"]
    assert select["parameters"]["results"]["taskOutputParameter"]["producerTask"] == "for-loop-2"
    assert select["artifacts"]["adapters"]["taskOutputArtifact"]["producerTask"] == "for-loop-2"
    assert gpu["evaluate"]["inputs"]["artifacts"]["adapter"]["taskOutputArtifact"] == {
        "producerTask": "select-trial", "outputArtifactKey": "adapter"}
    assert gpu["evaluate"]["inputs"]["parameters"]["image_token_budget"]["taskOutputParameter"] == {
        "producerTask": "select-trial", "outputParameterKey": "image_token_budget"}
    register = ir["components"]["comp-condition-3"]["dag"]["tasks"]["register-model"]["inputs"]["artifacts"]
    assert register["adapter"]["componentInputArtifact"] == "pipelinechannel--select-trial-adapter"
    assert register["token_report"]["componentInputArtifact"] == "pipelinechannel--select-trial-winner_token_report"


def test_the_trial_parallelism_is_a_compile_option(tmp_path):
    path = tmp_path / "p.yaml"
    assert pipeline.main(["compile", "--output", str(path), "--trial-parallelism", "5"]) == 0
    loop = yaml.safe_load(path.read_text())["components"]["comp-condition-1"]["dag"]["tasks"]["for-loop-2"]
    assert loop["iteratorPolicy"] == {"parallelismLimit": 5}
    assert pipeline.main(["compile", "--output", str(path), "--trial-parallelism", "-1"]) == 2
    assert pipeline.pet_breeds_pipeline.pipeline_spec.components["comp-condition-1"].dag.tasks[
        "for-loop-2"].iterator_policy.parallelism_limit == pipeline.TRIAL_PARALLELISM  # a copy was changed


def test_images_are_the_user_s_pinned_by_the_package_version(ir):
    found = {name: e["container"]["image"] for name, e in ir["deploymentSpec"]["executors"].items()}
    assert found and all(image == f"{REGISTRY}/pipeline:{__version__}" for image in found.values()), found
    assert images.PLACEHOLDER_REGISTRY not in json.dumps(ir)
    p = Problems("images")
    images.image_problems(ir, p)
    assert not p


def test_the_registry_comes_from_the_flag_else_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(images.REGISTRY_ENV, "us-docker.pkg.dev/from-env/repo")
    for extra, expected in (([], "us-docker.pkg.dev/from-env/repo"), (["--image-registry", REGISTRY], REGISTRY)):
        path = tmp_path / "p.yaml"
        assert pipeline.main(["compile", "--output", str(path), *extra]) == 0
        spec = yaml.safe_load(path.read_text())
        assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {
            f"{expected}/pipeline:{__version__}"}
    monkeypatch.delenv(images.REGISTRY_ENV)
    assert pipeline.main(["compile", "--output", str(path)]) == 0  # allowed, with a note: it cannot run on Vertex
    p = Problems("images")
    images.image_problems(yaml.safe_load(path.read_text()), p)
    assert "--image-registry" in p.message() and images.PLACEHOLDER_REGISTRY in p.message()


@pytest.mark.parametrize("registry, rule", [
    ("https://europe-docker.pkg.dev/p/r", "without a scheme"),
    ("europe-docker.pkg.dev/p/r:1.0", "without a scheme or a tag"),
    (images.PLACEHOLDER_REGISTRY, "placeholder registry of the source"),
    ("", "is not given"),
])
def test_bad_registries_are_refused_naming_the_flag(registry, rule):
    with pytest.raises(ValueError) as info:
        images.set_registry({"deploymentSpec": {"executors": {}}}, registry)
    assert "--image-registry" in str(info.value) and rule in str(info.value)


def test_an_image_that_is_not_ours_is_not_silently_rewritten():
    ir = {"deploymentSpec": {"executors": {"exec-x": {"container": {"image": "python:3.11"}}}}}
    with pytest.raises(ValueError, match="exec-x: image 'python:3.11' is not under"):
        images.set_registry(ir, REGISTRY)


# ---- submit and schedule


def _dry_run(capsys, command: str, *flags: str, run: list[str] = RUN) -> dict:
    args = [command, *run, "--dry-run", "--image-registry", REGISTRY, *flags]
    if command == "schedule":
        args += ["--cron", "TZ=UTC 0 3 * * 1"]
    assert pipeline.main(args) == 0
    request = json.loads(capsys.readouterr().out)
    if command == "schedule":
        request = request["schedule"]["create_pipeline_job_request"]
    job = request["pipeline_job"]
    return job


def _cache_settings(job: dict) -> dict:
    tasks = _tasks(job["pipeline_spec"]).items()
    return {name: task.get("cachingOptions", {}).get("enableCache", False) for name, task in tasks}


@pytest.mark.parametrize("command", ["submit", "schedule"])
def test_caching_flags_reach_the_request(capsys, command):
    compiled = _cache_settings(_dry_run(capsys, command))
    assert compiled["prepare-data"] is True and compiled["fingerprint-source"] is False  # the per-task settings
    assert set(_cache_settings(_dry_run(capsys, command, "--no-cache")).values()) == {False}
    assert set(_cache_settings(_dry_run(capsys, command, "--enable-caching")).values()) == {True}


def test_the_request_names_the_user_s_images(capsys):
    without_backend = RUN[:RUN.index("--param")]  # this run's backend names no image
    job = _dry_run(capsys, "submit", "--param", 'backend={"kind": "cloud_run", "service_account": '
                   '"job@my-proj.iam.gserviceaccount.com", "bucket": "my-bucket", "hf_token_secret": "hf-token"}',
                   run=without_backend)
    executors = job["pipeline_spec"]["deploymentSpec"]["executors"].values()
    assert {e["container"]["image"] for e in executors} == {f"{REGISTRY}/pipeline:{__version__}"}
    values = job["runtime_config"]["parameter_values"]
    # where the run names none: the Cloud Run job's image, and the serving container's (the trainer image
    # runs python -m petqlora.serve), from the same registry
    assert values["backend"]["image"] == f"{REGISTRY}/trainer:{__version__}"
    assert values["serving_image"] == f"{REGISTRY}/trainer:{__version__}"


def test_a_given_template_gets_the_images_in_a_copy(tmp_path, capsys):
    template = tmp_path / "placeholder.yaml"
    assert pipeline.main(["compile", "--output", str(template)]) == 0
    capsys.readouterr()
    before = template.read_text()
    job = _dry_run(capsys, "submit", "--template", str(template))
    assert images.PLACEHOLDER_REGISTRY not in json.dumps(job["pipeline_spec"]["deploymentSpec"])
    assert template.read_text() == before
    with pytest.raises(ValueError, match="remote template"):
        pipeline._template("gs://b/pipeline.yaml", REGISTRY)


def test_a_real_submit_refuses_the_placeholder_registry(tmp_path):
    """Without --dry-run and without a registry: refused before any request, naming the flag (no credentials
    needed to be told)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"), "HOME": str(tmp_path),
           "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"), "NO_GCE_CHECK": "True"}
    result = subprocess.run([sys.executable, "pipeline.py", "submit", *RUN, "--param",
                             "serving_image=us-docker.pkg.dev/p/r/serve:1.0.0"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--image-registry=None: is not given, so the images name the placeholder" in result.stderr
    assert images.REGISTRY_ENV in result.stderr
    assert "Traceback" not in result.stderr and "credentials" not in result.stderr.lower()


# ---- the serving image


def test_the_serving_image_is_pinned_or_empty():
    assert params.DEFAULTS.serving_image == ""  # no moving default: required when registering to Vertex
    assert params.parse({"serving_image": "us-docker.pkg.dev/p/r/serve:1.2.0"}).serving_image.endswith(":1.2.0")
    assert params.parse({"serving_image": "us-docker.pkg.dev/p/r/serve@sha256:" + "0" * 64})
    for image, rule in (("us-docker.pkg.dev/p/r/serve:latest", "uses :latest"),
                        ("us-docker.pkg.dev/p/r/serve", "has no tag")):
        with pytest.raises(ValueError, match=rule):
            params.parse({"serving_image": image})
    p = Problems("run")
    params.check_vertex_registration(params.parse({"registry": "/tmp/registry.sqlite"}), p)
    assert not p  # the local registry does not need one
