"""The vertex_custom_job backend: the CustomJob request against a literal, the run end to end through the real
aiplatform_v1 JobServiceClient (REST) against the local fake of the JobService (tests/fakes/vertex_custom_jobs.py),
the config refusals, the HF token read by reference, and the gpu-job dry run.

Backend builds its launcher without a client, so the launcher constructs ``aiplatform_v1.JobServiceClient()``
itself; the ``api`` fixture swaps that class for a factory of the same real client with the REST transport, the
fake's endpoint and anonymous credentials. Backend polls every 10 s at first: every plan here ends on the first
GET, except the SIGTERM test's, which is interrupted during that sleep.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import sys
import threading
import time

import pytest
from google.api_core import exceptions as core_exceptions

from petqlora.backends import EVALUATE_MODULE, TRAIN_MODULE, Backend, GpuRunsError
from petqlora.cloud.secrets import SecretAccessError, export_secret_env
from petqlora.cloud.vertex_common import to_json_dict
from petqlora.cloud.vertex_custom_job import MACHINES, build_custom_job
from petqlora.cloud.vertex_custom_job_launcher import CustomJobError, CustomJobLauncher

from fakes.vertex_custom_jobs import FakeCustomJobs

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # pipeline.py, at the repository root

IMAGE = "us-central1-docker.pkg.dev/my-proj/petqlora/trainer:0.1.0"
SA = "petqlora-job@my-proj.iam.gserviceaccount.com"
BUCKET = "my-proj-petqlora"
PARENT = "projects/my-proj/locations/us-central1"
VERTEX = dict(kind="vertex_custom_job", project="my-proj", region="us-central1", image=IMAGE, service_account=SA,
              bucket=BUCKET, hf_token_secret="hf-token", machine_type="a3-highgpu-8g",
              accelerator_type="NVIDIA_H100_80GB", accelerator_count=8)
ROOT = f"/gcs/{BUCKET}/pipeline-root/run-1"
TRAIN_ARGS = ["--dataset", f"{ROOT}/prepare-data/dataset", "--output", f"{ROOT}/train-adapter/adapter",
              "--config", f"{ROOT}/train-adapter/adapter/train_config.json"]
GETS = r"/customJobs/[0-9]+$"


def backend(**overrides) -> Backend:
    return Backend(**{**VERTEX, **overrides})


@pytest.fixture
def api(monkeypatch):
    from google.cloud import aiplatform_v1

    with FakeCustomJobs() as fake:
        real = aiplatform_v1.JobServiceClient

        def towards_the_fake(*args, **kwargs):
            client = fake.client()
            assert kwargs == {"client_options": {"api_endpoint": "us-central1-aiplatform.googleapis.com"}}
            return client

        monkeypatch.setattr(aiplatform_v1, "JobServiceClient", towards_the_fake)
        assert real is not towards_the_fake
        yield fake


# ---- the request ----------------------------------------------------------------------------------------

def test_the_training_job_runs_torchrun_on_every_gpu_of_the_machine():
    job = build_custom_job(backend().job_config(TRAIN_MODULE), TRAIN_ARGS, "run-1-train")
    assert to_json_dict(job) == {
        "display_name": "petqlora-train-adapter-run-1-train",  # how a retried step finds it again
        "labels": {"petqlora-step": "train-adapter", "petqlora-task": "run-1-train"},
        "job_spec": {
            "worker_pool_specs": [{
                "machine_spec": {"machine_type": "a3-highgpu-8g", "accelerator_type": "NVIDIA_H100_80GB",
                                 "accelerator_count": 8},
                "replica_count": "1",
                "disk_spec": {"boot_disk_type": "pd-ssd", "boot_disk_size_gb": 500},
                "container_spec": {
                    "image_uri": IMAGE,
                    "command": ["torchrun", "--standalone", "--nnodes", "1", "--nproc-per-node", "8",
                                "-m", "petqlora.train.train_adapter"],
                    "args": TRAIN_ARGS,  # the same /gcs paths the step sees: Vertex mounts gs:// at /gcs
                    "env": [{"name": "PETQLORA_TASK_ID", "value": "run-1-train"},
                            # the secret's name, never its value
                            {"name": "HF_TOKEN_SECRET", "value": "projects/my-proj/secrets/hf-token/versions/latest"}],
                },
            }],
            "service_account": SA,
            "scheduling": {"timeout": "86400s"},  # restart_job_on_worker_restart=False: the default, not sent
            "base_output_directory": {"output_uri_prefix": f"gs://{BUCKET}/pipeline-root/run-1/train-adapter/adapter"},
        },
    }


@pytest.mark.parametrize("machine, accelerator, count, eval_machine, disk", [
    ("a3-highgpu-8g", "NVIDIA_H100_80GB", 8, "a3-highgpu-1g", "pd-ssd"),
    ("a3-highgpu-2g", "NVIDIA_H100_80GB", 2, "a3-highgpu-1g", "pd-ssd"),
    ("a3-ultragpu-8g", "NVIDIA_H200_141GB", 8, "a3-ultragpu-8g", "hyperdisk-balanced"),  # no one-GPU H200 machine
    ("g4-standard-384", "NVIDIA_RTX_PRO_6000", 8, "g4-standard-48", "hyperdisk-balanced"),
    ("g4-standard-96", "NVIDIA_RTX_PRO_6000", 2, "g4-standard-48", "hyperdisk-balanced"),
    ("a2-ultragpu-4g", "NVIDIA_A100_80GB", 4, "a2-ultragpu-1g", "pd-ssd"),
])
def test_evaluation_runs_one_process_on_the_one_gpu_machine_of_the_same_gpu(machine, accelerator, count,
                                                                             eval_machine, disk):
    b = backend(machine_type=machine, accelerator_type=accelerator, accelerator_count=count, hf_token_secret="")
    train = to_json_dict(build_custom_job(b.job_config(TRAIN_MODULE), [], "r-train"))["job_spec"]
    pool = to_json_dict(build_custom_job(b.job_config(EVALUATE_MODULE), [], "r-evaluate-gemma3_baseline"))[
        "job_spec"]["worker_pool_specs"][0]
    assert train["worker_pool_specs"][0]["container_spec"]["command"][:6] == [
        "torchrun", "--standalone", "--nnodes", "1", "--nproc-per-node", str(count)]
    assert pool["machine_spec"] == {"machine_type": eval_machine, "accelerator_type": accelerator,
                                    "accelerator_count": MACHINES[eval_machine].accelerator_count}
    assert pool["container_spec"]["command"] == ["python", "-m", "petqlora.evaluation.evaluate"]
    assert "env" not in pool["container_spec"] or pool["container_spec"]["env"] == [
        {"name": "PETQLORA_TASK_ID", "value": "r-evaluate-gemma3_baseline"}]
    assert pool["disk_spec"]["boot_disk_type"] == disk


# ---- refusals -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, expected", [
    ({"machine_type": "a3-highgpu-3g"}, "machine_type='a3-highgpu-3g': is not a GPU machine type this backend "
                                        "knows; fix: use one of a2-ultragpu-1g"),
    ({"accelerator_type": "NVIDIA_H200_141GB"}, "accelerator_type='NVIDIA_H200_141GB': is not the GPU of "
                                                "a3-highgpu-8g; fix: use 'NVIDIA_H100_80GB'"),
    ({"accelerator_count": 4}, "accelerator_count=4: is not the number of GPUs of a3-highgpu-8g; fix: use 8"),
    ({"machine_type": "g4-standard-192", "accelerator_type": "NVIDIA_RTX_PRO_6000"},
     "accelerator_count=8: is not the number of GPUs of g4-standard-192; fix: use 4"),
    ({"replica_count": 2}, "replica_count=2: must be 1: the training runs on the GPUs of one machine"),
    ({"image": IMAGE.replace(":0.1.0", ":latest")}, "image='us-central1-docker.pkg.dev/my-proj/petqlora/"
                                                    "trainer:latest': uses :latest, which moves"),
    ({"image": IMAGE.replace(":0.1.0", "")}, "has no tag: pin it by a version tag or a digest"),
    ({"boot_disk_gb": 20}, "boot_disk_gb=20: must be an integer number of GB in 100..65536"),
    ({"hf_token_secret": "hf token"}, "hf_token_secret='hf token': is not a Secret Manager reference"),
], ids=["machine", "accelerator", "count", "g4-count", "replicas", "latest", "untagged", "disk", "secret"])
def test_a_bad_config_is_refused_in_one_message_with_the_fix(overrides, expected):
    with pytest.raises(ValueError) as info:
        backend(**overrides).job_config(TRAIN_MODULE)
    message = str(info.value)
    assert message.startswith("invalid vertex_custom_job backend:\n  - ") and expected in message, message
    assert message.count("\n  - ") == 1  # one problem, said once


def test_the_backend_refuses_missing_and_misplaced_fields():
    with pytest.raises(ValueError, match=r"backend kind vertex_custom_job needs \['machine_type', 'accelerator_type', "
                                         r"'accelerator_count'\]; fix: .*\"machine_type\": \"a3-highgpu-8g\""):
        Backend(**{k: v for k, v in VERTEX.items() if k not in ("machine_type", "accelerator_type",
                                                                 "accelerator_count")})
    with pytest.raises(ValueError, match=r"backend kind cloud_run does not take \['machine_type'\]: they are "
                                         "vertex_custom_job fields"):
        Backend(kind="cloud_run", machine_type="a3-highgpu-8g")
    with pytest.raises(ValueError, match="backend bucket='gs://b': is not a bucket name"):
        backend(bucket="gs://b")


def test_the_run_checks_refuse_a_bad_custom_job_before_the_run_starts():
    from petqlora.run_checks import check_run

    values = {"project": "my-proj", "region": "us-central1", "registry": "/gcs/my-proj-petqlora/registry.sqlite",
              "backend": {k: v for k, v in VERTEX.items() if k not in ("project", "region")}}
    assert check_run(values, pipeline_root=f"gs://{BUCKET}/root", context="submit").backend["kind"] == \
        "vertex_custom_job"
    with pytest.raises(ValueError) as info:
        check_run({**values, "backend": {**values["backend"], "accelerator_count": 4}},
                  pipeline_root="gs://other-bucket/root", context="submit")
    message = str(info.value)
    assert "backend.accelerator_count=4: is not the number of GPUs of a3-highgpu-8g; fix: use 8" in message
    assert "pipeline_root='gs://other-bucket/root': the Vertex CustomJob works in gs://my-proj-petqlora" in message
    assert message.count("\n  - ") == 2, message  # training's and evaluation's configs report it once


def test_the_run_checks_refuse_gpus_that_do_not_share_the_global_batch_evenly():
    """torchrun starts one training process per GPU: 8 GPUs cannot share batch_size x grad_accum = 3 x 2."""
    from petqlora.run_checks import check_run

    values = {"project": "my-proj", "region": "us-central1", "registry": "/gcs/my-proj-petqlora/registry.sqlite",
              "backend": {k: v for k, v in VERTEX.items() if k not in ("project", "region")},
              "batch_size": 3, "grad_accum": 2}
    with pytest.raises(ValueError) as info:
        check_run(values, pipeline_root=f"gs://{BUCKET}/root", context="submit")
    assert "world_size=8: must divide batch_size x grad_accum = 3 x 2 = 6" in str(info.value)
    assert check_run({**values, "grad_accum": 8}, pipeline_root=f"gs://{BUCKET}/root", context="submit")


# ---- the run, end to end through the fake -----------------------------------------------------------------

def test_a_run_creates_the_job_and_waits_for_its_success(api, capsys):
    api.plan_next_job("succeed", pending_polls=0, running_polls=0)
    backend().run(TRAIN_MODULE, TRAIN_ARGS, "run-1-train")
    (create,) = api.calls("POST", r"/customJobs$")
    assert create["path"] == f"/v1/{PARENT}/customJobs"
    pool = create["body"]["jobSpec"]["workerPoolSpecs"][0]
    assert pool["machineSpec"] == {"machineType": "a3-highgpu-8g", "acceleratorType": 13, "acceleratorCount": 8}
    assert pool["containerSpec"]["command"][:6] == ["torchrun", "--standalone", "--nnodes", "1",
                                                   "--nproc-per-node", "8"]
    (lookup,) = api.calls("GET", r"/customJobs$")  # the re-attach lookup, before the create
    assert lookup["query"]["filter"] == 'display_name="petqlora-train-adapter-run-1-train"'
    (name,) = api.jobs
    assert api.jobs[name]["state"] == "JOB_STATE_SUCCEEDED" and api.cancelled == []
    out = capsys.readouterr().out
    assert f"created {name} (petqlora-train-adapter-run-1-train) on a3-highgpu-8g" in out
    assert "petqlora-train-adapter-run-1-train (1001): SUCCEEDED; logs: https://console.cloud.google.com/logs/" in out


def test_a_failed_job_is_raised_with_its_error_in_full(api):
    api.plan_next_job("fail", pending_polls=0, running_polls=0)
    with pytest.raises(CustomJobError) as info:
        backend().run(TRAIN_MODULE, TRAIN_ARGS, "run-2-train")
    name = f"{PARENT}/customJobs/1001"
    assert str(info.value) == (
        f"Vertex CustomJob {name} (petqlora-train-adapter-run-2-train) failed: The replica workerpool0-0 exited "
        "with a non-zero status of 1. To find out more about why your job exited please check the logs (code 3). "
        "Logs: https://console.cloud.google.com/logs/query;query=resource.type%3D%22ml_job%22%20resource.labels."
        "job_id%3D%221001%22?project=my-proj")
    assert api.cancelled == []


def test_sigterm_cancels_the_job_and_exits_143(api):
    api.plan_next_job("hang")

    def terminate_once_polled():
        deadline = time.monotonic() + 10
        while not api.calls("GET", GETS) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    def ours(*_):
        pass

    previous = signal.signal(signal.SIGTERM, ours)
    started = time.monotonic()
    try:
        threading.Thread(target=terminate_once_polled, daemon=True).start()
        with pytest.raises(SystemExit) as info:
            backend().run(TRAIN_MODULE, TRAIN_ARGS, "run-3-train")
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert info.value.code == 143
    assert time.monotonic() - started < 8  # the 10 s poll sleep was cut short
    (name,) = api.jobs
    assert api.cancelled == [name] and api.jobs[name]["state"] == "JOB_STATE_CANCELLING"


def test_a_retried_task_reattaches_instead_of_paying_twice(api, capsys):
    api.plan_next_job("succeed", pending_polls=0, running_polls=0)  # succeeds on the first GET it answers
    api.inject_errors(403, method="GET", path=GETS)  # the step loses the API while the job runs on
    with pytest.raises(core_exceptions.Forbidden):
        backend().run(TRAIN_MODULE, TRAIN_ARGS, "run-4-train")
    (name,) = api.jobs
    assert api.jobs[name]["state"] == "JOB_STATE_PENDING" and api.cancelled == []
    api.set_state(name, "JOB_STATE_RUNNING")
    capsys.readouterr()

    backend().run(TRAIN_MODULE, TRAIN_ARGS, "run-4-train")  # the retried step: waits on the same job
    assert list(api.jobs) == [name] and len(api.calls("POST", r"/customJobs$")) == 1
    assert f"task run-4-train is already running as {name}; waiting on it" in capsys.readouterr().out

    gets = len(api.calls("GET", GETS))
    backend().run(TRAIN_MODULE, TRAIN_ARGS, "run-4-train")  # once succeeded: neither created nor polled again
    assert len(api.calls("POST", r"/customJobs$")) == 1 and len(api.calls("GET", GETS)) == gets
    assert f"task run-4-train already succeeded as {name}; not starting another" in capsys.readouterr().out

    api.plan_next_job("succeed", pending_polls=0, running_polls=0)
    backend().run(TRAIN_MODULE, TRAIN_ARGS, "run-5-train")  # another task is another job
    assert len(api.jobs) == 2


def test_a_lost_create_answer_is_not_repeated_blindly(api):
    api.plan_next_job("succeed", pending_polls=0, running_polls=0)
    api.inject_errors(503, method="POST", path=r"/customJobs$", after=True)  # created, but the answer is lost
    launcher = CustomJobLauncher(backend().job_config(TRAIN_MODULE), client=api.client(), poll_initial_s=0.01,
                                 log=lambda line: None, sleep=lambda s: None)
    launcher.run(TRAIN_ARGS, "run-6-train")
    assert len(api.jobs) == 1 and len(api.calls("POST", r"/customJobs$")) == 1


def test_a_job_of_the_task_running_other_code_is_cancelled_not_reused(api):
    api.plan_next_job("hang")
    old = backend(image=IMAGE.replace("0.1.0", "0.0.9"))
    CustomJobLauncher(old.job_config(TRAIN_MODULE), client=api.client())._create(
        build_custom_job(old.job_config(TRAIN_MODULE), TRAIN_ARGS, "run-7-train"))
    api.plan_next_job("succeed", pending_polls=0, running_polls=0)
    lines = []
    CustomJobLauncher(backend().job_config(TRAIN_MODULE), client=api.client(), poll_initial_s=0.01,
                      log=lines.append).run(TRAIN_ARGS, "run-7-train")
    first, second = api.jobs
    assert api.cancelled == [first] and api.jobs[second]["state"] == "JOB_STATE_SUCCEEDED"
    assert any(f"not reusing {first} for petqlora-train-adapter-run-7-train: it runs image_uri "
               f"'{IMAGE.replace('0.1.0', '0.0.9')}' instead of '{IMAGE}'" in line for line in lines), lines


def test_evaluation_runs_the_models_as_concurrent_jobs_and_a_failure_cancels_the_others(api):
    api.plan_next_job("hang", display_name="petqlora-evaluate-run-8-evaluate-finetuned")
    api.plan_next_job("fail", pending_polls=0, running_polls=0,
                      display_name="petqlora-evaluate-run-8-evaluate-gemma3_baseline")

    def run(name):
        args = ["--dataset", f"{ROOT}/d", "--output", f"{ROOT}/evaluate/{name}", "--config", f"{ROOT}/{name}.json"]
        return EVALUATE_MODULE, args, f"run-8-evaluate-{name}"

    started = time.monotonic()
    with pytest.raises(GpuRunsError) as info:
        backend().run_many({"finetuned": run("finetuned"), "gemma3_baseline": run("gemma3_baseline")})
    assert time.monotonic() - started < 8  # the running job's 10 s poll sleep was cut short
    assert list(info.value.failures) == ["gemma3_baseline"]
    assert str(info.value).startswith("1 of 2 runs failed (gemma3_baseline); the others were stopped:\n"
                                      "  - gemma3_baseline: Vertex CustomJob ")
    jobs = {job["displayName"]: name for name, job in api.jobs.items()}
    assert len(jobs) == 2 and all(j["jobSpec"]["workerPoolSpecs"][0]["machineSpec"]["machineType"] == "a3-highgpu-1g"
                                  for j in api.jobs.values())
    assert api.cancelled == [jobs["petqlora-evaluate-run-8-evaluate-finetuned"]]


# ---- the HF token, by reference ---------------------------------------------------------------------------

class _Answer:
    def __init__(self, status, payload):
        self.status_code, self._payload, self.text = status, payload, json.dumps(payload)

    def json(self):
        return self._payload


class _SecretManager:
    """What Secret Manager's REST API answers to an authorized session: GET /v1/{version}:access."""

    def __init__(self, secrets):
        self.secrets, self.urls = secrets, []

    def get(self, url, timeout):
        self.urls.append(url)
        name = url.removeprefix("https://secretmanager.googleapis.com/v1/").removesuffix(":access")
        if name not in self.secrets:
            return _Answer(403, {"error": {"code": 403, "status": "PERMISSION_DENIED"}})
        return _Answer(200, {"name": name, "payload": {"data": base64.b64encode(self.secrets[name]).decode()}})


