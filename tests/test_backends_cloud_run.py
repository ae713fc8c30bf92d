"""backends.Backend on Cloud Run, end to end: `Backend(kind="cloud_run").run(...)` is the code path the GPU
steps take in the cloud, driven here against the local fake of the Cloud Run Admin API
(tests/fakes/cloud_run_api.py) with the real google.cloud.run_v2 REST clients.

Backend builds its CloudRunLauncher without injected clients, so the launcher constructs
`run_v2.JobsClient()` / `run_v2.ExecutionsClient()` itself (Application Default Credentials, gRPC to
run.googleapis.com). The only seam is that construction: the `api` fixture swaps those two classes for
factories that build the same real clients with the REST transport, the fake's endpoint and anonymous
credentials. Everything else (job spec, run request, polling, cancel on SIGTERM, re-attach) is the real code.

Timing: Backend uses the launcher's default polling (first sleep 5 s, real time.sleep), so every plan here
ends on the first GET of the execution, except the SIGTERM test, which is interrupted during that 5 s sleep.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from google.api_core import exceptions as core_exceptions

from petqlora.backends import Backend
from petqlora.cloud.cloud_run import CloudRunExecutionError, ExecutionState, execution_state

IMAGE = "us-central1-docker.pkg.dev/my-proj/petqlora/trainer:0.1.0"
SA = "gpu-runner@my-proj.iam.gserviceaccount.com"  # not derivable from the project: must be passed through
BUCKET = "my-proj-petqlora"
# The job is named job_prefix + the module's last part ('_' -> '-') + 8 hex digits of the hash of its spec
# (image, module, resources, env, volumes, service account...): one job per spec. Pinned here: the name shows
# in the Console and in docs/cloud_setup.md.
JOB_ID = "petqlora-train-adapter-30744c59"
JOB = f"projects/my-proj/locations/us-central1/jobs/{JOB_ID}"
EXECUTIONS = r"/executions/[^/:]+$"  # GET of one execution (a poll), not the list, not :cancel


def make_backend(**overrides) -> Backend:
    values = dict(kind="cloud_run", project="my-proj", region="us-central1", image=IMAGE, service_account=SA,
                  bucket=BUCKET, hf_token_secret="hf-token")
    return Backend(**{**values, **overrides})


def train_args(backend: Backend) -> list[str]:
    """The arguments run_train_adapter passes: the step's /gcs paths, through path_arg."""
    root = f"/gcs/{BUCKET}/pipeline-root/run-1/train-adapter"
    return ["--dataset", backend.path_arg(f"/gcs/{BUCKET}/pipeline-root/run-1/prepare-data/dataset"),
            "--output", backend.path_arg(f"{root}/adapter"),
            "--config", backend.path_arg(f"{root}/adapter/train_config.json")]


@pytest.fixture
def api(cloud_run_api):
    return cloud_run_api


# ---- path_arg -------------------------------------------------------------------------------------------

def test_path_arg_keeps_mount_paths_and_refuses_what_the_job_cannot_see():
    backend = make_backend()
    # Vertex hands the step /gcs/<bucket>/... paths and the job mounts the bucket at the same place.
    assert backend.path_arg(f"/gcs/{BUCKET}/root/run-1/dataset") == f"/gcs/{BUCKET}/root/run-1/dataset"
    for outside in (f"gs://{BUCKET}/root/run-1/dataset", "/gcs/other-bucket/x", f"/gcs/{BUCKET}", "/tmp/x"):
        with pytest.raises(ValueError, match=f"not under the Cloud Run Job's bucket mount /gcs/{BUCKET}/"):
            backend.path_arg(outside)
    assert Backend().path_arg("/tmp/x") == "/tmp/x"  # local: unchanged


# ---- the job and the execution, through Backend.run -------------------------------------------------------

