"""Live training progress: the trainer writes OUTPUT/progress.json at every log step, and Backend.run (local
subprocess and Cloud Run Job) logs a line from it while the entrypoint runs, then stops."""

from __future__ import annotations

import functools
import json
import logging
import textwrap
import threading
import time
from pathlib import Path

import pytest

import petqlora
from petqlora import backends
from petqlora.backends import Backend
from petqlora.cloud.storage import local_path
from petqlora.train.config import TrainConfig
from petqlora.train.progress import (PROGRESS_FILE, ProgressWatcher, TrainProgress, format_progress, read_progress,
                                     write_progress)

FIELDS = {"step", "total_steps", "epoch", "total_epochs", "loss", "samples_per_s", "eta_s", "elapsed_s", "updated"}


def _progress(step: int, total: int = 3) -> TrainProgress:
    return TrainProgress(step=step, total_steps=total, epoch=step / total, total_epochs=1.0, loss=2.0 / step,
                         samples_per_s=8.0, eta_s=(total - step) * 1.0, elapsed_s=step * 1.0)


def test_progress_round_trips_and_reads_as_one_line(tmp_path):
    path = write_progress(tmp_path, TrainProgress(step=40, total_steps=144, epoch=0.8333, total_epochs=3.0,
                                                  loss=0.81234, samples_per_s=3.2, eta_s=312.0, elapsed_s=95.0))
    assert path == tmp_path / PROGRESS_FILE and not (tmp_path / "progress.json.tmp").exists()
    value = read_progress(path)
    assert set(value) == FIELDS and value["step"] == 40 and value["updated"].endswith("+00:00")
    assert format_progress(value) == ("step 40/144 (28%), epoch 0.83/3, loss 0.8123, 3.20 samples/s, "
                                      "ETA 5m 12s")
    assert format_progress({**value, "step": 144, "eta_s": 0.0}).endswith("(100%), epoch 0.83/3, loss 0.8123, "
                                                                            "3.20 samples/s, done")


def test_read_progress_is_none_until_a_whole_file_is_there(tmp_path):
    path = tmp_path / PROGRESS_FILE
    assert read_progress(path) is None  # not written yet
    path.write_text('{"step": 3, "total_st')  # half a file (a reader must never crash on one)
    assert read_progress(path) is None
    path.write_text(json.dumps({"step": 3}))  # not a progress record
    assert read_progress(path) is None


def test_the_watcher_logs_each_change_once_and_the_last_state_when_it_stops(tmp_path):
    lines: list[str] = []
    changed = threading.Event()

    def log(line):
        lines.append(line)
        changed.set()

    with ProgressWatcher(tmp_path / PROGRESS_FILE, log, interval_s=0.01) as watcher:
        time.sleep(0.05)  # no file yet: nothing logged
        write_progress(tmp_path, _progress(1))
        assert changed.wait(10)
        time.sleep(0.05)  # the same content read again: not logged again
        write_progress(tmp_path, _progress(3))
        watcher.interval_s = 3600  # too slow to see step 3 before the block ends: the final read does
    assert [line.split(",")[0] for line in lines] == ["step 1/3 (33%)", "step 3/3 (100%)"]
    assert not watcher._thread.is_alive()


def test_intervals_are_checked():
    with pytest.raises(ValueError, match="interval_s=0: must be a number of seconds > 0"):
        ProgressWatcher("x", print, 0)
    with pytest.raises(ValueError, match=r"progress_every_s=-1(\.0)? must be a number of seconds > 0"):
        Backend(progress_every_s=-1)


def _progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if " progress: " in r.getMessage()]


