"""One run, one job spec: jobs named after their spec, each execution checked to run its own image, old jobs
pruned, and the retry rules (409 on update, 5xx on reads), all through the real run_v2 REST clients against
the local fake of the Cloud Run Admin API (tests/fakes/cloud_run_api.py)."""

from __future__ import annotations

import threading

import pytest
from google.api_core import exceptions as core_exceptions
from google.cloud import run_v2

from fakes.cloud_run_api import FakeCloudRunApi
from petqlora.cloud.cloud_run import CloudRunImageMismatchError, ExecutionState, execution_state
from petqlora.cloud.cloud_run_jobs import CloudRunJobError
from petqlora.cloud.cloud_run_retry import MAX_UPDATE_ATTEMPTS
from petqlora.cloud.cloud_run_spec import JOB_PREFIX_LABEL, build_job, build_run_request
from test_cloud_run import IMAGE, Recorder, make_cfg, make_launcher

EXECUTION = r"/executions/[^/:]+$"  # GET of one execution (a poll), not the list, not :cancel


def image(version: str) -> str:
    return IMAGE.replace(":0.1.0", f":{version}")


@pytest.fixture
def api():
    with FakeCloudRunApi() as fake:
        yield fake


def edit_job(api: FakeCloudRunApi, path: str, new_image: str) -> None:
    """Another writer (a person with gcloud, a stray script) changes the job's image through the API."""
    client = api.jobs_client()
    job = client.get_job(name=path)
    job.template.template.containers[0].image = new_image
    client.update_job(job=job).result(timeout=5)


def recorded_image(api: FakeCloudRunApi, execution_name: str) -> str:
    """The image in the template the fake recorded when the execution started (what Cloud Run ran)."""
    (container,) = api.execution(execution_name).template.containers
    return container.image


# ---- two runs, two images ------------------------------------------------------------------------------

def test_two_concurrent_runs_with_different_images_each_run_their_own(api):
    cfgs = {"run-a-train": make_cfg(image=image("0.2.0")), "run-b-train": make_cfg(image=image("0.3.0"))}
    for _ in cfgs:
        api.plan_next_execution("succeed", polls=3)
    # Both jobs are made ready before either run starts: with one shared job updated in place, this is the
    # interleaving that had run A start an execution of B's image and report SUCCEEDED.
    barrier = threading.Barrier(len(cfgs))
    results: dict[str, run_v2.Execution] = {}
    errors: list[BaseException] = []

    def run(task_id: str) -> None:
        try:
            launcher = make_launcher(api, cfgs[task_id])
            launcher.ensure_job()
            barrier.wait(timeout=10)
            results[task_id] = launcher.run(["--epochs", "1"], task_id=task_id)
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(task_id,)) for task_id in cfgs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert sorted(api.jobs) == sorted(cfg.job_path for cfg in cfgs.values())  # one job per spec
    assert api.calls("PATCH") == []  # neither run changed a job
    for task_id, cfg in cfgs.items():
        execution = results[task_id]
        assert execution_state(execution) == ExecutionState.SUCCEEDED
        assert execution.name.startswith(f"{cfg.job_path}/executions/")
        assert recorded_image(api, execution.name) == cfg.image  # what ran is what this run asked for
    assert len(api.executions) == 2 and api.cancelled == []


