"""Data-parallel training (train/distributed.py): the real entrypoint under torchrun with two CPU processes
(gloo) trains the adapter one process trains, from the same global batches.

- The collectives with two gloo processes (torch.multiprocessing, tests/distributed_worker.py): a gradient
  missing on one rank counts as zero, one missing on every rank stays missing, buckets and dtypes, sums,
  every rank's RNG state for rank 0's checkpoint, ranks that disagree found.
- The step's shares (shard_step), torchrun's variables, each rank's device, and the world-size rule (a world size that does not
  divide batch_size x grad_accum is refused in one message, before any model is loaded).
- `python -m petqlora.train.train_adapter` alone, and under `python -m torch.distributed.run --standalone
  --nproc-per-node 2`, on the tiny Gemma 4 and 12 synthetic images, LoRA dropout 0 (with dropout the ranks
  draw other masks than one process, by design), 4 optimizer steps over 2 epochs:
  * batch_size 3 x grad_accum 2: each rank's share is one whole micro-batch, the very one the single
    process forwards; the loss per step and the adapter must agree within 1e-6 (relative; they are
    bit-identical on this machine: a sum of two float32 gradients is the same in either order);
  * batch_size 2 x grad_accum 3 (`-m integration`): micro-batches are cut between the ranks, so their
    padding differs and float rounding with it: loss per step within 1e-5 relative, the adapter within 1e-3
    relative as one vector (measured: 5e-7 and 3e-5; Adam's first steps move by about lr x sign(gradient),
    so a near-zero gradient's rounding shows up in a few elements).
- Rank 0 alone writes and logs: the output holds the one-process files, each step is logged once.
- Resume (`-m integration`): a two-process run with dropout 0.1, resumed under two processes from its
  step-2 checkpoint, ends with the uninterrupted two-process adapter, bit for bit (every rank's RNG state is
  in rank 0's checkpoint).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from petqlora.train.config import TrainConfig, check_world_size
from petqlora.train.distributed import SINGLE, Ranks, rank_device, ranks_from_environment, shard_step
from petqlora.train.train_adapter import train_adapter

ADAPTER_FILE = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint) -> Path:
    return tiny_checkpoint("gemma4-31b")


@pytest.fixture(scope="module")
def dataset(pets_dataset) -> Path:
    return pets_dataset(4)  # 12 training images


def config_values(model: Path, **overrides) -> dict:
    values = dict(base_model=str(model), lora_r=4, lora_alpha=4, lora_dropout=0.0, batch_size=3, grad_accum=2,
                  max_steps=4, learning_rate=1e-2, warmup_ratio=0.0, image_token_budget=70, checkpoint_every=2,
                  keep_checkpoints=2, log_every=1, seed=7, device="cpu")
    values.update(overrides)
    return values


# ---- the shares, the environment, the rule


def test_shares_cover_the_step_in_order_and_evenly():
    group = [[5, 1, 9], [2, 7, 0], [4, 3]]  # an epoch's short last batch: 8 samples
    for world in (1, 2, 3, 4, 8):
        shares = [shard_step(group, Ranks(r, r, world)) for r in range(world)]
        flat = [i for share in shares for b in share for i in b]
        assert flat == [i for b in group for i in b]  # every sample once, in the one-process order
        sizes = [sum(map(len, s)) for s in shares]
        assert max(sizes) - min(sizes) <= 1
        assert all(len(b) <= 3 for s in shares for b in s)  # no micro-batch grows
    # world size dividing grad_accum: whole micro-batches, the very ones one process forwards
    whole = [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [shard_step(whole, Ranks(r, r, 2)) for r in range(2)] == [whole[:2], whole[2:]]
    # otherwise cut, keeping the boundaries: 2 x 3 over two ranks
    assert [shard_step([[0, 1], [2, 3], [4, 5]], Ranks(r, r, 2)) for r in range(2)] == [[[0, 1], [2]], [[3], [4, 5]]]
    assert shard_step(group, SINGLE) is group


def test_ranks_come_from_torchruns_variables():
    assert ranks_from_environment({}) == SINGLE
    assert ranks_from_environment({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}) == Ranks(0, 0, 1)
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}
    got = ranks_from_environment(env)
    assert (got.rank, got.local_rank, got.world_size, got.main, got.parallel) == (3, 1, 4, False, True)
    with pytest.raises(ValueError, match="MASTER_ADDR and MASTER_PORT unset"):
        ranks_from_environment({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
    with pytest.raises(ValueError, match=r"RANK=2.*0 <= RANK < WORLD_SIZE"):
        ranks_from_environment({**env, "WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(ValueError, match="LOCAL_RANK='x': must be a whole number"):
        ranks_from_environment({**env, "LOCAL_RANK": "x"})


def test_rank_devices():
    assert rank_device(SINGLE, "cpu") == torch.device("cpu")
    two = Ranks(1, 1, 2)
    assert rank_device(two, "cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device='cuda:1' under torchrun: each rank trains on cuda:LOCAL_RANK"):
        rank_device(two, "cuda:1")
    if torch.cuda.device_count() < 2:
        with pytest.raises(ValueError, match="LOCAL_RANK=1 but this machine shows"):
            rank_device(two, "cuda")


def test_collectives_over_two_gloo_processes(tmp_path):
    import torch.multiprocessing as mp

    from distributed_worker import collectives

    mp.spawn(collectives, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for g in got:
        grads = g["grads"]
        torch.testing.assert_close(grads[0], torch.full((3,), 3.0), rtol=0, atol=0)  # 1 + 2
        torch.testing.assert_close(grads[1], torch.ones(2, 2), rtol=0, atol=0)  # rank 1's missing one counts 0
        assert grads[2] is None  # missing on every rank: stays missing, as with one process
        torch.testing.assert_close(grads[3], torch.arange(4, dtype=torch.float64) * 3, rtol=0, atol=0)
        torch.testing.assert_close(grads[4], 2 * torch.arange(6.0) + 10, rtol=0, atol=0)
        assert tuple(g["sums"]) == (1.5, 14.0)
        assert g["rng_keys"] == ["torch", "torch.rank1"] and g["rng_differ"]
        assert "the ranks disagree on the rank: [0, 1]" in g["disagreement"]


def test_a_world_size_that_does_not_divide_the_step_is_refused_before_loading(dataset, tmp_path):
    cfg = TrainConfig(base_model=str(tmp_path / "no-such-model"), batch_size=3, grad_accum=2, device="cpu")
    for ok in (1, 2, 3, 6):
        check_world_size(cfg, ok)
    with pytest.raises(ValueError) as caught:
        check_world_size(cfg, 4)
    message = str(caught.value)
    assert message.count("\n  - ") == 1 and "world_size=4: must divide batch_size x grad_accum = 3 x 2 = 6" in message
    assert "e.g. grad_accum=4" in message and "divides 6 (2, 3, 6)" in message
    # The entrypoint's own check: refused before the (missing) model is read and before the output is made.
    with pytest.raises(ValueError, match="world_size=4: must divide"):
        train_adapter(dataset, tmp_path / "out", cfg, ranks=Ranks(0, 0, 4))
    assert not (tmp_path / "out").exists()


# ---- one process against two


def _run_entrypoint(dataset: Path, out: Path, values: dict, processes: int, attempt: int = 0) -> subprocess.Popen:
    config = out.with_name(out.name + ".json")
    config.write_text(json.dumps(values))
    launcher = ([] if processes == 1 else
                ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"])
    cmd = [sys.executable, *launcher, "-m", "petqlora.train.train_adapter", "--dataset", str(dataset),
           "--output", str(out), "--config", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLOUD_RUN_TASK_ATTEMPT": str(attempt)}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    try:
        output = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-4000:]
    return output


def run_side_by_side(dataset: Path, root: Path, values: dict) -> dict:
    """The entrypoint alone and under torchrun with two processes, at the same time (one thread each)."""
    procs = {n: _run_entrypoint(dataset, root / f"p{n}", values, n) for n in (1, 2)}
    return {n: (root / f"p{n}", _finish(p)) for n, p in procs.items()}


def losses(out: Path) -> list[list]:
    return json.loads((out / "metrics.json").read_text())["loss"]


def adapter_gap(a: Path, b: Path) -> float:
    """|a - b| / |a| over every adapter tensor as one vector."""
    ta, tb = (load_file(str(x / "adapter" / ADAPTER_FILE)) for x in (a, b))
    assert ta.keys() == tb.keys() and ta
    diff = torch.cat([(ta[k] - tb[k]).flatten() for k in ta])
    return float(diff.norm() / torch.cat([ta[k].flatten() for k in ta]).norm())


def assert_losses_close(one: Path, two: Path, rel: float) -> None:
    a, b = losses(one), losses(two)
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4]
    for (step, x), (_, y) in zip(a, b):
        assert y == pytest.approx(x, rel=rel), f"step {step}: loss {y} with two processes, {x} with one"


@pytest.fixture(scope="module")
def whole_shares(tiny_model, dataset, tmp_path_factory):
    return run_side_by_side(dataset, tmp_path_factory.mktemp("ddp_whole"), config_values(tiny_model))


def test_two_processes_train_the_one_process_adapter(whole_shares):
    (one, _), (two, log) = whole_shares[1], whole_shares[2]
    assert_losses_close(one, two, rel=1e-6)
    gap = adapter_gap(one, two)
    assert gap < 1e-6, f"the two-process adapter is {gap:.3g} (relative) off the one-process adapter"
    m1, m2 = (json.loads((x / "metrics.json").read_text()) for x in (one, two))
    assert (m1["world_size"], m2["world_size"]) == (1, 2)
    assert [len(m["peak_memory_gib_per_rank"]) for m in (m1, m2)] == [1, 2]
    # The LoRA gradient reached the adapter on every path: it moved away from its (B = 0) start.
    b = [v for k, v in load_file(str(two / "adapter" / ADAPTER_FILE)).items() if "lora_B" in k]
    assert b and all(float(t.abs().max()) > 0 for t in b)
    assert "6 per step over 2 processes" in log


def test_only_rank_0_writes_and_logs(whole_shares):
    (one, _), (two, log) = whole_shares[1], whole_shares[2]

    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}

    # The same files as one process writes (nothing per rank, nothing half-written)...
    assert files(two) == files(one) and "checkpoints/step-0000002/rng.safetensors" in files(two)
    assert not [f for f in files(two) if f.endswith(".tmp")]
    # ...whose checkpoint holds both ranks' RNG states, for an exact resume.
    rng = load_file(str(two / "checkpoints" / "step-0000002" / "rng.safetensors"))
    assert {"torch", "torch.rank1"} <= rng.keys() and not torch.equal(rng["torch"], rng["torch.rank1"])
    # Each step's line once (rank 1 logs warnings only, prefixed by its rank).
    for step in range(1, 5):
        assert log.count(f"step {step}/4 ") == 1, log[-3000:]
    assert log.count("adapter written to") == 1
    assert not [ln for ln in log.splitlines() if " INFO " in ln and "rank 1" in ln]


@pytest.mark.integration
def test_cut_micro_batches_train_the_one_process_adapter(tiny_model, dataset, tmp_path):
    # 2 x 3 over two ranks: rank 0 forwards [2 samples] + [1], rank 1 [1] + [2].
    runs = run_side_by_side(dataset, tmp_path, config_values(tiny_model, batch_size=2, grad_accum=3))
    (one, _), (two, _) = runs[1], runs[2]
    assert_losses_close(one, two, rel=1e-5)
    gap = adapter_gap(one, two)
    assert gap < 1e-3, f"the two-process adapter is {gap:.3g} (relative) off the one-process adapter"


@pytest.mark.integration
def test_two_processes_resume_to_the_same_adapter(tiny_model, dataset, tmp_path):
    values = config_values(tiny_model, lora_dropout=0.1)
    whole = tmp_path / "whole"
    _finish(_run_entrypoint(dataset, whole, values, 2))
    # As if killed after the step-2 checkpoint: that checkpoint alone, no adapter, no metrics.
    resumed = tmp_path / "resumed"
    shutil.copytree(whole / "checkpoints", resumed / "checkpoints")
    log = _finish(_run_entrypoint(dataset, resumed, values, 2, attempt=1))
    assert "resuming from step-0000002" in log and log.count("resuming from") == 1
    assert losses(resumed) == losses(whole)
    assert adapter_gap(whole, resumed) == 0.0
