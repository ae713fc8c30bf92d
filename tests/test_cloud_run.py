"""The Cloud Run Job: pure builders (cloud_run_spec) against literals, and the real run_v2 REST clients against a
local fake of the Cloud Run Admin API (tests/fakes/cloud_run_api.py)."""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import pytest
from google.api import launch_stage_pb2
from google.api_core import exceptions as core_exceptions
from google.api_core.future import polling
from google.cloud import run_v2

from fakes.cloud_run_api import FakeCloudRunApi
from petqlora.cloud.cloud_run import (
    CloudRunExecutionError,
    CloudRunLauncher,
    CloudRunTimeoutError,
    ExecutionState,
    cancel_on_sigterm,
    execution_state,
)
from petqlora.cloud.cloud_run_spec import (
    TASK_ID_ENV,
    CloudRunJobConfig,
    build_job,
    build_run_request,
    gcs_to_mount,
    parse_secret_ref,
    spec_hash,
)

IMAGE = "us-central1-docker.pkg.dev/my-proj/petqlora/trainer:0.1.0"


def make_cfg(**overrides) -> CloudRunJobConfig:
    values = dict(
        project="my-proj", region="us-central1", job_prefix="petqlora-train", image=IMAGE,
        module="petqlora.train.train_adapter", service_account="petqlora-job@my-proj.iam.gserviceaccount.com",
        bucket="my-proj-petqlora", hf_token_secret="hf-token", labels={"app": "petqlora"},
    )
    values.update(overrides)
    return CloudRunJobConfig(**values)


JOB = make_cfg().job_path  # test_job_name_is_the_prefix_and_the_spec_hash pins it


def compact(message) -> dict:
    return type(message).to_dict(message, always_print_fields_with_no_presence=False)


# ---- pure builders --------------------------------------------------------------------------------------

def test_build_job_matches_literal():
    assert compact(build_job(make_cfg())) == {
        "labels": {"app": "petqlora", "petqlora-job-prefix": "petqlora-train"},
        "template": {
            "labels": {"app": "petqlora"},
            "task_count": 1,
            "template": {
                "containers": [{
                    "image": IMAGE,
                    "command": ["python", "-m", "petqlora.train.train_adapter"],
                    "env": [{"name": "HF_TOKEN", "value_source": {
                        "secret_key_ref": {"secret": "hf-token", "version": "latest"}}}],
                    "resources": {"limits": {"cpu": "20", "memory": "80Gi", "nvidia.com/gpu": "1"}},
                    "volume_mounts": [{"name": "gcs", "mount_path": "/gcs"}],
                }],
                "volumes": [{"name": "gcs", "gcs": {"bucket": "my-proj-petqlora"}}],
                "max_retries": 3,
                "timeout": "86400s",
                "service_account": "petqlora-job@my-proj.iam.gserviceaccount.com",
                "node_selector": {"accelerator": "nvidia-rtx-pro-6000"},
                "gpu_zonal_redundancy_disabled": True,
            },
        },
    }


def test_build_job_without_secret_and_with_zero_retries():
    task = build_job(make_cfg(hf_token_secret=None, max_retries=0, labels={})).template.template
    assert list(task.containers[0].env) == []
    # max_retries is a oneof: 0 must be sent, or the API would apply its default of 3.
    assert compact(task)["max_retries"] == 0


def test_build_job_opts_in_to_preview_features():
    job = build_job(make_cfg(launch_stage="BETA", task_timeout_s=72 * 3600))
    assert compact(job)["launch_stage"] == launch_stage_pb2.LaunchStage.BETA
    assert "launch_stage" not in compact(build_job(make_cfg()))  # GA unless asked


@pytest.mark.parametrize("ref, expected", [
    ("hf-token", ("hf-token", "latest")),
    ("hf-token:3", ("hf-token", "3")),
    ("projects/other-proj/secrets/hf-token", ("projects/other-proj/secrets/hf-token", "latest")),
    ("projects/other-proj/secrets/hf-token/versions/2", ("projects/other-proj/secrets/hf-token", "2")),
])
def test_secret_refs(ref, expected):
    assert parse_secret_ref(ref) == expected
    env = build_job(make_cfg(hf_token_secret=ref)).template.template.containers[0].env[0]
    assert (env.value_source.secret_key_ref.secret, env.value_source.secret_key_ref.version) == expected


