"""Backend.run_many: independent GPU entrypoints at once (evaluation's models), through the local backend's real
subprocesses (and once through the Cloud Run launcher and its fake). The runs rendezvous (each waits until all
have started): run one after another, they would time out, so a pass means they overlapped. A failure names its
run and stops the others; SIGTERM stops them all."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time

import pytest

from petqlora.backends import Backend, GpuRunsError

MEET = textwrap.dedent("""
    import os, sys, time
    folder, n, name, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if mode == "fail":
        print("the model did not load", flush=True)
        sys.exit(1)
    if mode == "hang":
        open(os.path.join(folder, name), "w").close()
        time.sleep(120)
    open(os.path.join(folder, name), "w").close()
    deadline = time.monotonic() + 20
    while len(os.listdir(folder)) < n:
        if time.monotonic() > deadline:
            print("alone: the others never started", flush=True)
            sys.exit(3)
        time.sleep(0.05)
    print("met", len(os.listdir(folder)), flush=True)
""")


@pytest.fixture
def meet(tmp_path, monkeypatch):
    """`meet(name, mode, n)`: the run arguments of the rendezvous module (mode: meet, fail or hang)."""
    (tmp_path / "meet_step.py").write_text(MEET)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    folder = tmp_path / "met"
    folder.mkdir()

    def run(name: str, mode: str = "meet", n: int = 3):
        return ("meet_step", [str(folder), str(n), name, mode], f"run-1-evaluate-{name}")

    run.folder = folder
    return run


def test_the_runs_overlap_and_their_lines_carry_their_name(meet, caplog):
    caplog.set_level("INFO", logger="petqlora.backends")
    started = time.monotonic()
    Backend().run_many({name: meet(name) for name in ("finetuned", "gemma4_baseline", "gemma3_baseline")})
    assert time.monotonic() - started < 20  # none waited out its rendezvous deadline
    assert sorted(os.listdir(meet.folder)) == ["finetuned", "gemma3_baseline", "gemma4_baseline"]
    assert sorted(m for m in caplog.messages if m.endswith("met 3")) == [
        "[finetuned] met 3", "[gemma3_baseline] met 3", "[gemma4_baseline] met 3"]


def test_a_failure_names_its_run_and_stops_the_others(meet):
    started = time.monotonic()
    with pytest.raises(GpuRunsError) as info:
        Backend().run_many({"finetuned": meet("finetuned", "hang"), "gemma3_baseline": meet("gemma3_baseline", "fail")})
    assert time.monotonic() - started < 15  # the hanging run (120 s) was terminated, not waited out
    assert list(info.value.failures) == ["gemma3_baseline"]  # the stopped run is no failure of its own
    message = str(info.value)
    assert message.startswith("1 of 2 runs failed (gemma3_baseline); the others were stopped:\n"
                              "  - gemma3_baseline: `python -m meet_step` exited with code 1"), message
    assert "the model did not load" in message


def test_max_parallel_bounds_the_runs_at_once():
    active, peak, lock = [0], [0], threading.Lock()

    class Counting(Backend):
        def run(self, module, args, task_id, **_):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.2)
            with lock:
                active[0] -= 1

    Counting(max_parallel=2).run_many({f"m{i}": ("x", [], f"t{i}") for i in range(5)})
    assert peak[0] == 2
    with pytest.raises(ValueError, match="max_parallel=0 must be an integer >= 1"):
        Backend(max_parallel=0)


def test_sigterm_stops_every_run_and_exits_143(meet):
    def terminate_once_started():
        deadline = time.monotonic() + 15
        while len(os.listdir(meet.folder)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # what Vertex sends the step on a pipeline cancel

    def ours(*_):  # a SIGTERM that run_many did not catch lands here, not in pytest's default handler
        pass

    previous = signal.signal(signal.SIGTERM, ours)
    try:
        threading.Thread(target=terminate_once_started, daemon=True).start()
        started = time.monotonic()
        with pytest.raises(SystemExit) as info:
            Backend().run_many({"a": meet("a", "hang"), "b": meet("b", "hang")})
        assert info.value.code == 143
        assert time.monotonic() - started < 20  # both 120 s runs were terminated
        assert signal.getsignal(signal.SIGTERM) is ours  # run_many put the handler back
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_on_cloud_run_a_failed_execution_cancels_the_running_one(cloud_run_api):
    """The same through the Cloud Run launcher and the fake Cloud Run API: the running execution's 5 s poll sleep
    ends at once and its execution is cancelled. Which run's execution is created first is up to the threads."""
    cloud_run_api.plan_next_execution("fail", polls=1)
    cloud_run_api.plan_next_execution("slow")
    backend = Backend(kind="cloud_run", project="my-proj", region="us-central1", bucket="my-bucket",
                      image="us-central1-docker.pkg.dev/my-proj/petqlora/trainer:0.1.0",
                      service_account="petqlora-job@my-proj.iam.gserviceaccount.com")
    runs = {name: ("petqlora.evaluation.evaluate", ["--name", name], f"run-1-evaluate-{name}")
            for name in ("finetuned", "gemma3_baseline")}
    started = time.monotonic()
    with pytest.raises(GpuRunsError) as info:
        backend.run_many(runs)
    assert time.monotonic() - started < 4  # not a single 5 s poll sleep was waited out
    (failed,) = info.value.failures
    assert str(info.value).startswith(f"1 of 2 runs failed ({failed}); the others were stopped:\n  - {failed}: "
                                      "Cloud Run execution projects/my-proj/")
    assert len(cloud_run_api.executions) == 2 and len(cloud_run_api.cancelled) == 1
