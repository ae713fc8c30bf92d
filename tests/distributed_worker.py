"""One rank of tests/test_distributed_training.py's collective test, started by torch.multiprocessing.spawn:
kept apart from the test module so that a spawned process imports torch and train/distributed.py only."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from petqlora.train import distributed
from petqlora.train.distributed import Ranks


def collectives(rank: int, store: str, out: str) -> None:
    """Gradients present on both ranks, on rank 0 only and on neither, in two dtypes, reduced in small
    buckets; sums; the RNG states for a checkpoint; a disagreement found."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        ranks = Ranks(rank, rank, 2, torch.device("cpu"))
        params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2)),
                  torch.nn.Parameter(torch.zeros(5)), torch.nn.Parameter(torch.zeros(4, dtype=torch.float64)),
                  torch.nn.Parameter(torch.zeros(6))]
        params[0].grad = torch.full((3,), float(rank + 1))
        if rank == 0:
            params[1].grad = torch.ones(2, 2)
        params[3].grad = torch.arange(4, dtype=torch.float64) * (rank + 1)
        params[4].grad = torch.arange(6.0) + 10 * rank
        distributed.reduce_gradients(ranks, params, bucket=4)  # 3 + 4 + 6 elements of float32: 3 buckets
        torch.manual_seed(rank)
        rng = distributed.gather_rng_states(ranks)
        try:
            distributed.check_agree(ranks, rank, "the rank")
            disagreement = None
        except RuntimeError as exc:
            disagreement = str(exc)
        torch.save({"grads": [None if p.grad is None else p.grad for p in params],
                    "sums": distributed.sum_numbers(ranks, 0.5 * (rank + 1), 7),
                    "rng_keys": sorted(rng), "rng_differ": not torch.equal(rng["torch"], rng["torch.rank1"]),
                    "disagreement": disagreement},
                   Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