def test_build_run_request_matches_literal():
    request = build_run_request(make_cfg(), ["--config", "/gcs/configs/train.json"], "run-42-train")
    assert compact(request) == {
        "name": JOB,
        "overrides": {
            "container_overrides": [{
                "args": ["--config", "/gcs/configs/train.json"],
                "env": [{"name": "PETQLORA_TASK_ID", "value": "run-42-train"}],
            }],
            "task_count": 1,
        },
    }


def test_build_run_request_with_no_args_clears_the_jobs_args():
    override = build_run_request(make_cfg(), [], "t").overrides.container_overrides[0]
    assert override.clear_args is True


@pytest.mark.parametrize("args, task_id, needle", [
    ("--flag", "t", "args="),
    (["--n", 3], "t", "args="),
    ([], "", "task_id="),
    ([], "has space", "task_id="),
])
def test_build_run_request_rejects_bad_inputs(args, task_id, needle):
    with pytest.raises(ValueError, match=needle):
        build_run_request(make_cfg(), args, task_id)


def test_gcs_to_mount():
    cfg = make_cfg()
    assert gcs_to_mount("gs://my-proj-petqlora/data/splits", cfg) == "/gcs/data/splits"
    assert gcs_to_mount("gs://my-proj-petqlora/", cfg) == "/gcs"
    assert gcs_to_mount("gs://my-proj-petqlora/x", make_cfg(mount_path="/mnt/b")) == "/mnt/b/x"
    with pytest.raises(ValueError, match=r"bucket 'other'.*mounts only gs://my-proj-petqlora"):
        gcs_to_mount("gs://other/data", cfg)
    with pytest.raises(ValueError, match="must be a gs:// URI"):
        gcs_to_mount("/local/data", cfg)


# ---- validation -----------------------------------------------------------------------------------------

def test_config_reports_all_problems_at_once():
    with pytest.raises(ValueError) as info:
        make_cfg(project="P", region="us", job_prefix="Bad_", image="trainer:latest", module="1x",
                 service_account="me", bucket="gs://b", cpu="8", memory="32Gi", max_retries=11,
                 task_timeout_s=0, hf_token_secret="a b", labels={"A": "b"}, mount_path="gcs/")
    message = str(info.value)
    for name in ["project=", "region=", "job_prefix=", "image=", "module=", "service_account=", "bucket=",
                 "cpu=", "memory=", "max_retries=", "task_timeout_s=", "hf_token_secret=", "label key",
                 "mount_path="]:
        assert name in message, name
    assert message.count("\n  - ") == 14


@pytest.mark.parametrize("field_, value, needle", [
    ("image", "us-docker.pkg.dev/p/r/trainer", "has no tag"),
    ("image", "localhost:5000/trainer", "has no tag"),  # a registry port is not a tag
    ("image", "us-docker.pkg.dev/p/r/trainer:latest", "':latest'"),
    ("image", "trainer@sha256:abc", "malformed digest"),
    ("cpu", "8", "below the 20 vCPU"),
    ("cpu", "lots", "number of vCPU"),
    ("cpu", 20, "non-empty string"),
    ("memory", "64Gi", "below the 80 GiB"),
    ("memory", "79.5Gi", "below the 80 GiB"),
    ("max_retries", -1, "0..10"),
    ("max_retries", 11, "0..10"),
    ("max_retries", True, "0..10"),
    ("task_timeout_s", 169 * 3600, "168 h"),
    ("gpu_type", "nvidia-h100", "is not one of"),
    ("hf_token_secret", "projects/p/secrets/", "Secret Manager reference"),
    ("launch_stage", "PREVIEW", "'BETA'"),
])
def test_config_rejects(field_, value, needle):
    with pytest.raises(ValueError, match=needle) as info:
        make_cfg(**{field_: value})
    assert f"{field_}=" in str(info.value)


@pytest.mark.parametrize("overrides", [
    {"image": "trainer@sha256:" + "0" * 64},
    {"image": "localhost:5000/trainer:0.1.0"},
    {"cpu": "20000m", "memory": "96Gi"},
    {"memory": str(80 * 2**30)},
    {"gpu_type": "nvidia-l4", "cpu": "4", "memory": "16Gi"},
    {"max_retries": 0, "task_timeout_s": 168 * 3600},
])
def test_config_accepts(overrides):
    make_cfg(**overrides)


