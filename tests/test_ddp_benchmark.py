"""benchmarks/ddp_benchmark.py, which cannot run its GPUs here: its arguments, the scaling arithmetic, the
torchrun command it starts, the refusal of a GPU count that does not split the global batch, and
(`-m integration`) a whole run with two CPU gloo processes at narrow widths that writes ddp.json."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ddp_benchmark  # noqa: E402


def test_gpu_counts_are_parsed_and_checked():
    assert ddp_benchmark.parse_gpus("1,2") == [1, 2]
    assert ddp_benchmark.parse_gpus("2, 4,8") == [2, 4, 8]
    for bad in ("", "0,2", "2,1", "1,1", "one"):
        with pytest.raises(argparse.ArgumentTypeError, match="--gpus"):
            ddp_benchmark.parse_gpus(bad)


def test_defaults_and_the_torchrun_command(tmp_path):
    args = ddp_benchmark.build_parser().parse_args([])
    assert (args.gpus, args.steps, args.batch_size, args.grad_accum, args.lora_r, args.device) == \
        ([1, 2], 4, 8, 2, 64, "cuda")
    assert (args.text_layers, args.vision_layers, args.widths, args.tag) == (60, 27, "31b", "h200x2_31b_ddp")
    cmd = ddp_benchmark.worker_command(args, 2, tmp_path / "ds", tmp_path / "r.json")
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        str(Path(ddp_benchmark.__file__).resolve())]
    # The worker parses what the command hands it back into the same run.
    worker = ddp_benchmark.build_parser().parse_args(cmd[6:])
    assert worker.worker and worker.dataset == str(tmp_path / "ds") and worker.result == str(tmp_path / "r.json")
    for name in ("text_layers", "vision_layers", "widths", "steps", "batch_size", "grad_accum", "lora_r",
                 "image_token_budget", "device", "adapt_vision"):
        assert getattr(worker, name) == getattr(args, name), name
    assert "--adapt-vision" in ddp_benchmark.worker_command(
        ddp_benchmark.build_parser().parse_args(["--adapt-vision"]), 1, tmp_path, tmp_path / "r")


def test_a_gpu_count_that_does_not_split_the_global_batch_is_refused(capsys):
    # 3 x 1 samples a step cannot be shared by 2 GPUs: refused before any dataset or process is made.
    assert ddp_benchmark.main(["--gpus", "1,2", "--batch-size", "3", "--grad-accum", "1", "--out", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "world_size=2: must divide batch_size x grad_accum = 3 x 1 = 3" in err


def test_scaling_against_the_smallest_count():
    configs = {"1": {"gpus": 1, "samples_per_s": 2.0, "losses": [1.0, 2.0]},
               "2": {"gpus": 2, "samples_per_s": 3.6, "losses": [1.0, 2.002]},
               "4": {"gpus": 4, "returncode": "timeout"}}
    got = ddp_benchmark.scaling(configs)
    assert set(got) == {"1", "2"}
    assert got["2"]["scaling"] == pytest.approx(1.8) and got["2"]["efficiency"] == pytest.approx(0.9)
    assert got["2"]["max_loss_gap"] == pytest.approx(0.001) and got["2"]["against_gpus"] == 1
    assert ddp_benchmark.scaling({"2": {"gpus": 2, "samples_per_s": 3.0, "losses": [1.0]},
                                  "4": {"gpus": 4, "samples_per_s": 5.4, "losses": [1.0]}})["4"]["efficiency"] \
        == pytest.approx(0.9)
    assert ddp_benchmark.scaling({"1": {"gpus": 1, "returncode": 1}}) == {}


@pytest.mark.integration
def test_two_cpu_processes_write_the_scaling_json(tmp_path):
    rc = ddp_benchmark.main(["--device", "cpu", "--widths", "narrow", "--text-layers", "1", "--vision-layers", "1",
                             "--lora-r", "4", "--batch-size", "2", "--grad-accum", "2", "--steps", "2",
                             "--per-class", "4", "--image-token-budget", "70", "--out", str(tmp_path / "results"),
                             "--tag", "cpu", "--work", str(tmp_path / "work")])
    report = json.loads((tmp_path / "results" / "cpu" / "ddp.json").read_text())
    assert rc == 0, report
    one, two = report["configs"]["1"], report["configs"]["2"]
    assert (one["world_size"], two["world_size"], report["global_batch"]) == (1, 2, 4)
    assert len(one["step_times_s"]) == len(two["step_times_s"]) == 3
    assert one["timed_samples"] == two["timed_samples"] == 8
    assert len(two["peak_memory_gib_per_gpu"]) == 2 and all(x > 0 for x in two["peak_memory_gib_per_gpu"])
    # The same global batches: one process and two agree on every step's loss (float32 on CPU).
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)
    assert report["scaling"]["2"]["scaling"] == pytest.approx(two["samples_per_s"] / one["samples_per_s"])
    assert not list((tmp_path / "results" / "cpu").glob("*.part.json"))
