"""Fail before spend: the whole run checked before it starts (petqlora.run_checks.check_run), through each
caller -- run-local, compile, submit/schedule --dry-run, the pipeline's first step -- and the CLI's expected
errors as one message without a traceback. Each refusal is paired with a value that is not refused."""

import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from kfp import dsl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pipeline  # noqa: E402
from components.check_parameters import check_parameters  # noqa: E402
from petqlora import params, schema  # noqa: E402
from petqlora.registry.local import LocalRegistry  # noqa: E402
from petqlora.run_checks import check_run  # noqa: E402

BACKEND = {"kind": "cloud_run", "image": "us-central1-docker.pkg.dev/my-proj/petqlora/trainer:0.1.0",
           "service_account": "petqlora-job@my-proj.iam.gserviceaccount.com", "bucket": "my-bucket",
           "hf_token_secret": "hf-token"}
SERVING = "us-central1-docker.pkg.dev/my-proj/petqlora/serve:0.1.0"
CLOUD = {"project": "my-proj", "region": "us-central1", "backend": BACKEND, "serving_image": SERVING}
ROOT_URI = "gs://my-bucket/pipeline-root"


def refused(values, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        check_run(values, **kwargs)
    return str(info.value)


def submit_check(**values):
    return check_run({**CLOUD, **values}, pipeline_root=ROOT_URI, context="submit")


# ------------------------------------------------------------------------------ check_run, rule by rule

@pytest.mark.parametrize("options, expected", [
    ({"lora_rank": 8}, "train_options.lora_rank=8: is not a known field"),
    ({"checkpoint_every": 20.5}, "train_options.checkpoint_every=20.5: must be an integer"),
    ({"adapt_vision": "false"}, "train_options.adapt_vision='false': must be true or false"),
    ({"warmup_ratio": 2}, "train_options.warmup_ratio=2.0: must be in [0, 1)"),
    ({"epochs": 1}, "train_options.epochs=1: repeats the pipeline parameter epochs"),
    ({"cache_image_features": True}, "train_options.cache_image_features=True: needs adapt_vision=false"),
], ids=["unknown", "float-for-int", "string-for-bool", "range", "repeats-a-parameter", "cross-field"])
def test_train_options_are_checked_as_the_train_step_builds_its_config(options, expected):
    message = refused({**CLOUD, "train_options": options}, pipeline_root=ROOT_URI, context="submit")
    assert expected in message and "fix:" in message, message


def test_valid_train_options_are_not_refused():
    run = submit_check(train_options={"checkpoint_every": 20, "adapt_vision": False, "cache_image_features": True,
                                      "warmup_ratio": 0.05})
    assert run.train_options["checkpoint_every"] == 20


def test_no_silent_coercion_of_a_fraction_to_an_integer():
    assert "lora_r=64.5: must be an integer" in refused({"lora_r": 64.5}, context="template")
    assert "lora_r='64.5': must be an integer" in refused({"lora_r": "64.5"}, text=True, context="template")
    assert check_run({"lora_r": 64.0}, context="template").lora_r == 64  # KFP's Struct spelling of 64


@pytest.mark.parametrize("name, value, expected", [
    ("win_margin", -0.1, "win_margin=-0.1: must be in [0, 1]"),
    ("scoring", "sample", "scoring='sample': must be one of score, generate"),
    ("image_token_budget", 123, "image_token_budget=123: must be one of 70, 140, 280, 560, 1120"),
])
def test_schema_rules(name, value, expected):
    assert expected in refused({name: value}, context="template")
    assert check_run({name: getattr(params.DEFAULTS, name)}, context="template")


@pytest.mark.parametrize("values, expected", [
    ({"val_fraction": 0.6, "test_fraction": 0.5}, "val_fraction + test_fraction=1.1: must be below 1"),
    ({"max_per_class_train": 1}, "max_per_class_train=1: is below min_per_class_train=2"),
    ({"source": ""}, "source='': must not be empty"),
], ids=["fractions", "cap-below-minimum", "no-source"])
def test_the_data_step_s_rules_are_checked_before_any_data_is_read(values, expected):
    message = refused(values, context="template")
    assert expected in message and "fix:" in message, message
    assert check_run({"val_fraction": 0.5, "test_fraction": 0.4, "max_per_class_train": 2}, context="template")


def test_a_seed_numpy_cannot_take_is_refused_before_training():
    assert "seed=4294967296: must be in [0, 4294967295]" in refused({"seed": 2**32}, context="template")
    assert check_run({"seed": 2**32 - 1}, context="template").seed == 2**32 - 1


def test_the_experiment_is_checked_with_the_run():
    message = refused({"experiment": "My Experiment"}, context="template")
    assert "experiment='My Experiment': must be 1-128 lowercase letters, digits or '-'" in message
    assert check_run({"experiment": "petqlora-pets"}, context="template").experiment == "petqlora-pets"
    assert check_run({"experiment": ""}, context="template")  # none


@pytest.mark.parametrize("values, expected", [
    ({"gemma3_baseline": ""}, "gemma3_baseline='': must not be empty; fix: "),
    ({"gemma4_baseline": " "}, "gemma4_baseline=' ': must not be empty; fix: "),
    ({"model_name": ""}, "model_name='': must be 1-128 characters"),
    ({"model_name": "my pets", "registry": "/gcs/my-bucket/registry.sqlite"},
     "model_name='my pets': must be 1-128 chars of letters, digits, '.', '_' or '-'"),
], ids=["gemma3", "gemma4", "empty-name", "local-registry-name"])
def test_what_evaluation_and_registration_use_is_checked_before_training(values, expected):
    message = refused({**CLOUD, **values}, pipeline_root=ROOT_URI, context="submit")
    assert expected in message and "fix:" in message, message
    assert submit_check(model_name="Pets model")  # a Vertex display name may hold spaces


def test_train_options_are_checked_even_when_a_shared_field_is_refused():
    message = refused({**CLOUD, "lora_r": 16.5, "epochs": 0, "train_options": {"warmup_ratio": 2}},
                      pipeline_root=ROOT_URI, context="submit")
    assert "lora_r=16.5: must be an integer" in message and "epochs=0.0: must be > 0" in message
    assert "train_options.warmup_ratio=2.0: must be in [0, 1)" in message
    assert message.count("\n  - ") == 3  # nothing said about the defaults standing in for lora_r and epochs


def test_every_problem_is_listed_in_one_error():
    message = refused({**CLOUD, "win_margin": -1, "scoring": "sample", "train_options": {"lora_rank": 8},
                       "backend": {**BACKEND, "imag": "x"}, "registry": "relative.sqlite"},
                      pipeline_root=ROOT_URI, context="submit")
    for part in ("win_margin=-1", "scoring='sample'", "train_options.lora_rank=8", "backend.imag='x'",
                 "registry='relative.sqlite'"):
        assert part in message, message
    assert message.count("\n  - ") == 5


@pytest.mark.parametrize("backend, expected", [
    ({"image": BACKEND["image"]}, "backend.kind=None: is required"),
    ({**BACKEND, "kind": "gpu"}, "backend.kind='gpu': must be one of local, cloud_run, vertex_custom_job"),
    ({**BACKEND, "imag": "x"}, "backend.imag='x': is not a backend field; fix: use kind, job_prefix, image"),
    ({**BACKEND, "project": "my-proj"}, "backend.project='my-proj': is set by the pipeline parameter project"),
    ({"kind": "cloud_run"}, "backend kind cloud_run needs ['image', 'service_account', 'bucket']"),
    ({**BACKEND, "image": "us-central1-docker.pkg.dev/my-proj/petqlora/trainer:latest"},
     "backend.image='us-central1-docker.pkg.dev/my-proj/petqlora/trainer:latest': uses ':latest'"),
    ({**BACKEND, "bucket": "gs://my-bucket"}, "backend bucket='gs://my-bucket': is not a bucket name"),
    ({**BACKEND, "bucket": "b" * 64}, f"backend.bucket='{'b' * 64}': is not a bucket name (3-63 chars"),
    ({**BACKEND, "service_account": "petqlora-job"}, "backend.service_account='petqlora-job': must be a service"),
], ids=["no-kind", "kind", "unknown-field", "project-inside", "missing", "latest", "gs-prefix", "short-bucket",
        "service-account"])
def test_backend_is_checked_as_the_gpu_steps_build_it(backend, expected):
    message = refused({**CLOUD, "backend": backend}, pipeline_root=ROOT_URI, context="submit")
    assert expected in message and "fix" in message, message


def test_valid_backends_are_not_refused():
    assert submit_check().backend == BACKEND
    assert submit_check(backend={"kind": "local"}).backend == {"kind": "local"}


def test_a_template_checks_the_recipe_not_where_it_runs():
    check_run({}, context="template")  # the schema's own defaults: the backend is given at submit
    assert "backend.imag" in refused({"backend": {"kind": "cloud_run", "imag": ""}}, context="template")
    assert "backend kind cloud_run needs" in refused({"project": "my-proj"}, pipeline_root=ROOT_URI,
                                                      context="submit")


def test_outputs_and_checkpoints_must_be_in_the_cloud_run_bucket():
    message = refused(CLOUD, pipeline_root="gs://other-bucket/root", context="submit")
    assert "pipeline_root='gs://other-bucket/root': the Cloud Run job mounts only gs://my-bucket" in message
    assert "fix: use a pipeline root in gs://my-bucket/" in message
    message = refused({**CLOUD, "base_model": "/gcs/other-bucket/gemma-4-31b-it"}, pipeline_root=ROOT_URI,
                      context="submit")
    assert "base_model='/gcs/other-bucket/gemma-4-31b-it': the Cloud Run job mounts only" in message
    assert submit_check(base_model="/gcs/my-bucket/models/gemma-4-31b-it")
    # a local pipeline root cannot hold a Cloud Run job's files either
    assert "pipeline_root='/tmp/root'" in refused(CLOUD, pipeline_root="/tmp/root", context="here")


def test_registry_vertex_needs_a_project_and_a_serving_image():
    message = refused({**CLOUD, "project": "", "backend": {"kind": "local"}}, pipeline_root=ROOT_URI, context="submit")
    assert "project='': must be a Google Cloud project ID" in message
    message = refused({**CLOUD, "serving_image": ""}, pipeline_root=ROOT_URI, context="submit")
    assert "serving_image='': is required when registry=vertex" in message and "fix:" in message
    assert submit_check(registry="vertex", backend={"kind": "local"})
    assert submit_check(registry="/gcs/my-bucket/registry.sqlite", serving_image="")  # a local registry needs none


def test_registry_path_rules_where_the_run_is_sent():
    assert "registry='runs/registry.sqlite': must be 'vertex' or the absolute path" in refused(
        {**CLOUD, "registry": "runs/registry.sqlite"}, pipeline_root=ROOT_URI, context="submit")
    assert "a Vertex step sees files only through the /gcs/<bucket> mounts" in refused(
        {**CLOUD, "registry": "/home/me/registry.sqlite"}, pipeline_root=ROOT_URI, context="submit")
    assert submit_check(registry="/gcs/my-bucket/petqlora/registry.sqlite")  # its folder is checked by the step


def test_registry_path_rules_here(tmp_path):
    here = dict(backend={"kind": "local"}, project="local", region="local")
    missing = refused({**here, "registry": str(tmp_path / "no" / "registry.sqlite")})
    assert f"its folder {tmp_path / 'no'} does not exist; fix: create it" in missing
    # /proc exists and no one, root included, can create a file there: a real read-only folder
    assert "its folder /proc cannot be written" in refused({**here, "registry": "/proc/registry.sqlite"})
    (tmp_path / "notes.txt").write_text("not a registry")
    assert "is not a local model registry" in refused({**here, "registry": str(tmp_path / "notes.txt")})
    assert check_run({**here, "registry": str(tmp_path / "registry.sqlite")})  # created by the run
    LocalRegistry(tmp_path / "registry.sqlite").register("m", "/a", run_id="r", metrics={"accuracy": 1.0})
    assert check_run({**here, "registry": str(tmp_path / "registry.sqlite")})  # an existing registry


# ------------------------------------------------------------------------------ the pipeline's first step

def _component_values(**changes) -> dict:
    """Every parameter as KFP hands it to the step (JSON values), with ``changes``."""
    return {**schema.to_json_dict(params.DEFAULTS), **changes}


def test_check_parameters_component_takes_every_pipeline_parameter():
    signature = inspect.signature(check_parameters.python_func)
    assert [n for n in signature.parameters if n != "report"] == list(params.NAMES)
    hints = schema.types_of(params.PipelineParams)
    for name in params.NAMES:
        assert signature.parameters[name].annotation in (hints[name], hints[name].__name__), name


def test_check_parameters_component_refuses_bad_values_in_the_cloud(tmp_path):
    report = dsl.Markdown(name="report", uri="gs://my-bucket/pipeline-root/123/run/check-parameters/report")
    bad = _component_values(**CLOUD, train_options={"warmup_ratio": 2}, registry="vertex", win_margin=-1)
    with pytest.raises(ValueError) as info:
        check_parameters.python_func(**bad, report=report)
    assert "train_options.warmup_ratio=2" in str(info.value) and "win_margin=-1.0: must be in [0, 1]" in str(info.value)
    elsewhere = dsl.Markdown(name="report", uri="gs://other-bucket/root/123/run/check-parameters/report")
    with pytest.raises(ValueError, match="the Cloud Run job mounts only gs://my-bucket"):
        check_parameters.python_func(**_component_values(**CLOUD), report=elsewhere)


def test_check_parameters_component_passes_a_valid_run_and_reports_it(tmp_path):
    report = dsl.Markdown(name="report", uri=str(tmp_path / "report.md"))
    values = _component_values(backend={"kind": "local"}, project="local", region="local",
                               registry=str(tmp_path / "registry.sqlite"))
    check_parameters.python_func(**values, report=report)
    text = (tmp_path / "report.md").read_text()
    assert "| `lora_r` | `64` |" in text and "| `backend` | `{\"kind\": \"local\"}` |" in text


VERTEX_BACKEND = {**BACKEND, "kind": "vertex_custom_job", "machine_type": "a3-highgpu-8g",
                  "accelerator_type": "NVIDIA_H100_80GB", "accelerator_count": 8, "max_parallel": 2, "keep_jobs": 5}


def test_the_first_step_takes_the_backend_s_numbers_as_kfp_hands_them_over():
    # KFP's Struct turns a dict parameter's 8 into 8.0: the first step (run_check_parameters' check) must not
    # refuse the run's own backend
    kfp_backend = {k: float(v) if isinstance(v, int) else v for k, v in VERTEX_BACKEND.items()}
    run = check_run(_component_values(**{**CLOUD, "backend": kfp_backend}),
                    pipeline_root="gs://my-bucket/pipeline-root/123/run/check-parameters/report", context="here")
    assert run.backend["accelerator_count"] == 8


def test_a_bad_gpu_count_is_said_once_as_the_backend_s():
    message = refused({**CLOUD, "backend": {**VERTEX_BACKEND, "accelerator_count": -8}}, pipeline_root=ROOT_URI,
                      context="submit")
    assert "backend.accelerator_count=-8: is not the number of GPUs of a3-highgpu-8g; fix: use 8" in message
    assert "world_size" not in message and message.count("\n  - ") == 1, message


# ------------------------------------------------------------------------------ run-local

def _local_config(tmp_path: Path, **parameters) -> Path:
    config = yaml.safe_load((ROOT / "configs/local.yaml").read_text())
    config["parameters"].update(parameters)
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _previous_winner(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_summary.json").write_text(json.dumps({"status": "succeeded", "registered": True,
                                                      "model_version": "petqlora-gemma4-pets@1"}))