def test_a_local_run_logs_the_fake_trainer_s_progress_while_it_runs(tmp_path, monkeypatch, caplog):
    # A fake training subprocess: it writes progress.json three times, a second apart, as the trainer does at
    # its log steps, and says when each was written.
    (tmp_path / "fake_trainer.py").write_text(textwrap.dedent("""
        import sys, time
        from petqlora.train.progress import TrainProgress, write_progress

        out = sys.argv[sys.argv.index("--output") + 1]
        for step in (1, 2, 3):
            write_progress(out, TrainProgress(step=step, total_steps=3, epoch=step / 3, total_epochs=1.0,
                                              loss=2.0 / step, samples_per_s=8.0, eta_s=3.0 - step,
                                              elapsed_s=float(step)))
            print(f"wrote step {step}", flush=True)
            time.sleep(1.0)
    """))
    src = Path(petqlora.__file__).resolve().parents[1]
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{src}")
    caplog.set_level(logging.INFO)
    out = tmp_path / "adapter"
    out.mkdir()

    Backend(progress_every_s=0.05).run("fake_trainer", ["--dataset", "d", "--output", str(out)], "run-1-train")

    assert _progress_lines(caplog) == [
        "fake_trainer progress: step 1/3 (33%), epoch 0.33/1, loss 2.0000, 8.00 samples/s, ETA 2.0 s",
        "fake_trainer progress: step 2/3 (67%), epoch 0.67/1, loss 1.0000, 8.00 samples/s, ETA 1.0 s",
        "fake_trainer progress: step 3/3 (100%), epoch 1.00/1, loss 0.6667, 8.00 samples/s, done",
    ]
    # Steps 1 and 2 were read while the child ran: logged before it wrote step 3, a second after step 2.
    messages = [r.getMessage() for r in caplog.records]
    last_write = messages.index("wrote step 3")
    assert all(messages.index(line) < last_write for line in _progress_lines(caplog)[:2])
    assert not [t for t in threading.enumerate() if t.name.startswith("progress:")]  # the thread ended


def test_a_cloud_run_step_logs_the_job_s_progress_from_the_shared_mount(tmp_path, monkeypatch, caplog,
                                                                       cloud_run_api):
    # The bucket "mounted" under tmp_path instead of /gcs: the step and the job see the same folder, as on
    # Vertex, where both mount the bucket at /gcs/<bucket>.
    monkeypatch.setattr(backends, "local_path", functools.partial(local_path, mount=str(tmp_path)))
    backend = Backend(kind="cloud_run", project="my-proj", region="us-central1", bucket="pets",
                      image="us-central1-docker.pkg.dev/my-proj/petqlora/trainer:0.1.0",
                      service_account="job@my-proj.iam.gserviceaccount.com", progress_every_s=0.05)
    out = tmp_path / "pets" / "root" / "run-1" / "train-adapter" / "adapter"
    out.mkdir(parents=True)
    # The job "trains" while the launcher waits: step 1 when it starts, step 2 just before the poll that sees
    # it succeed (the second: the launcher sleeps 5 s after the first, which finds it running).
    cloud_run_api.plan_next_execution("succeed", polls=2)
    cloud_run_api.on_request(lambda: write_progress(out, _progress(1, total=2)), method="POST", path=r":run$")
    polls = []

    def on_poll():
        polls.append(1)
        if len(polls) == 2:
            write_progress(out, _progress(2, total=2))

    cloud_run_api.on_request(on_poll, method="GET", path=r"/executions/[^/:]+$", count=2)
    caplog.set_level(logging.INFO)

    backend.run("petqlora.train.train_adapter", ["--dataset", backend.path_arg(str(tmp_path / "pets" / "d")),
                                                 "--output", backend.path_arg(str(out))], "run-1-train")

    assert [line.split(",")[0] for line in _progress_lines(caplog)] == [
        "train_adapter progress: step 1/2 (50%)", "train_adapter progress: step 2/2 (100%)"]


# ---- the trainer writes it ------------------------------------------------------------------------------

def test_the_trainer_writes_progress_at_every_log_step(tiny_checkpoint, pets_dataset, tmp_path, monkeypatch):
    from petqlora.train import train_adapter as train_module

    written: list[dict] = []

    def spy(output, progress):
        path = write_progress(output, progress)
        written.append(json.loads(path.read_text()))
        return path

    monkeypatch.setattr(train_module, "write_progress", spy)
    cfg = TrainConfig(base_model=str(tiny_checkpoint("gemma4-31b")), lora_r=4, lora_alpha=4, batch_size=4,
                      grad_accum=1, max_steps=3, learning_rate=1e-2, warmup_ratio=0.0, image_token_budget=70,
                      checkpoint_every=0, log_every=2, seed=7)
    metrics = train_module.train_adapter(pets_dataset(4), tmp_path, cfg)

    assert [w["step"] for w in written] == [2, 3]  # the log steps (every 2) and the last
    final = json.loads((tmp_path / PROGRESS_FILE).read_text())
    assert set(final) == FIELDS and final == written[-1]
    assert (final["step"], final["total_steps"], final["eta_s"]) == (3, 3, 0.0)
    assert final["loss"] == metrics["loss"][-1][1]
    # 12 training images in batches of 4: 3 steps are one epoch.
    assert (final["epoch"], final["total_epochs"]) == (1.0, 1.0)
    assert final["samples_per_s"] > 0 and final["elapsed_s"] >= 0
    assert written[0]["epoch"] == pytest.approx(2 / 3, abs=1e-4) and written[0]["eta_s"] > 0