def test_launcher_rejects_bad_polling():
    with pytest.raises(ValueError, match=r"poll_max_s=1.*>= poll_initial_s=5"):
        CloudRunLauncher(make_cfg(), poll_initial_s=5, poll_max_s=1)
    with pytest.raises(ValueError, match="timeout_s=-1"):
        CloudRunLauncher(make_cfg(), timeout_s=-1)


def test_execution_state_falls_back_to_counts():
    ts = {"seconds": 1}
    assert execution_state(run_v2.Execution(running_count=1)) == ExecutionState.RUNNING
    assert execution_state(run_v2.Execution()) == ExecutionState.PENDING
    done = run_v2.Execution(task_count=1, succeeded_count=1, completion_time=ts)
    assert execution_state(done) == ExecutionState.SUCCEEDED
    assert execution_state(run_v2.Execution(task_count=1, failed_count=1, completion_time=ts)) == \
        ExecutionState.FAILED


# ---- end to end against the fake ------------------------------------------------------------------------

@pytest.fixture
def api():
    with FakeCloudRunApi() as fake:
        yield fake


class Recorder:
    """Collects log lines and the launcher's sleeps; can raise on the n-th sleep."""

    def __init__(self, raise_on_sleep: int | None = None, exc: BaseException | None = None):
        self.lines: list[str] = []
        self.sleeps: list[float] = []
        self.raise_on_sleep, self.exc = raise_on_sleep, exc

    def log(self, line: str) -> None:
        self.lines.append(line)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.raise_on_sleep is not None and len(self.sleeps) >= self.raise_on_sleep:
            raise self.exc

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def make_launcher(api: FakeCloudRunApi, cfg: CloudRunJobConfig | None = None, rec: Recorder | None = None,
                  **kwargs) -> CloudRunLauncher:
    rec = rec or Recorder()
    kwargs = {"poll_initial_s": 0.001, "poll_max_s": 0.004, "retry_initial_s": 0.001, "retry_max_s": 0.004,
              "log": rec.log, "sleep": rec.sleep, **kwargs}
    return CloudRunLauncher(cfg or make_cfg(), jobs_client=api.jobs_client(),
                            executions_client=api.executions_client(), **kwargs)


def test_ensure_job_creates_once_per_spec_and_never_updates_another_specs_job(api):
    job = make_launcher(api).ensure_job()
    assert job.name == JOB
    (created,) = api.calls("POST", r"/jobs$")
    assert created.query["jobId"] == [JOB.rsplit("/", 1)[1]]
    assert created.body["template"]["template"]["nodeSelector"] == {"accelerator": "nvidia-rtx-pro-6000"}

    make_launcher(api).ensure_job()  # same spec: found, left alone
    assert len(api.calls("POST", r"/jobs$")) == 1
    assert api.calls("PATCH") == []

    # Another spec is another job, created beside the first; the first is not touched.
    newer = make_cfg(image=IMAGE.replace(":0.1.0", ":0.2.0"), max_retries=1)
    other = make_launcher(api, newer).ensure_job()
    assert other.name == newer.job_path != JOB
    assert other.template.template.containers[0].image.endswith(":0.2.0")
    assert len(api.calls("POST", r"/jobs$")) == 2 and api.calls("PATCH") == []
    assert api.jobs[JOB].generation == 1 and api.jobs[JOB].template.template.containers[0].image == IMAGE
    assert api.jobs[JOB].template.template.max_retries == 3


def test_job_name_is_the_prefix_and_the_spec_hash():
    cfg = make_cfg()
    # Pinned: a change here renames every job (old ones are then pruned as the new ones are used).
    assert cfg.job_name == "petqlora-train-0277ecb1" and cfg.job_path.endswith("/jobs/petqlora-train-0277ecb1")
    assert spec_hash(cfg) == "0277ecb1"
    assert make_cfg(labels={"app": "petqlora"}).job_name == cfg.job_name  # a pure function of the spec
    # Everything build_job puts in the Job changes the name...
    changed = [
        {"image": IMAGE.replace(":0.1.0", ":0.2.0")}, {"module": "petqlora.evaluation.evaluate"},
        {"cpu": "24"}, {"memory": "96Gi"}, {"gpu_type": "nvidia-l4", "cpu": "4", "memory": "16Gi"},
        {"hf_token_secret": "hf-token:2"}, {"hf_token_secret": None}, {"bucket": "other-bucket"},
        {"mount_path": "/mnt/gcs"}, {"service_account": "other@my-proj.iam.gserviceaccount.com"},
        {"max_retries": 0}, {"task_timeout_s": 3600}, {"labels": {}}, {"launch_stage": "BETA"},
        {"job_prefix": "pets-train"},
    ]
    names = {make_cfg(**c).job_name for c in changed}
    assert len(names) == len(changed) and cfg.job_name not in names
    # ...and what is not in the Job does not: the retention setting; per-execution args are not in the config.
    assert make_cfg(keep_jobs=None).job_name == make_cfg(keep_jobs=2).job_name == cfg.job_name
    # The longest prefix still gives a valid Cloud Run job name (63 characters).
    assert len(make_cfg(job_prefix="p" * 54).job_name) == 63
    with pytest.raises(ValueError, match="job_prefix=.*at most 54 characters"):
        make_cfg(job_prefix="p" * 55)
    with pytest.raises(ValueError, match="label key='petqlora-job-prefix'.*set by the launcher"):
        make_cfg(labels={"petqlora-job-prefix": "x"})