def test_run_creates_the_job_with_the_expected_spec_and_waits_for_success(api, capsys):
    backend = make_backend()
    api.plan_next_execution("succeed", polls=1)
    backend.run("petqlora.train.train_adapter", train_args(backend), "run-1-train")

    (create,) = api.calls("POST", r"/jobs$")
    assert create.path == "/v2/projects/my-proj/locations/us-central1/jobs"
    assert create.query["jobId"] == [JOB_ID]
    assert create.body == {
        "labels": {"petqlora-job-prefix": "petqlora-train-adapter"},  # what pruning may delete
        "template": {
            "taskCount": 1,
            "template": {
                "containers": [{
                    "image": IMAGE,
                    "command": ["python", "-m", "petqlora.train.train_adapter"],
                    "env": [{"name": "HF_TOKEN",
                             "valueSource": {"secretKeyRef": {"secret": "hf-token", "version": "latest"}}}],
                    "resources": {"limits": {"cpu": "20", "memory": "80Gi", "nvidia.com/gpu": "1"}},
                    "volumeMounts": [{"name": "gcs", "mountPath": f"/gcs/{BUCKET}"}],
                }],
                "volumes": [{"name": "gcs", "gcs": {"bucket": BUCKET}}],
                "maxRetries": 3,
                "timeout": "86400s",
                "serviceAccount": SA,
                "nodeSelector": {"accelerator": "nvidia-rtx-pro-6000"},
                "gpuZonalRedundancyDisabled": True,
            },
        },
    }

    (start,) = api.calls("POST", r":run$")
    assert start.path == f"/v2/{JOB}:run"
    assert start.body == {"overrides": {"containerOverrides": [{
        "args": ["--dataset", f"/gcs/{BUCKET}/pipeline-root/run-1/prepare-data/dataset",
                 "--output", f"/gcs/{BUCKET}/pipeline-root/run-1/train-adapter/adapter",
                 "--config", f"/gcs/{BUCKET}/pipeline-root/run-1/train-adapter/adapter/train_config.json"],
        "env": [{"name": "PETQLORA_TASK_ID", "value": "run-1-train"}]}], "taskCount": 1}}

    # Awaited: run returned only after a GET saw the execution succeed; nothing was cancelled.
    (name,) = api.executions
    assert name == f"{JOB}/executions/{JOB_ID}-00001"
    assert [r.path for r in api.calls("GET", EXECUTIONS)] == [f"/v2/{name}"]
    assert execution_state(api.execution(name)) == ExecutionState.SUCCEEDED
    assert api.cancelled == []
    assert f"{JOB_ID}-00001: SUCCEEDED" in capsys.readouterr().out


def test_each_module_gets_its_own_job(api):
    backend = make_backend(job_prefix="pets", hf_token_secret="")
    backend.run("petqlora.evaluation.evaluate", ["--name", "finetuned"], "run-1-evaluate-finetuned")
    evaluate_job = "projects/my-proj/locations/us-central1/jobs/pets-evaluate-be488700"
    assert list(api.jobs) == [evaluate_job]
    container = api.jobs[evaluate_job].template.template.containers[0]
    assert list(container.command) == ["python", "-m", "petqlora.evaluation.evaluate"]
    assert list(container.env) == []  # no secret configured: no HF_TOKEN reference at all


def test_a_new_trainer_image_gets_its_own_job_and_the_old_one_is_left_as_it_was(api):
    old, new = make_backend(), make_backend(image=IMAGE.replace(":0.1.0", ":0.2.0"))
    old.run("petqlora.train.train_adapter", train_args(old), "run-1-train")
    new.run("petqlora.train.train_adapter", train_args(new), "run-2-train")
    (new_job,) = set(api.jobs) - {JOB}
    assert new_job.startswith("projects/my-proj/locations/us-central1/jobs/petqlora-train-adapter-")
    assert api.calls("PATCH") == [] and api.jobs[JOB].generation == 1  # the old job was never changed
    ran = {name.rsplit("/executions/", 1)[0]: api.execution(name).template.containers[0].image
           for name in api.executions}
    assert ran == {JOB: IMAGE, new_job: IMAGE.replace(":0.1.0", ":0.2.0")}


def test_keep_jobs_of_the_backend_parameter_bounds_the_old_jobs(api):
    make_backend(keep_jobs=1).run("petqlora.train.train_adapter", train_args(make_backend()), "run-1-train")
    newer = make_backend(image=IMAGE.replace(":0.1.0", ":0.2.0"), keep_jobs=1)
    newer.run("petqlora.train.train_adapter", train_args(newer), "run-2-train")
    assert [r.path for r in api.calls("DELETE")] == [f"/v2/{JOB}"]
    assert list(api.jobs) == [newer.job_config("petqlora.train.train_adapter").job_path]
    with pytest.raises(ValueError, match=r"keep_jobs=0: must be None \(keep every job\) or an integer in 1\.\.100"):
        make_backend(keep_jobs=0).job_config("petqlora.train.train_adapter")