def test_an_execution_running_another_image_is_refused_and_cancelled_and_a_retry_runs_the_right_one(api):
    cfg = make_cfg(image=image("0.2.0"))
    launcher = make_launcher(api, cfg)
    launcher.ensure_job()
    # Between ensure_job and run_job someone edits the job (by hand): run_job runs what the job holds now.
    edit_job(api, cfg.job_path, image("0.3.0"))
    api.plan_next_execution("succeed", polls=2)  # would report SUCCEEDED on the 2nd poll if let run
    with pytest.raises(CloudRunImageMismatchError) as info:
        launcher.run([], task_id="run-1-train")
    (name,) = api.executions
    assert recorded_image(api, name) == image("0.3.0")
    message = str(info.value)
    assert name in message and repr(image("0.2.0")) in message and image("0.3.0") in message
    assert cfg.job_path in message and "Re-run the step" in message
    assert api.cancelled == [name] and execution_state(api.execution(name)) == ExecutionState.CANCELLED
    assert len(api.calls("GET", EXECUTION)) == 1  # refused on the first look, not after the run

    # The retried step (same launcher, same task id) puts the job back to its spec and runs the right image.
    execution = launcher.run([], task_id="run-1-train")
    assert execution_state(execution) == ExecutionState.SUCCEEDED and execution.name != name
    assert recorded_image(api, execution.name) == image("0.2.0")
    assert api.jobs[cfg.job_path].template.template.containers[0].image == image("0.2.0")


def test_an_execution_of_another_image_is_never_reused_for_the_task(api):
    cfg = make_cfg()
    make_launcher(api, cfg).run([], task_id="run-2-train")  # succeeded, right image
    edit_job(api, cfg.job_path, image("0.9.0"))
    api.plan_next_execution("succeed", polls=2)
    # A stray execution of the same task id with another image (started by hand on the edited job).
    stray = api.jobs_client().run_job(request=build_run_request(cfg, [], "run-3-train")).metadata.name
    rec = Recorder()
    execution = make_launcher(api, cfg, rec=rec).run([], task_id="run-3-train")
    assert execution.name != stray and recorded_image(api, execution.name) == IMAGE
    assert api.cancelled == [stray]  # it ran a trainer nobody asked for: stopped, not waited on
    assert "not reusing it for task run-3-train" in rec.text


# ---- retries -------------------------------------------------------------------------------------------

def test_a_single_500_and_a_burst_of_503s_while_polling_are_survived(api):
    api.plan_next_execution("succeed", polls=3)
    api.inject_errors(500, count=1, method="GET", path=EXECUTION)
    execution = make_launcher(api).run([], task_id="run-4-train")
    assert execution_state(execution) == ExecutionState.SUCCEEDED
    statuses = [c.status for c in api.calls("GET", EXECUTION)]
    assert statuses == [500, 200, 200, 200]

    api.plan_next_execution("succeed", polls=2)
    api.inject_errors(503, count=6, method="GET", path=EXECUTION)
    api.inject_errors(502, count=1, method="GET", path=r"/executions$")  # an HTML error page from the front end
    rec = Recorder()
    execution = make_launcher(api, rec=rec).run([], task_id="run-5-train")
    assert execution_state(execution) == ExecutionState.SUCCEEDED
    polls = [c.status for c in api.calls("GET", EXECUTION)][4:]
    assert polls == [503] * 6 + [200, 200]
    assert api.cancelled == [] and len(api.calls("POST", r":run$")) == 2
    assert "transient API error, retrying" in rec.text


def test_errors_past_the_read_deadline_fail_without_cancelling(api):
    api.plan_next_execution("succeed", polls=1)
    api.inject_errors(503, count=10_000, method="GET", path=EXECUTION)
    with pytest.raises(core_exceptions.RetryError):
        make_launcher(api, retry_timeout_s=0.05).run([], task_id="run-6-train")
    # Left running: a retried step re-attaches to it (tests/test_backends_cloud_run.py shows that).
    assert api.cancelled == [] and len(api.executions) == 1


def test_a_stale_etag_on_update_is_reread_and_retried(api):
    cfg = make_cfg()
    make_launcher(api, cfg).ensure_job()
    edit_job(api, cfg.job_path, image("0.5.0"))  # drifted: the launcher will put it back
    # Between the launcher's read and its update, another writer changes the job again: its etag is stale.
    api.on_request(lambda: edit_job(api, cfg.job_path, image("0.6.0")), method="PATCH")
    rec = Recorder()
    job = make_launcher(api, cfg, rec=rec).ensure_job()
    assert [c.status for c in api.calls("PATCH")] == [200, 200, 409, 200]  # drift, other writer, ours x2
    assert job.template.template.containers[0].image == IMAGE == \
        api.jobs[cfg.job_path].template.template.containers[0].image
    assert "not applied" in rec.text and "re-reading it" in rec.text


