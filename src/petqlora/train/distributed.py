"""Data-parallel training over torch.distributed: the ranks torchrun describes, the process group, each
rank's share of an optimizer step, and the collectives the training loop needs (sums, the LoRA gradients'
all-reduce, the broadcast of the initial adapter, RNG states for checkpoints, a barrier).

The same entrypoint runs alone or under `torchrun --nproc-per-node N`: without torchrun's variables (or
with WORLD_SIZE=1) there is one process, no process group, and every helper here is a no-op, so a single
run is exactly what it was. With N ranks each holds the whole (4-bit on a GPU) model on cuda:LOCAL_RANK
(gloo on a CPU, nccl on GPUs); an optimizer step's global batch -- the batch_size x grad_accum samples one
process would train on, in the same order -- is cut into N contiguous shares (shard_step), and each rank
divides its token-loss sum by the supervised tokens of the whole global batch, so the summed gradient is
the one-process gradient.

Why a manual all-reduce of the trainable (LoRA) gradients and not DistributedDataParallel:
- the loss path calls the model's inner modules (modeling.supervised_logits), not the wrapper's forward,
  which DDP needs to prepare its gradient hooks;
- with grad_accum micro-batches one reduction per optimizer step is enough (DDP would need no_sync);
- a rank may get fewer micro-batches than another (an epoch's short last batch), or none; DDP expects
  every rank to run the same forwards and backwards;
- gradient checkpointing under DDP needs static_graph or non-reentrant checkpoints, and parameters unused
  in a forward (find_unused_parameters) cost a graph walk per step; here backward is exactly the
  one-process backward, and only the LoRA gradients (a few hundred MB at 31B, r=64) travel, once a step,
  in buckets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch

__all__ = ["SINGLE", "Ranks", "barrier", "broadcast_from_main", "check_agree", "gather_objects", "seed_rank",
           "gather_rng_states", "ranks_from_environment", "reduce_gradients", "session", "shard_step",
           "sum_numbers"]

ENV_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Elements per all-reduce of gradients: the flat copy is at most this big (256 MiB of fp32).
BUCKET_ELEMENTS = 64 * 2**20
COLLECTIVE_TIMEOUT_MIN = 30


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank, local rank, world size, and the device it trains on (None
    with one process: the config's device)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device | None = None

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes checkpoints, progress, the adapter and metrics, and logs."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1


SINGLE = Ranks()


def ranks_from_environment(environ: Mapping[str, str]) -> Ranks:
    """The ranks torchrun's variables describe; one process when WORLD_SIZE is unset (or 1)."""
    if not environ.get("WORLD_SIZE"):
        return SINGLE
    values = {}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        raw = environ.get(name, "0" if name != "WORLD_SIZE" else "")
        try:
            values[name] = int(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r}: must be a whole number, as torchrun sets it; start the step with "
                             "torchrun --nproc-per-node N, or unset WORLD_SIZE for one process") from None
    world, rank, local = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"WORLD_SIZE={world}, RANK={rank}, LOCAL_RANK={local}: need WORLD_SIZE >= 1, "
                         "0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0; start the step with torchrun")
    missing = [n for n in ("MASTER_ADDR", "MASTER_PORT") if world > 1 and not environ.get(n)]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} but {' and '.join(missing)} unset: the ranks cannot meet; start "
                         "the step with torchrun, which sets them")
    return Ranks(rank, local, world)


def rank_device(ranks: Ranks, device_name: str) -> torch.device:
    """The device of this rank: cuda:LOCAL_RANK when the config's device is a GPU ("auto" with one, "cuda")."""
    from petqlora.gemma.modeling import resolve_device  # here: the module needs no transformers to import

    device = resolve_device(device_name)
    if not ranks.parallel or device.type != "cuda":
        return device
    if device.index is not None:
        raise ValueError(f"device={device_name!r} under torchrun: each rank trains on cuda:LOCAL_RANK; set "
                         "device to auto or cuda")
    if ranks.local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK={ranks.local_rank} but this machine shows {torch.cuda.device_count()} "
                         "GPU(s): start at most that many processes per node (torchrun --nproc-per-node)")
    return torch.device("cuda", ranks.local_rank)


@contextmanager
def session(environ: Mapping[str, str], device_name: str) -> Iterator[Ranks]:
    """`with session(os.environ, cfg.device) as ranks:` the process group of a torchrun launch (nccl on GPUs,
    gloo on a CPU), joined and left; the ranks other than 0 log warnings and errors only, prefixed by their
    rank. One process: SINGLE, nothing joined."""
    ranks = ranks_from_environment(environ)
    if not ranks.parallel:
        yield SINGLE
        return
    import torch.distributed as dist

    device = rank_device(ranks, device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # The other ranks wait in a collective while rank 0 writes a checkpoint or the adapter, on a bucket
    # mount possibly: a longer wait than the 10-minute default is not a hang.
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ranks.rank,
                            world_size=ranks.world_size, timeout=timedelta(minutes=COLLECTIVE_TIMEOUT_MIN))
    ranks = Ranks(ranks.rank, ranks.local_rank, ranks.world_size, device)
    quiet = _quiet_other_ranks(ranks)
    try:
        yield ranks
    finally:
        quiet()
        dist.destroy_process_group()