def test_a_failed_execution_raises_naming_it(api):
    backend = make_backend()
    api.plan_next_execution("fail", polls=1)
    with pytest.raises(CloudRunExecutionError) as info:
        backend.run("petqlora.train.train_adapter", train_args(backend), "run-2-train")
    name = f"{JOB}/executions/{JOB_ID}-00001"
    assert list(api.executions) == [name]
    log_uri = api.execution(name).log_uri  # the fake's console link, as the real API gives one
    assert str(info.value) == (
        f"Cloud Run execution {name} failed: Completed: NON_ZERO_EXIT_CODE Task {JOB_ID}-00001-task0 "
        "failed with message: The container exited with an exit code of 1.; tasks: 0 succeeded, 1 failed, "
        f"0 cancelled, 1 retried. Logs: {log_uri}")
    assert log_uri.startswith("https://console.cloud.google.com/logs/viewer?project=my-proj&")
    assert info.value.execution.name == name
    assert api.cancelled == []  # a failure ends the execution by itself; nothing to cancel


# ---- SIGTERM --------------------------------------------------------------------------------------------

def test_sigterm_during_the_wait_cancels_the_execution_and_propagates(api):
    backend = make_backend()
    # Succeeds on the 2nd poll, i.e. after the launcher's first 5 s sleep: should the SIGTERM not interrupt
    # the wait, run returns normally (and the test fails) instead of hanging on a never-ending execution.
    api.plan_next_execution("succeed", polls=2)

    def terminate_once_polled():
        # Signal only once the launcher is inside wait() (the fake has seen a poll): a SIGTERM before the
        # execution exists would have nothing to cancel.
        deadline = time.monotonic() + 10
        while not api.calls("GET", EXECUTIONS) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)  # what Vertex sends the step's pod on a pipeline cancel

    # A harmless handler of our own: should Backend.run not install its own, the SIGTERM lands here instead
    # of killing pytest, the run completes on its 2nd poll, and the test fails with a readable message.
    ignored = []

    def ignore(signum, frame):
        ignored.append(signum)

    previous = signal.signal(signal.SIGTERM, ignore)
    timer = threading.Thread(target=terminate_once_polled, daemon=True)
    started = time.monotonic()
    try:
        timer.start()
        with pytest.raises(SystemExit) as info:
            backend.run("petqlora.train.train_adapter", train_args(backend), "run-3-train")
        timer.join()
        ours = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert ignored == []  # Backend.run's handler, not ours, got the signal
    assert info.value.code == 128 + signal.SIGTERM
    assert time.monotonic() - started < 4  # the 5 s poll sleep was cut short
    (name,) = api.executions
    assert api.cancelled == [name]
    assert [r.path for r in api.calls("POST", r":cancel$")] == [f"/v2/{name}:cancel"]
    assert execution_state(api.execution(name)) == ExecutionState.CANCELLED
    assert ours is ignore  # Backend.run put the previous handler back


# ---- re-running a task ----------------------------------------------------------------------------------

def test_rerun_reattaches_to_the_running_execution_then_reuses_the_succeeded_one(api, capsys):
    backend = make_backend()
    api.plan_next_execution("succeed", polls=1)
    # The first attempt starts the execution, then loses the API (a non-transient 403 while polling). That
    # propagates without a cancel, so the execution keeps running, as when a step's pod dies mid-wait.
    api.inject_errors(403, count=1, method="GET", path=EXECUTIONS)
    with pytest.raises(core_exceptions.Forbidden):
        backend.run("petqlora.train.train_adapter", train_args(backend), "run-4-train")
    (name,) = api.executions
    assert api.cancelled == []
    assert execution_state(api.execution(name)) == ExecutionState.RUNNING  # api.execution() is no poll
    capsys.readouterr()

    # The retried step (same task_id) waits on that execution instead of starting a second one.
    make_backend().run("petqlora.train.train_adapter", train_args(backend), "run-4-train")
    assert list(api.executions) == [name]
    assert len(api.calls("POST", r":run$")) == 1
    assert [r.status for r in api.calls("GET", EXECUTIONS)] == [403, 200]
    assert execution_state(api.execution(name)) == ExecutionState.SUCCEEDED
    assert f"task run-4-train is already running as {name}; waiting on it" in capsys.readouterr().out

    # Once succeeded, the same task is not run again, nor polled: the listed execution says it all.
    make_backend().run("petqlora.train.train_adapter", train_args(backend), "run-4-train")
    assert len(api.calls("POST", r":run$")) == 1 and len(api.calls("GET", EXECUTIONS)) == 2
    assert f"task run-4-train already succeeded as {name}; not starting another" in capsys.readouterr().out

    # The job was created once and, its spec unchanged, never updated by the re-runs.
    assert len(api.calls("POST", r"/jobs$")) == 1 and api.calls("PATCH") == []

    # Another task_id is another execution.
    make_backend().run("petqlora.train.train_adapter", train_args(backend), "run-5-train")
    assert list(api.executions) == [name, f"{JOB}/executions/{JOB_ID}-00002"]