def test_the_entrypoint_reads_the_token_from_the_secret_it_is_given_by_name():
    version = "projects/my-proj/secrets/hf-token/versions/latest"
    service = _SecretManager({version: b"hf_abc123\n"})
    environ = {"HF_TOKEN_SECRET": version}
    assert export_secret_env(environ, session=service) is True
    assert environ["HF_TOKEN"] == "hf_abc123"
    assert service.urls == [f"https://secretmanager.googleapis.com/v1/{version}:access"]
    assert export_secret_env({"HF_TOKEN_SECRET": version, "HF_TOKEN": "set"}, session=service) is False  # Cloud Run
    assert export_secret_env({}, session=service) is False and len(service.urls) == 1
    with pytest.raises(SecretAccessError, match="answered HTTP 403.*fix: grant the job's service account "
                                                "roles/secretmanager.secretAccessor"):
        export_secret_env({"HF_TOKEN_SECRET": "projects/my-proj/secrets/other/versions/1"}, session=service)
    with pytest.raises(SecretAccessError, match="is not a secret version name"):
        export_secret_env({"HF_TOKEN_SECRET": "hf-token"}, session=service)


# ---- gpu-job --dry-run ----------------------------------------------------------------------------------

def _gpu_job(*extra: str) -> list[str]:
    values = {k: v for k, v in VERTEX.items() if k not in ("project", "region")}
    return ["gpu-job", "--project", "my-proj", "--region", "us-central1", "--backend", json.dumps(values),
            "--dataset", f"gs://{BUCKET}/data/pets", "--output", f"gs://{BUCKET}/manual/adapter",
            "--config", f"gs://{BUCKET}/manual/train_config.json", "--task-id", "manual-1", *extra]