class _RankPrefix(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.prefix = f"rank {rank}: "

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            record.msg = self.prefix + str(record.msg)
        return True


def _quiet_other_ranks(ranks: Ranks):
    """Ranks other than 0 log warnings and errors only, each line prefixed by the rank; returns the undo."""
    if ranks.main:
        return lambda: None
    logger, handlers = logging.getLogger("petqlora"), list(logging.getLogger().handlers)
    level, prefix = logger.level, _RankPrefix(ranks.rank)
    logger.setLevel(logging.WARNING)
    for h in handlers:
        h.addFilter(prefix)

    def undo() -> None:
        logger.setLevel(level)
        for h in handlers:
            h.removeFilter(prefix)
    return undo


def shard_step(group: list[list[int]], ranks: Ranks) -> list[list[int]]:
    """This rank's micro-batches of one optimizer step: `group` (the step's micro-batches, as example
    indices, in the one-process order) flattened, cut into world_size contiguous shares of equal size
    (+-1 when the epoch's last batch is short), each keeping the micro-batch boundaries.

    When world_size divides grad_accum each share is whole micro-batches, the very ones one process
    forwards; otherwise micro-batches are cut (none grows, so memory per forward never rises).
    """
    if not ranks.parallel:
        return group
    n = sum(len(b) for b in group)
    lo, hi = ranks.rank * n // ranks.world_size, (ranks.rank + 1) * n // ranks.world_size
    mine, start = [], 0
    for batch in group:
        part = batch[max(lo - start, 0):max(hi - start, 0)]
        if part:
            mine.append(part)
        start += len(batch)
    return mine


def _comm_device(ranks: Ranks) -> torch.device:
    return ranks.device if ranks.device is not None and ranks.device.type == "cuda" else torch.device("cpu")


def sum_numbers(ranks: Ranks, *values: float) -> tuple[float, ...]:
    """Each value summed over the ranks (float64: token counts stay exact); the values as they are with one
    process."""
    if not ranks.parallel:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=_comm_device(ranks))
    dist.all_reduce(t)
    return tuple(t.tolist())


def reduce_gradients(ranks: Ranks, params: list[torch.nn.Parameter], bucket: int = BUCKET_ELEMENTS) -> None:
    """Sum every trainable parameter's gradient over the ranks, in place.

    A gradient missing on a rank (its share did not reach that module, or it had no samples) counts as
    zero; a gradient missing on every rank stays missing, as with one process (AdamW then skips the
    parameter rather than decaying it).
    """
    if not ranks.parallel:
        return
    import torch.distributed as dist

    comm = _comm_device(ranks)
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=comm)
    dist.all_reduce(present)
    used = [p for p, k in zip(params, present.tolist()) if k]
    for p in used:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}  # the same order on every rank: the params' order
    for p in used:
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        chunk, size = [], 0
        for g in grads:
            if chunk and size + g.numel() > bucket:
                _all_reduce_flat(chunk)
                chunk, size = [], 0
            chunk.append(g)
            size += g.numel()
        _all_reduce_flat(chunk)


def _all_reduce_flat(grads: list[torch.Tensor]) -> None:
    import torch.distributed as dist

    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_from_main(ranks: Ranks, params: list[torch.nn.Parameter]) -> None:
    """Rank 0's values of `params` on every rank: the ranks start from one adapter."""
    if not ranks.parallel:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def gather_objects(ranks: Ranks, value: object) -> list:
    """Every rank's `value`, by rank ([value] with one process)."""
    if not ranks.parallel:
        return [value]
    import torch.distributed as dist

    out: list = [None] * ranks.world_size
    dist.all_gather_object(out, value)
    return out


def check_agree(ranks: Ranks, value: object, what: str) -> None:
    """Raises unless every rank holds the same `value` (e.g. the step they resumed from)."""
    seen = gather_objects(ranks, value)
    if any(v != seen[0] for v in seen):
        raise RuntimeError(f"the ranks disagree on {what}: {seen} (by rank); the output folder changed while "
                           "they read it: run again")


def seed_rank(ranks: Ranks, seed: int) -> None:
    """A torch RNG stream of its own for each rank other than 0 (LoRA dropout masks must not repeat across
    the ranks' samples); rank 0 keeps the one-process stream."""
    if ranks.parallel and not ranks.main:
        import numpy as np

        torch.manual_seed(int(np.random.SeedSequence([seed, ranks.rank]).generate_state(1)[0]))


def gather_rng_states(ranks: Ranks) -> dict[str, torch.Tensor] | None:
    """Every rank's torch (and CUDA) RNG state, keyed `torch`, `cuda` for rank 0 and `torch.rank1`, ... for
    the others, for rank 0's checkpoint; None with one process (the checkpoint saves its own)."""
    if not ranks.parallel:
        return None
    mine = {"torch": torch.get_rng_state()}
    if ranks.device is not None and ranks.device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(ranks.device)
    states = {}
    for rank, theirs in enumerate(gather_objects(ranks, mine)):
        states.update({rng_key(k, rank): v.cpu() for k, v in theirs.items()})
    return states


def rng_key(kind: str, rank: int) -> str:
    return kind if rank == 0 else f"{kind}.rank{rank}"


def barrier(ranks: Ranks) -> None:
    if ranks.parallel:
        import torch.distributed as dist

        dist.barrier()