def test_run_succeeds_and_the_execution_records_the_overrides(api):
    api.plan_next_execution("succeed", polls=3)
    rec = Recorder()
    execution = make_launcher(api, rec=rec).run(["--epochs", "3"], task_id="run-1-train")
    assert execution_state(execution) == ExecutionState.SUCCEEDED
    assert len(api.calls("POST", r":run$")) == 1
    container = api.execution(execution.name).template.containers[0]
    assert list(container.args) == ["--epochs", "3"]
    env = {e.name: e for e in container.env}
    assert env[TASK_ID_ENV].value == "run-1-train"
    assert env["HF_TOKEN"].value_source.secret_key_ref.secret == "hf-token"  # job env kept (merged)
    assert "RUNNING" in rec.text and "SUCCEEDED" in rec.text
    assert execution.log_uri and execution.log_uri in rec.text  # the log link is shown once, up front


def test_failed_execution_raises_with_name_reason_and_log_link(api):
    api.plan_next_execution("fail", polls=2)
    with pytest.raises(CloudRunExecutionError) as info:
        make_launcher(api).run([], task_id="run-2-train")
    (name,) = api.executions
    message = str(info.value)
    assert name in message
    assert "NON_ZERO_EXIT_CODE" in message and "exit code of 1" in message
    assert info.value.log_uri.startswith("https://console.cloud.google.com/logs/") and info.value.log_uri in message
    assert execution_state(info.value.execution) == ExecutionState.FAILED


def test_transient_503_and_429_are_retried(api):
    api.inject_errors(503, method="GET", path=rf"/jobs/{make_cfg().job_name}$")
    api.inject_errors(429, method="POST", path=r":run$")
    api.inject_errors(503, count=2, method="GET", path=r"/executions/[^/]+$")
    api.plan_next_execution("succeed", polls=1)
    rec = Recorder()
    execution = make_launcher(api, rec=rec).run(["--x"], task_id="run-3-train")
    assert execution_state(execution) == ExecutionState.SUCCEEDED
    assert [c.status for c in api.calls("POST", r":run$")] == [429, 200]
    assert len(api.executions) == 1  # the retried start did not start a second execution
    assert [c.status for c in api.calls("GET", r"/executions/[^/]+$")] == [503, 503, 200]
    assert "transient" in rec.text


def test_persistent_unavailability_gives_up(api):
    api.inject_errors(503, count=10_000, method="GET", path=rf"/jobs/{make_cfg().job_name}$")
    with pytest.raises(core_exceptions.RetryError):
        make_launcher(api, retry_timeout_s=0.05).ensure_job()


def test_a_succeeded_task_is_not_run_again(api):
    first = make_launcher(api).run(["--x"], task_id="run-4-train")
    rec = Recorder()
    again = make_launcher(api, rec=rec).run(["--x"], task_id="run-4-train")
    assert again.name == first.name
    assert len(api.calls("POST", r":run$")) == 1
    assert "already succeeded" in rec.text
    other = make_launcher(api).run(["--x"], task_id="run-5-train")
    assert other.name != first.name and len(api.calls("POST", r":run$")) == 2


def test_a_running_task_is_waited_on_not_started_twice(api):
    launcher = make_launcher(api)
    launcher.ensure_job()
    api.plan_next_execution("succeed", polls=3)
    started = api.jobs_client().run_job(request=build_run_request(make_cfg(), ["--x"], "run-6-train"))
    rec = Recorder()
    execution = make_launcher(api, rec=rec).run(["--x"], task_id="run-6-train")
    assert execution.name == started.metadata.name
    assert len(api.calls("POST", r":run$")) == 1
    assert "already running" in rec.text


