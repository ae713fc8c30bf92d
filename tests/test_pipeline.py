"""The pipeline's wiring and its cloud commands, without running any step."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pipeline  # noqa: E402

# A complete Cloud Run backend: a run, a dry run too, is checked as a whole before anything is sent.
BACKEND = ('backend={"kind": "cloud_run", "image": "us-central1-docker.pkg.dev/my-proj/petqlora/trainer:0.1.0", '
           '"service_account": "petqlora-job@my-proj.iam.gserviceaccount.com", "bucket": "my-bucket"}')
# and the serving image a version registered to Vertex needs
RUN = ("--param", BACKEND, "--param", "serving_image=us-central1-docker.pkg.dev/my-proj/petqlora/serve:0.1.0")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "pipeline.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("yaml") / "pipeline.yaml"
    assert pipeline.main(["compile", "--output", str(path)]) == 0
    return yaml.safe_load(path.read_text())


def test_steps_in_order_with_training_and_registration_under_conditions(compiled):
    tasks = compiled["root"]["dag"]["tasks"]
    assert {"fingerprint-source", "prepare-data", "validate-token-boundaries", "plan-trials", "decide-training",
            "condition-1"} <= set(tasks)
    deps = {name: set(t.get("dependentTasks", [])) for name, t in tasks.items()}
    assert "fingerprint-source" in deps["prepare-data"]
    assert "prepare-data" in deps["validate-token-boundaries"]
    # the trials' other budgets are checked (plan_trials) after the run's own, before the decision
    assert {"validate-token-boundaries", "prepare-data"} <= deps["plan-trials"]
    assert {"plan-trials", "prepare-data"} <= deps["decide-training"]
    # the GPU steps run under a condition on the decision, after validation: never on unvalidated data
    assert {"decide-training", "validate-token-boundaries", "plan-trials", "prepare-data"} <= deps["condition-1"]
    condition = tasks["condition-1"]["triggerPolicy"]["condition"]
    assert "decide-training-Output" in condition and "'train'" in condition
    gpu = compiled["components"]["comp-condition-1"]["dag"]["tasks"]
    assert set(gpu) == {"for-loop-2", "select-trial", "evaluate", "condition-3"}
    # each trial trains and is scored in its own branch; the winner alone goes on to the test split
    assert set(compiled["components"]["comp-for-loop-2"]["dag"]["tasks"]) == {"train-adapter", "score-trial"}
    assert "for-loop-2" in gpu["select-trial"]["dependentTasks"]
    assert "select-trial" in gpu["evaluate"]["dependentTasks"]
    condition = gpu["condition-3"]["triggerPolicy"]["condition"]
    assert "evaluate-Output" in condition and "'register'" in condition
    registered = compiled["components"]["comp-condition-3"]["dag"]["tasks"]
    assert set(registered) == {"register-model", "check-serving", "condition-4"}
    # serving parity is checked on the version registration created
    assert "register-model" in registered["check-serving"]["dependentTasks"]
    assert set(compiled["components"]["comp-condition-4"]["dag"]["tasks"]) == {"deploy-model"}  # Vertex only


def test_side_effecting_steps_are_not_cached(compiled):
    tasks = compiled["root"]["dag"]["tasks"]
    gpu = compiled["components"]["comp-condition-1"]["dag"]["tasks"]
    trial = compiled["components"]["comp-for-loop-2"]["dag"]["tasks"]
    inner = compiled["components"]["comp-condition-3"]["dag"]["tasks"]
    for task in (tasks["fingerprint-source"], tasks["decide-training"], trial["train-adapter"], trial["score-trial"],
                 gpu["evaluate"], inner["register-model"]):
        assert not task.get("cachingOptions", {}).get("enableCache", False)
    assert tasks["prepare-data"]["cachingOptions"].get("enableCache") is True


def test_parameters_are_checked_first(compiled):
    """check_parameters runs first, uncached, and every other step waits for it: bad values cost seconds."""
    tasks = compiled["root"]["dag"]["tasks"]
    assert not tasks["check-parameters"].get("dependentTasks")
    assert not tasks["check-parameters"].get("cachingOptions", {}).get("enableCache", False)
    assert "check-parameters" in tasks["prepare-data"]["dependentTasks"]
    deps = {name: set(t.get("dependentTasks", [])) for name, t in tasks.items()}

    def upstream(name: str) -> set:
        return set().union(*({d} | upstream(d) for d in deps[name])) if deps[name] else set()

    assert all("check-parameters" in upstream(name) for name in tasks if name != "check-parameters")
    inputs = compiled["components"]["comp-check-parameters"]["inputDefinitions"]["parameters"]
    assert set(inputs) == set(compiled["root"]["inputDefinitions"]["parameters"])  # every parameter


def test_typed_artifacts_between_steps(compiled):
    outputs = {name: comp.get("outputDefinitions", {}).get("artifacts", {})
               for name, comp in compiled["components"].items()}
    types = {name: {k: v["artifactType"]["schemaTitle"] for k, v in arts.items()} for name, arts in outputs.items()}
    assert types["comp-prepare-data"]["dataset"] == "system.Dataset"
    assert types["comp-train-adapter"]["adapter"] == "system.Model"
    assert types["comp-evaluate"]["metrics"] == "system.Metrics"
    assert types["comp-evaluate"]["confusion_matrix"] == "system.ClassificationMetrics"
    assert types["comp-evaluate"]["report"] == "system.HTML"
    assert types["comp-evaluate"]["summary"] == "system.Markdown"


def test_cloud_defaults_are_the_real_recipe(compiled):
    params = compiled["root"]["inputDefinitions"]["parameters"]
    defaults = {k: v.get("defaultValue") for k, v in params.items()}
    assert defaults["base_model"] == "google/gemma-4-31b-it"
    assert defaults["gemma3_baseline"] == "google/gemma-3-27b-it"
    assert (defaults["lora_r"], defaults["lora_alpha"], defaults["image_token_budget"]) == (64, 64, 280)
    assert defaults["backend"]["kind"] == "cloud_run"


def test_pipeline_import_reads_no_environment():
    """The environment is read only inside functions (the CLI's commands), never while a module is imported."""
    import ast

    for path in [ROOT / "pipeline.py", *(ROOT / "components").glob("*.py")]:
        tree = ast.parse(path.read_text())
        in_functions = {id(node) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                        for node in ast.walk(f)}
        at_import = [node.lineno for node in ast.walk(tree) if id(node) not in in_functions
                     and ((isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"))
                          or (isinstance(node, ast.Name) and node.id in ("environ", "getenv")))]
        assert not at_import, f"{path.name} reads the environment at import (lines {at_import})"


def test_submit_dry_run_prints_the_real_request():
    result = _cli("submit", "--project", "my-proj", "--region", "us-central1", "--pipeline-root", "gs://my-bucket/root",
                  "--service-account", "pipeline@my-proj.iam.gserviceaccount.com", "--param", "epochs=2",
                  *RUN, "--dry-run")
    assert result.returncode == 0, result.stderr
    request = json.loads(result.stdout)
    assert request["method"] == "CreatePipelineJob"
    assert request["parent"] == "projects/my-proj/locations/us-central1"
    job = request["pipeline_job"]
    assert job["service_account"] == "pipeline@my-proj.iam.gserviceaccount.com"
    assert job["runtime_config"]["gcs_output_directory"] == "gs://my-bucket/root"
    assert job["runtime_config"]["parameter_values"]["epochs"] == 2
    assert "train-adapter" in json.dumps(job["pipeline_spec"])


def test_schedule_dry_run_prints_the_real_request():
    result = _cli("schedule", "--project", "my-proj", "--region", "us-central1", "--pipeline-root", "gs://my-bucket/root",
                  "--cron", "TZ=Europe/Paris 0 3 * * 1", *RUN, "--dry-run")
    assert result.returncode == 0, result.stderr
    request = json.loads(result.stdout)
    assert request["method"] == "CreateSchedule"
    assert request["schedule"]["cron"] == "TZ=Europe/Paris 0 3 * * 1"


SCHEDULE = "projects/my-proj/locations/us-central1/schedules/123"


ALT = {"$alt": "json;enum-encoding=int"}  # what the aiplatform REST transports add to every call
GET = {"method": "GetSchedule", "http": f"GET /v1/{SCHEDULE}", "query": ALT}  # the SDK gets it before acting


@pytest.mark.parametrize("flags, expected", [
    (["--pause", SCHEDULE], [GET, {"method": "PauseSchedule", "http": f"POST /v1/{SCHEDULE}:pause", "query": ALT,
                                   "body": {}}]),
    (["--resume", "123"], [GET, {"method": "ResumeSchedule", "http": f"POST /v1/{SCHEDULE}:resume", "query": ALT,
                                 "body": {}}]),  # a bare ID gets the full name
    (["--delete", SCHEDULE], [GET, {"method": "DeleteSchedule", "http": f"DELETE /v1/{SCHEDULE}", "query": ALT}]),
    (["--list"], [{"method": "ListSchedules", "http": "GET /v1/projects/my-proj/locations/us-central1/schedules",
                   "query": ALT}]),
], ids=["pause", "resume", "delete", "list"])
def test_schedule_management_dry_runs(flags, expected, capsys):
    # In process (the CLI's main, as `python pipeline.py` calls it): a subprocess per flag costs ~8 s of import.
    assert pipeline.main(["schedule", "--project", "my-proj", "--region", "us-central1", *flags, "--dry-run"]) == 0
    # stdout is exactly the REST calls for exactly this flag (no compile, no other output).
    assert json.loads(capsys.readouterr().out) == {"requests": expected}


def test_bad_cron_is_refused_clearly():
    result = _cli("schedule", "--project", "my-proj", "--region", "us-central1", "--pipeline-root", "gs://my-bucket/r",
                  "--cron", "every monday", *RUN, "--dry-run")
    assert result.returncode != 0
    assert "cron" in result.stderr.lower()


def test_unknown_pipeline_parameter_in_local_config_is_refused_before_anything_runs(tmp_path):
    from petqlora.local_run import run_local_pipeline

    config = tmp_path / "local.yaml"
    config.write_text("dataset: {path: %s}\nparameters: {lora_rank: 8, lora_r: 0}\n" % tmp_path)
    with pytest.raises(ValueError) as info:
        run_local_pipeline(pipeline.pet_breeds_pipeline, tmp_path / "out", config)
    assert "lora_rank=8: is not a known field" in str(info.value) and "lora_r=0: must be >= 1" in str(info.value)
    assert not (tmp_path / "out" / "pipeline_root").exists()


def test_submit_dry_run_refuses_bad_parameter_values_together():
    result = _cli("submit", "--project", "my-proj", "--region", "us-central1", "--pipeline-root", "gs://my-bucket/r",
                  "--param", "learning_rate=abc", "--param", "lora_r=64.5", "--param", "image_token_budget=123",
                  "--dry-run")
    assert result.returncode == 2, result.stdout
    for expected in ("learning_rate='abc': must be a number", "lora_r='64.5': must be an integer",
                     "image_token_budget=123: must be one of"):
        assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------ what a Vertex user sees

# A run's arguments that every check accepts (a complete Cloud Run backend).
RUN_ARGS = ["--project", "my-proj", "--region", "us-central1", "--pipeline-root", "gs://my-bucket/root", "--param",
            'backend={"kind": "cloud_run", "image": "us-central1-docker.pkg.dev/my-proj/petqlora/trainer:0.1.0", '
            '"service_account": "petqlora-job@my-proj.iam.gserviceaccount.com", "bucket": "my-bucket"}',
            "--param", "serving_image=us-central1-docker.pkg.dev/my-proj/petqlora/trainer:0.1.0"]


@pytest.fixture(scope="module")
def template(compiled, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("template") / "pipeline.yaml"
    path.write_text(yaml.safe_dump(compiled))
    return str(path)


def test_every_option_of_every_command_says_what_it_does():
    import argparse

    parser = pipeline._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [f"{name} {'/'.join(action.option_strings) or action.dest}"
               for name, command in [("", parser), *commands.items()] for action in command._actions
               if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
               and not (action.help or "").strip()]
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))._choices_actions
    missing += [choice.dest for choice in subcommands if not (choice.help or "").strip()]
    assert missing == []


def test_a_run_joins_its_experiment_through_a_step_that_runs_only_when_one_is_named(compiled):
    params = compiled["root"]["inputDefinitions"]["parameters"]
    assert params["experiment"]["defaultValue"] == ""
    (condition,) = [name for name, comp in compiled["components"].items()
                    if "add-to-experiment" in comp.get("dag", {}).get("tasks", {})]
    task = compiled["root"]["dag"]["tasks"][condition.removeprefix("comp-")]
    assert task["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--experiment'] != ''"
    step = compiled["components"][condition]["dag"]["tasks"]["add-to-experiment"]
    assert not step.get("cachingOptions", {}).get("enableCache", False)  # each run adds itself
    job = step["inputs"]["parameters"]["pipeline_job"]["runtimeValue"]["constant"]
    assert job == "{{$.pipeline_job_resource_name}}"
    # what the experiment shows: the parameters, and evaluate's metrics of all three models
    assert compiled["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]["metrics"]["artifactType"][
        "schemaTitle"] == "system.Metrics"
    assert compiled["components"]["comp-register-model"]["outputDefinitions"]["artifacts"]["registered"][
        "artifactType"]["schemaTitle"] == "google.VertexModel"


def test_submit_dry_run_shows_experiment_display_name_and_labels(template, capsys):
    assert pipeline.main(["submit", *RUN_ARGS, "--template", template, "--experiment", "pets-weekly",
                          "--display-name", "pets by hand", "--label", "team=pets", "--label", "trigger=manual",
                          "--dry-run"]) == 0
    request = json.loads(capsys.readouterr().out)
    job = request["pipeline_job"]
    assert (job["display_name"], job["labels"]) == ("pets by hand", {"team": "pets", "trigger": "manual"})
    assert request["experiment"]["name"] == "pets-weekly"
    assert [r["method"] for r in request["experiment"]["after_create"]] == ["GetPipelineJob", "AddContextChildren"]


def test_schedule_dry_run_passes_the_experiment_to_every_run(template, capsys):
    assert pipeline.main(["schedule", *RUN_ARGS, "--template", template, "--cron", "0 3 * * 1", "--experiment",
                          "pets-weekly", "--display-name", "pets weekly", "--label", "trigger=schedule",
                          "--dry-run"]) == 0
    schedule = json.loads(capsys.readouterr().out)["schedule"]
    job = schedule["create_pipeline_job_request"]["pipeline_job"]
    assert schedule["display_name"] == "pets weekly" and job["labels"] == {"trigger": "schedule"}
    assert job["runtime_config"]["parameter_values"]["experiment"] == "pets-weekly"


def test_register_dry_run_shows_the_evaluation_it_would_import(tmp_path, capsys):
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(json.dumps({
        "models": {"finetuned": {"accuracy": 0.5, "macro_f1": 0.5, "n_eval": 2, "top3_accuracy": None}},
        "classes": ["beagle", "pug"], "confusion_matrix": [[1, 0], [1, 0]], "reason": "registered: by hand"}))
    assert pipeline.main(["register", "--project", "my-proj", "--region", "us-central1", "--artifact-uri",
                          "gs://my-bucket/run/adapter", "--run-id", "by-hand-1", "--serving-image",
                          "us-central1-docker.pkg.dev/my-proj/petqlora/trainer:0.1.0", "--evaluation",
                          str(evaluation), "--dry-run"]) == 0
    request = json.loads(capsys.readouterr().out)
    assert request["model"]["container_spec"]["command"] == ["python", "-m", "petqlora.serve"]
    imported = request["evaluation_import"]["model_evaluation"]
    assert imported["metrics"]["confusionMatrix"]["rows"] == [[1.0, 0.0], [1.0, 0.0]]


@pytest.mark.parametrize("content, expected", [
    (None, "cannot be read (No such file or directory)"),
    ("{bad", "is not JSON (Expecting property name"),
], ids=["missing", "malformed"])
def test_register_names_an_evaluation_file_it_cannot_read(tmp_path, capsys, content, expected):
    evaluation = tmp_path / "evaluation.json"
    if content is not None:
        evaluation.write_text(content)
    assert pipeline.main(["register", "--project", "my-proj", "--region", "us-central1", "--artifact-uri",
                          "gs://my-bucket/run/adapter", "--run-id", "by-hand-1", "--serving-image",
                          "us-central1-docker.pkg.dev/my-proj/petqlora/trainer:0.1.0", "--evaluation",
                          str(evaluation), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --evaluation {evaluation}: {expected}") and "fix: pass the evaluate step" in err, err


@pytest.mark.parametrize("args, message", [
    (["lineage", "petqlora-gemma4-pets@1", "--dry-run"], "error: --dry-run needs --vertex"),
    (["submit", *RUN_ARGS, "--label", "Team=Pets", "--experiment", "Pets Weekly", "--dry-run"],
     "labels key='Team': label keys must be"),
], ids=["lineage-dry-run-without-vertex", "label-and-experiment-rules"])
def test_refusals_end_in_one_clear_message(args, message):
    result = _cli(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr, result.stderr
    if args[0] == "submit":  # both rules broken, both said at once
        assert "experiment='Pets Weekly': must be 1-128 lowercase letters" in result.stderr