def test_a_job_that_keeps_changing_is_reported_after_bounded_attempts(api):
    cfg = make_cfg()
    make_launcher(api, cfg).ensure_job()
    edit_job(api, cfg.job_path, image("0.5.0"))
    api.inject_errors(409, count=10_000, method="PATCH", status_name="ABORTED")
    with pytest.raises(CloudRunJobError, match=rf"{cfg.job_path} could not be put back.*{MAX_UPDATE_ATTEMPTS} "
                                               r"attempts.*Cloud Audit Logs"):
        make_launcher(api, cfg).ensure_job()
    assert len(api.calls("PATCH")) == 1 + MAX_UPDATE_ATTEMPTS


def test_a_concurrent_create_of_the_same_spec_is_read_not_repeated(api):
    cfg = make_cfg()
    # Two runs of one spec race to create its job: the other one's create lands first, ours answers 409.
    other = api.jobs_client()
    api.on_request(lambda: other.create_job(parent=cfg.parent, job=build_job(cfg), job_id=cfg.job_name).result(),
                   method="POST", path=r"/jobs$")
    job = make_launcher(api, cfg).ensure_job()
    assert job.name == cfg.job_path
    assert [c.status for c in api.calls("POST", r"/jobs$")] == [200, 409]
    assert api.calls("PATCH") == []


def test_run_job_on_a_job_deleted_meanwhile_creates_it_again(api):
    cfg = make_cfg()
    launcher = make_launcher(api, cfg)
    launcher.ensure_job()
    api.jobs_client().delete_job(name=cfg.job_path).result(timeout=5)  # pruned by another run, say
    execution = launcher.run([], task_id="run-7-train")
    assert execution_state(execution) == ExecutionState.SUCCEEDED
    assert [c.status for c in api.calls("POST", r":run$")] == [404, 200]
    assert len(api.calls("POST", r"/jobs$")) == 2


# ---- retention -----------------------------------------------------------------------------------------

def test_old_jobs_beyond_keep_jobs_are_pruned_but_never_a_running_one(api):
    cfgs = {v: make_cfg(image=image(v), keep_jobs=2) for v in ("1.0.0", "2.0.0", "3.0.0", "4.0.0")}
    # Not ours to prune: another prefix's job, and a job named like ours that the launcher did not make.
    make_launcher(api, make_cfg(job_prefix="petqlora-evaluate")).ensure_job()
    hand_made = run_v2.Job(build_job(cfgs["1.0.0"]))
    del hand_made.labels[JOB_PREFIX_LABEL]
    api.jobs_client().create_job(parent=cfgs["1.0.0"].parent, job=hand_made, job_id="petqlora-train-deadbeef")
    api.plan_next_execution("slow")
    slow = make_launcher(api, cfgs["1.0.0"])
    slow.ensure_job()
    running = api.jobs_client().run_job(request=build_run_request(cfgs["1.0.0"], [], "run-1")).metadata.name

    make_launcher(api, cfgs["2.0.0"]).run([], task_id="run-2")
    make_launcher(api, cfgs["3.0.0"]).run([], task_id="run-3")
    make_launcher(api, cfgs["2.0.0"]).run([], task_id="run-2b")  # 2.0.0 is used again, after 3.0.0
    assert api.calls("DELETE") == []  # 3 of ours so far, one running: nothing beyond keep_jobs to delete
    rec = Recorder()
    make_launcher(api, cfgs["4.0.0"], rec=rec).run([], task_id="run-4")

    # Kept: this run's job and the most recently used other (2.0.0, created before 3.0.0 but used after),
    # the running one, and what is not ours. Deleted: 3.0.0, with its executions.
    ours = {v: c.job_path for v, c in cfgs.items()}
    assert [c.path for c in api.calls("DELETE")] == [f"/v2/{ours['3.0.0']}"]
    assert api.calls("DELETE")[0].query["etag"] == ['"gen-1"']  # deleted only as it was listed
    assert set(api.jobs) == {ours["1.0.0"], ours["2.0.0"], ours["4.0.0"],
                             make_cfg(job_prefix="petqlora-evaluate").job_path,
                             f"{cfgs['1.0.0'].parent}/jobs/petqlora-train-deadbeef"}
    assert not any(n.startswith(ours["3.0.0"] + "/") for n in api.executions)
    assert execution_state(api.execution(running)) == ExecutionState.RUNNING
    assert f"keeping old job {ours['1.0.0']}: its execution {running} has not finished" in rec.text

    # Once that execution has ended, the next successful run prunes its job too.
    slow.cancel(running)
    make_launcher(api, cfgs["4.0.0"]).run([], task_id="run-4b")
    assert [c.path for c in api.calls("DELETE")][1:] == [f"/v2/{ours['1.0.0']}"]
    assert ours["2.0.0"] in api.jobs and ours["4.0.0"] in api.jobs