def test_the_dry_run_prints_the_requests_the_run_then_sends(api, capsys):
    import pipeline as cli

    assert cli.main(_gpu_job("--dry-run")) == 0
    printed = json.loads(capsys.readouterr().out)
    assert api.requests == []  # a dry run sends nothing
    lookup, create = printed["requests"]
    assert lookup["http"] == f"GET /v1/{PARENT}/customJobs"
    assert create["http"] == f"POST /v1/{PARENT}/customJobs"
    assert create["body"]["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["args"] == [
        "--dataset", f"/gcs/{BUCKET}/data/pets", "--output", f"/gcs/{BUCKET}/manual/adapter",
        "--config", f"/gcs/{BUCKET}/manual/train_config.json"]

    api.plan_next_job("succeed", pending_polls=0, running_polls=0)
    assert cli.main(_gpu_job()) == 0  # the real run, through the real client, against the fake
    sent = [r for r in api.requests if not re.search(GETS, r["path"])]
    assert [(r["verb"], r["path"], r["query"], r["body"]) for r in sent] == [
        ("GET", lookup["http"].split(" ", 1)[1], lookup["query"], {}),
        ("POST", create["http"].split(" ", 1)[1], create["query"], create["body"])]


def test_gpu_job_refuses_a_bad_backend_in_one_message(capsys):
    import pipeline as cli

    argv = _gpu_job("--dry-run")
    argv[argv.index("--backend") + 1] = json.dumps({**json.loads(argv[argv.index("--backend") + 1]),
                                                    "accelerator_count": 2, "replicas": 2})
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid gpu-job arguments:\n  - backend.replicas=2: is not a backend field"), err
    argv = _gpu_job("--dry-run")
    argv[argv.index("--output") + 1] = "gs://elsewhere/out"
    assert cli.main(argv) == 2
    assert "--output gs://elsewhere/out: must be a gs:// URI in the backend's bucket" in capsys.readouterr().err
    argv = _gpu_job("--dry-run")
    argv[argv.index("--backend") + 1] = argv[argv.index("--backend") + 1].replace("{", '{"kind": "local", ', 1)
    assert cli.main(argv) == 2  # the last "kind" would silently win
    assert "has the key 'kind' twice; fix: give each key once" in capsys.readouterr().err