@pytest.mark.parametrize("parameters, expected", [
    ({"lora_r": "16"}, "lora_r='16': must be an integer"),
    ({"lora_r": 16.5}, "lora_r=16.5: must be an integer"),
    ({"train_options": {"log_every": 12, "warmup_ratio": 1.5}}, "train_options.warmup_ratio=1.5: must be in [0, 1)"),
    ({"registry": "vertex"}, "parameters.registry='vertex': is set by run-local itself"),
], ids=["string", "fraction", "train-options", "set-by-run-local"])
def test_run_local_refuses_before_any_step_and_reports_the_failure(tmp_path, parameters, expected):
    from petqlora.local_run import run_local_pipeline

    out = tmp_path / "out"
    _previous_winner(out)
    with pytest.raises(ValueError) as info:
        run_local_pipeline(pipeline.pet_breeds_pipeline, out, _local_config(tmp_path, **parameters))
    assert expected in str(info.value) and "fix:" in str(info.value)
    assert not any((out / name).exists() for name in ("pipeline_root", "models", "data"))  # nothing built or run
    summary = json.loads((out / "run_summary.json").read_text())
    assert (summary["status"], summary["registered"], summary["model_version"]) == ("failed", False, None)
    assert expected in summary["error"]


def test_run_local_cli_says_it_in_one_message_and_debug_shows_the_traceback(tmp_path, capsys):
    config, out = _local_config(tmp_path, lora_r=16.5), tmp_path / "out"
    assert pipeline.main(["run-local", "--output-dir", str(out), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid run parameters:") and "lora_r=16.5" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="lora_r=16.5"):
        pipeline.main(["--debug", "run-local", "--output-dir", str(out), "--config", str(config)])


@pytest.mark.parametrize("text, expected", [
    ("parameters:\n  lora_r: [\n", "is not valid YAML"),
    ("parameters:\n  lora_r: 8\n  lora_r: 16\n", "the key 'lora_r' is given twice"),
    ("- dataset\n- parameters\n", "must be a mapping of the sections dataset, models, parameters"),
    (b"parameters: \xff\n", "is not UTF-8 text"),
    (None, "is a folder, not a file"),
], ids=["malformed", "duplicate-key", "list", "binary", "folder"])
def test_a_config_file_that_cannot_be_read_is_refused_in_one_line(tmp_path, capsys, text, expected):
    config, out = tmp_path / "local.yaml", tmp_path / "out"
    if text is None:
        config.mkdir()
    else:
        config.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert pipeline.main(["run-local", "--output-dir", str(out), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --config {config}: ") and expected in err and "fix:" in err, err
    assert "Traceback" not in err and not (out / "pipeline_root").exists()


@pytest.mark.parametrize("sections, expected", [
    ({"dataset": {"synthetic": {"per_class": "abc"}}}, "dataset.synthetic.per_class='abc': must be an integer"),
    ({"dataset": {"synthetc": {"per_class": 6}}}, "dataset.synthetc={'per_class': 6}: is not a dataset key"),
    ({"dataset": {"path": "/nonexistent/pets"}}, "dataset.path='/nonexistent/pets': no such file or folder"),
    ({"dataset": {"path": "/tmp", "synthetic": {}}}, "gives both path and synthetic"),
    ({"models": {"contrastive_baseline": "tiny:gemma3"}},
     "models.contrastive_baseline='tiny:gemma3': is not a tiny contrastive model"),
    ({"models": {"base_model": "tiny:siglip"}}, "models.base_model='tiny:siglip': is not a tiny Gemma model"),
    ({"models": {"gemma3_baseline": "/nonexistent/gemma"}}, "models.gemma3_baseline='/nonexistent/gemma': is not a "
     "checkpoint folder"),
], ids=["per-class", "unknown-key", "missing-path", "path-and-synthetic", "contrastive-variant", "gemma-variant",
        "missing-folder"])
def test_run_local_s_dataset_and_models_are_checked_before_anything_is_built(tmp_path, sections, expected):
    from petqlora.local_run import run_local_pipeline

    config = yaml.safe_load((ROOT / "configs/local.yaml").read_text())
    for section, values in sections.items():
        config[section] = {**config[section], **values} if section == "models" else values
    path, out = tmp_path / "local.yaml", tmp_path / "out"
    path.write_text(yaml.safe_dump(config))
    def never(**_):  # what the check lets through would start the whole pipeline
        pytest.fail("the pipeline started")

    with pytest.raises(ValueError) as info:
        run_local_pipeline(never, out, path)
    assert expected in str(info.value) and "fix:" in str(info.value), str(info.value)
    assert not any((out / name).exists() for name in ("pipeline_root", "models", "data"))  # nothing built or run


# ------------------------------------------------------------------------------ submit and schedule dry runs

@pytest.fixture(scope="module")
def template(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ir") / "pipeline.yaml"
    assert pipeline.main(["compile", "--output", str(path)]) == 0
    return str(path)


def _submit(template: str, *params_: str, dry_run: bool = True, command: str = "submit") -> list[str]:
    """The command's arguments: a valid backend and serving image unless ``params_`` give their own."""
    given = {p.split("=", 1)[0] for p in params_}
    defaults = [p for p in (f"backend={json.dumps(BACKEND)}", f"serving_image={SERVING}") if p.split("=")[0] not in given]
    args = [command, "--project", "my-proj", "--region", "us-central1", "--pipeline-root", ROOT_URI,
            "--template", template, *(a for p in (*defaults, *params_) for a in ("--param", p))]
    if command == "schedule":
        args += ["--cron", "TZ=Europe/Paris 0 3 * * 1"]
    return args + (["--dry-run"] if dry_run else [])


@pytest.mark.parametrize("command", ["submit", "schedule"])
@pytest.mark.parametrize("param, expected", [
    ('backend={"kind": "cloud_run"}', "backend kind cloud_run needs ['image', 'service_account', 'bucket']"),
    (f'backend={json.dumps({**BACKEND, "bucket": "other-bucket"})}', "pipeline_root='gs://my-bucket/pipeline-root'"),
    ('train_options={"warmup_ratio": 2}', "train_options.warmup_ratio=2.0: must be in [0, 1)"),
    ("registry=runs/registry.sqlite", "registry='runs/registry.sqlite': must be 'vertex' or the absolute path"),
], ids=["backend-missing", "bucket", "train-options", "registry"])
def test_dry_runs_make_every_check_the_real_run_makes(template, capsys, command, param, expected):
    assert pipeline.main(_submit(template, param, command=command)) == 2
    captured = capsys.readouterr()
    assert expected in captured.err and "Traceback" not in captured.err, captured.err
    assert captured.out == ""  # nothing was printed as if it would be sent


@pytest.mark.parametrize("params_, expected", [
    (["lora_r=8", "lora_r=16"], "--param lora_r: is given twice ('8', then '16'); fix: give it once"),
    (['train_options={"checkpoint_every": 20, "checkpoint_every": 30}'],
     "has the key 'checkpoint_every' twice; fix: give each key once"),
    (["lora_r="], "lora_r='': must be an integer; fix: e.g. 64 (the default)"),
], ids=["param-twice", "json-key-twice", "type-names-a-fix"])
def test_a_parameter_given_twice_or_of_the_wrong_type_is_refused_with_the_fix(template, capsys, params_, expected):
    assert pipeline.main(_submit(template, *params_)) == 2
    captured = capsys.readouterr()
    assert expected in captured.err and "Traceback" not in captured.err, captured.err
    assert captured.out == ""


def test_a_valid_dry_run_prints_the_request(template, capsys):
    assert pipeline.main(_submit(template, 'train_options={"checkpoint_every": 20}')) == 0
    job = json.loads(capsys.readouterr().out)["pipeline_job"]
    assert job["runtime_config"]["parameter_values"]["backend"] == BACKEND


def test_a_template_default_is_checked_as_the_run_will_use_it(tmp_path, capsys):
    """A compiled template carries its own defaults; a run of it uses them for what --param does not give."""
    path = tmp_path / "pipeline.yaml"
    from kfp import compiler

    compiler.Compiler().compile(pipeline.pet_breeds_pipeline, str(path),
                                pipeline_parameters={"train_options": {"warmup_ratio": 2}})
    assert pipeline.main(_submit(str(path))) == 2
    assert "train_options.warmup_ratio=2" in capsys.readouterr().err


def test_a_missing_template_is_named_with_the_fix(tmp_path, capsys):
    assert pipeline.main(_submit(str(tmp_path / "missing.yaml"))) == 2
    assert f"--template {tmp_path / 'missing.yaml'}: no such file; fix: compile it first" in capsys.readouterr().err


def _cli(*args: str, env: dict | None = None, drop: tuple = (), prefix: tuple = ()) -> subprocess.CompletedProcess:
    """`python pipeline.py ARGS` as a user runs it (PYTHONPATH set, ``env`` added, ``drop`` removed)."""
    child = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run([*prefix, sys.executable, "pipeline.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**child, "PYTHONPATH": str(ROOT / "src"), **(env or {})})


def test_broken_backend_json_through_the_command_line(template):
    result = _cli("submit", "--project", "my-proj", "--region", "us-central1", "--pipeline-root", ROOT_URI,
                  "--template", template, "--param", 'backend={"kind": "cloud_run",', "--dry-run")
    assert result.returncode == 2
    assert "backend='{\"kind\": \"cloud_run\",': is not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_submit_without_credentials_gives_the_advice_without_a_traceback(template, tmp_path):
    # google.auth.default finds nothing: no key file, no gcloud login, and no metadata-server probe; the
    # images are named in a real registry (PETQLORA_IMAGE_REGISTRY), so only the login is missing
    env = {"CLOUDSDK_CONFIG": str(tmp_path / "gcloud"), "NO_GCE_CHECK": "true", "HOME": str(tmp_path),
           "PETQLORA_IMAGE_REGISTRY": "us-central1-docker.pkg.dev/my-proj/petqlora"}
    result = _cli(*_submit(template, dry_run=False), env=env,
                  drop=("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "CLOUD_ML_PROJECT_ID"))
    assert result.returncode == 1, result.stderr
    assert "gcloud auth application-default login" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 8, result.stderr


# ------------------------------------------------------------------------------ lineage

def _registry(folder: Path) -> Path:
    path = folder / "registry.sqlite"
    LocalRegistry(path).register("petqlora-gemma4-pets", "/runs/adapter", run_id="run-1", metrics={"accuracy": 0.9},
                                 lineage={"dataset": {"uri": "/runs/data", "sha256": "abc", "inputs": {}}})
    return path


def test_lineage_of_a_file_that_is_not_a_registry(tmp_path, capsys):
    (tmp_path / "notes.sqlite").write_text("hello")
    args = ["lineage", "petqlora-gemma4-pets@1", "--registry", str(tmp_path / "notes.sqlite")]
    assert pipeline.main(args) == 2
    err = capsys.readouterr().err
    assert "is not a local model registry" in err and "fix: pass the registry.sqlite" in err
    assert "Traceback" not in err
    with pytest.raises(ValueError, match="is not a local model registry"):
        pipeline.main(["--debug", *args])


def test_lineage_of_a_registry_in_a_read_only_folder():
    """Reading needs no write: the lineage prints even where SQLite cannot create its -shm file."""
    folder = Path(tempfile.mkdtemp(prefix="petqlora-ro-"))
    try:
        path = _registry(folder)
        folder.chmod(0o555)
        prefix = ()
        if os.geteuid() == 0:  # root writes anywhere: drop the capability that lets it, for the child only
            if shutil.which("setpriv") is None:
                pytest.skip("running as root without setpriv: a folder cannot be made read-only to this process")
            prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")
            probe = subprocess.run([*prefix, "touch", str(folder / "x")], capture_output=True)
            assert probe.returncode != 0, "the folder is still writable to the child"
        result = _cli("lineage", "petqlora-gemma4-pets@1", "--registry", str(path), prefix=prefix)
        assert result.returncode == 0, result.stderr
        assert "petqlora-gemma4-pets@1" in result.stdout and "/runs/adapter" in result.stdout
        assert sorted(p.name for p in folder.iterdir()) == ["registry.sqlite"]  # nothing written there
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


@pytest.mark.parametrize("component", ["train_adapter", "decide_training"])
def test_the_train_steps_build_the_config_as_the_check_does(component, tmp_path):
    """train_adapter and decide_training build the training config with train.config.train_config_values, as
    check_run does: a pipeline parameter repeated in train_options fails there too, never silently loses."""
    import importlib

    func = getattr(importlib.import_module(f"components.{component}"), component).python_func
    shared = {name: getattr(params.DEFAULTS, name) for name in ("base_model", "lora_r", "lora_alpha", "lora_dropout",
                                                                  "epochs", "learning_rate", "batch_size", "grad_accum",
                                                                  "image_token_budget", "max_length", "seed")}
    # the refusal comes before any other input is read: placeholders stand for them
    others = {name: (dsl.Dataset if name == "dataset" else dsl.Artifact)(name=name, uri=str(tmp_path / name))
              for name in inspect.signature(func).parameters if name not in shared and name != "train_options"}
    with pytest.raises(ValueError, match="train_options.lora_r=8: repeats the pipeline parameter lora_r"):
        func(**shared, **others, train_options={"lora_r": 8})


@pytest.mark.integration
def test_the_pipeline_run_stops_at_its_first_step(tmp_path, capfd):
    """Through kfp.local, the real DAG, as a run started with bad values from the Vertex console would go:
    check_parameters fails it before prepare_data or any other step starts."""
    from kfp import local

    root = tmp_path / "pipeline_root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    values = {**schema.to_json_dict(params.DEFAULTS), "backend": {"kind": "local"}, "project": "local",
              "region": "local", "registry": str(tmp_path / "gone" / "registry.sqlite"),
              "train_options": {"warmup_ratio": 2}}
    with pytest.raises(RuntimeError, match="check-parameters"):
        pipeline.pet_breeds_pipeline(**values)
    logs = capfd.readouterr()
    assert "train_options.warmup_ratio=2.0: must be in [0, 1)" in logs.out + logs.err
    assert f"its folder {tmp_path / 'gone'} does not exist" in logs.out + logs.err
    (run,) = root.iterdir()
    assert sorted(p.name for p in run.iterdir()) == ["check-parameters"]  # nothing else started