def test_pruning_is_best_effort_and_can_be_turned_off(api):
    for v in ("1.0.0", "2.0.0"):
        make_launcher(api, make_cfg(image=image(v), keep_jobs=1)).run([], task_id=f"run-{v}")
    assert len(api.calls("DELETE")) == 1 and len(api.jobs) == 1
    # A missing run.jobs.delete permission does not fail a run that succeeded; the log names the fix.
    api.inject_errors(403, count=1, method="DELETE")
    rec = Recorder()
    execution = make_launcher(api, make_cfg(image=image("3.0.0"), keep_jobs=1), rec=rec).run([], task_id="run-3")
    assert execution_state(execution) == ExecutionState.SUCCEEDED
    assert "could not prune old 'petqlora-train' jobs" in rec.text and "run.jobs.delete" in rec.text
    assert len(api.jobs) == 2
    # keep_jobs=None: no listing, no deleting.
    before = len(api.requests)
    make_launcher(api, make_cfg(image=image("4.0.0"), keep_jobs=None)).run([], task_id="run-4")
    assert not [r for r in api.requests[before:] if r.method == "DELETE" or r.path.endswith("/jobs")
                and r.method == "GET"]
    assert len(api.jobs) == 3


@pytest.mark.parametrize("asked, recorded, same", [
    ("r-docker.pkg.dev/p/petqlora/trainer:0.3.0", "r-docker.pkg.dev/p/petqlora/trainer:0.3.0", True),
    ("r-docker.pkg.dev/p/petqlora/trainer:0.3.0", "r-docker.pkg.dev/p/petqlora/trainer@sha256:" + "a" * 64, True),
    ("r-docker.pkg.dev/p/petqlora/trainer:0.3.0", "r-docker.pkg.dev/p/petqlora/trainer:0.2.0", False),
    ("r-docker.pkg.dev/p/petqlora/trainer:0.3.0", "r-docker.pkg.dev/p/other/trainer@sha256:" + "a" * 64, False),
    ("localhost:5000/trainer:1", "localhost:5000/trainer@sha256:" + "b" * 64, True),
    ("r/trainer@sha256:" + "a" * 64, "r/trainer@sha256:" + "a" * 64, True),
    ("r/trainer@sha256:" + "a" * 64, "r/trainer@sha256:" + "c" * 64, False),
])
def test_an_execution_may_record_the_tag_it_ran_as_its_digest(asked, recorded, same):
    from petqlora.cloud.cloud_run_state import same_image

    assert same_image(asked, recorded) is same