def test_a_failed_task_gets_a_new_execution_on_retry(api):
    api.plan_next_execution("fail", polls=1)
    with pytest.raises(CloudRunExecutionError):
        make_launcher(api).run([], task_id="run-7-train")
    execution = make_launcher(api).run([], task_id="run-7-train")
    assert execution_state(execution) == ExecutionState.SUCCEEDED
    assert len(api.executions) == 2


def test_keyboard_interrupt_cancels_the_execution(api):
    api.plan_next_execution("slow")
    rec = Recorder(raise_on_sleep=2, exc=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        make_launcher(api, rec=rec).run([], task_id="run-8-train")
    (name,) = api.executions
    assert api.cancelled == [name]
    assert execution_state(api.execution(name)) == ExecutionState.CANCELLED


def test_sigterm_cancels_the_execution(api):
    api.plan_next_execution("slow")
    rec = Recorder()

    def sleep(seconds):
        rec.sleep(seconds)
        os.kill(os.getpid(), signal.SIGTERM)  # what Vertex sends when the pipeline is cancelled

    previous = signal.getsignal(signal.SIGTERM)
    launcher = make_launcher(api, rec=rec, sleep=sleep)
    with pytest.raises(SystemExit) as info, cancel_on_sigterm():
        launcher.run([], task_id="run-9-train")
    assert info.value.code == 128 + signal.SIGTERM
    assert api.cancelled == list(api.executions)
    assert signal.getsignal(signal.SIGTERM) is previous  # the previous handler is restored


def test_timeout_cancels_the_execution(api):
    api.plan_next_execution("slow")
    launcher = make_launcher(api, timeout_s=0.05, sleep=time.sleep)  # real time: the deadline must pass
    with pytest.raises(CloudRunTimeoutError, match="timeout_s=0.05") as info:
        launcher.run([], task_id="run-10-train")
    assert isinstance(info.value, TimeoutError)
    assert api.cancelled == list(api.executions)


def test_polling_backs_off_exponentially_up_to_poll_max_s(api):
    api.plan_next_execution("succeed", polls=7)
    rec = Recorder()
    make_launcher(api, rec=rec, poll_initial_s=0.001, poll_max_s=0.004).run([], task_id="run-11-train")
    assert rec.sleeps == pytest.approx([0.001, 0.002, 0.004, 0.004, 0.004, 0.004])
    assert len(api.calls("GET", r"/executions/[^/]+$")) == 7
    # The state is logged when it changes, not on every poll.
    assert sum("RUNNING" in line for line in rec.lines) == 1


def test_operation_done_at_once_and_polled_operations():
    with FakeCloudRunApi(operation_done_immediately=True) as fake:
        fake.plan_next_execution("succeed", polls=0)
        execution = make_launcher(fake).run([], task_id="run-12-train")
        assert execution_state(execution) == ExecutionState.SUCCEEDED
    with FakeCloudRunApi() as fake:
        make_launcher(fake).ensure_job()
        fake.plan_next_execution("succeed", polls=1)
        op = fake.jobs_client().run_job(request=build_run_request(make_cfg(), [], "t"))
        assert not op.done()  # GET operations/...: still running
        fake.executions_client().get_execution(name=op.metadata.name)  # the fake's one poll
        result = op.result(timeout=5, polling=polling.DEFAULT_POLLING.with_delay(initial=0.001))
        assert result.name == op.metadata.name and result.succeeded_count == 1


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        make_cfg().image = "x"  # type: ignore[misc]


def test_poll_pace_doubles_to_its_cap_and_cuts_the_last_delay_at_the_deadline(monkeypatch):
    from petqlora.cloud import cloud_run_retry

    now = [100.0]
    monkeypatch.setattr(cloud_run_retry.time, "monotonic", lambda: now[0])
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    pace = cloud_run_retry.PollPace(1.0, 4.0, 10.0, sleep)
    while not pace.expired():
        pace.pause()
    assert sleeps == [1.0, 2.0, 4.0, 3.0]  # 1 + 2 + 4 = 7 s; the deadline is 3 s away, not 4
    unbounded = cloud_run_retry.PollPace(1.0, 4.0, None, sleep)
    sleeps.clear()
    for _ in range(4):
        assert not unbounded.expired()
        unbounded.pause()
    assert sleeps == [1.0, 2.0, 4.0, 4.0]
