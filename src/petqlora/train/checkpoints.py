"""Checkpoints and finished outputs of a training run: TrainState (where training is), writing, reading and
restoring checkpoints/step-N, resuming from the newest readable one, and the atomic JSON write that marks a
finished run.

Checkpoints are written to a temporary folder, then renamed, so a kill never leaves half of one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from petqlora.train.config import check_same_run

# The training step's one logger, whichever module of it speaks: its log lines read as they always did.
log = logging.getLogger("petqlora.train.train_adapter")

CHECKPOINTS = "checkpoints"


@dataclass
class TrainState:
    """Where training is: saved with every checkpoint so a restarted task continues exactly."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # forward passes already consumed in `epoch`
    losses: list = field(default_factory=list)  # [step, loss]
    tokens_seen: int = 0
    elapsed_s: float = 0.0  # time spent in training steps, over all attempts (for tokens/s)


def checkpoint_dirs(output: Path) -> list[Path]:
    """Complete checkpoints, oldest first (the step number is zero-padded, so names sort by step)."""
    root = output / CHECKPOINTS
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and p.name.startswith("step-") and not p.name.endswith(".tmp"))


def remove_partial_checkpoints(output: Path) -> None:
    """Delete step-N.tmp folders a killed run left half-written."""
    root = output / CHECKPOINTS
    for tmp in root.glob("step-*.tmp") if root.exists() else []:
        log.info("removing the partial checkpoint %s left by an interrupted run", tmp.name)
        shutil.rmtree(tmp, ignore_errors=True)


def save_checkpoint(output: Path, model, optimizer, scheduler, state: TrainState, keep: int,
                    fingerprint: dict | None = None, rng: dict[str, torch.Tensor] | None = None) -> Path:
    """Write checkpoints/step-N atomically (into step-N.tmp, then one rename) and keep the newest `keep`.

    Called after the optimizer step, so the RNG state saved is the one the *next* step starts from.
    `rng`: the RNG states to save (data-parallel rank 0 passes every rank's); None: this process's.
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    root = output / CHECKPOINTS
    final = root / f"step-{state.global_step:07d}"
    tmp = root / (final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    adapter = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(adapter, str(tmp / "adapter.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    # Only torch's generators drive training randomness (LoRA dropout); the data order comes from
    # batch_plan(seed, epoch) and the position in state.json, so Python's and numpy's RNGs need no saving.
    if rng is None:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / "rng.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**asdict(state), "run": fingerprint}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoint_dirs(output)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: Path) -> dict:
    """Every file of a checkpoint, read into memory; raises when one is missing or damaged."""
    from safetensors.torch import load_file

    saved = json.loads((path / "state.json").read_text())
    return {
        "run": saved.pop("run", None),
        "state": TrainState(**saved),
        "adapter": load_file(str(path / "adapter.safetensors")),
        "optimizer": torch.load(path / "optimizer.pt", weights_only=True),  # tensors and numbers: no pickled code
        "rng": load_file(str(path / "rng.safetensors")),
    }


def restore_checkpoint(ckpt: dict, model, optimizer, scheduler, rank: int = 0) -> TrainState:
    """Put a read checkpoint's adapter, optimizer, scheduler and RNG state in place; returns the position.

    `rank`: a data-parallel rank other than 0 takes its own RNG state (`torch.rankN`), when the checkpoint
    holds one (it does not after a change of world size: that rank's dropout stream then starts afresh).
    """
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, ckpt["adapter"])
    optimizer.load_state_dict(ckpt["optimizer"]["optimizer"])
    scheduler.load_state_dict(ckpt["optimizer"]["scheduler"])
    suffix = "" if rank == 0 else f".rank{rank}"
    if "torch" + suffix in ckpt["rng"]:
        torch.set_rng_state(ckpt["rng"]["torch" + suffix])
    else:
        log.warning("the checkpoint holds no RNG state for rank %d (saved with fewer processes): its LoRA "
                    "dropout stream starts afresh", rank)
    if "cuda" + suffix in ckpt["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(ckpt["rng"]["cuda" + suffix])
    return ckpt["state"]


def resume_latest(output: Path, fingerprint: dict, model, optimizer, scheduler, total_steps: int,
                  task_attempt: int, rank: int = 0) -> TrainState:
    """Restore the newest readable checkpoint of this run in `output`; a fresh TrainState when there is none.

    A checkpoint of a different run is an error (see check_same_run); a damaged one is skipped for an older.
    Every data-parallel rank reads the same checkpoint; only rank 0 cleans up partial ones.
    """
    if rank == 0:
        remove_partial_checkpoints(output)
    checkpoints = checkpoint_dirs(output)
    for path in reversed(checkpoints):
        try:
            ckpt = read_checkpoint(path)
        except Exception as exc:  # noqa: BLE001 - json, safetensors and torch.load raise their own types
            # Damaged outside our control (a bucket mount's non-atomic rename, a full disk): an older
            # checkpoint still restores everything. Nothing was applied yet, so the model is untouched.
            log.warning("checkpoint %s cannot be read (%s: %s): trying an older one", path.name,
                        type(exc).__name__, exc)
            continue
        check_same_run(ckpt["run"], fingerprint, path)  # a different run's checkpoint is an error, not damage
        state = restore_checkpoint(ckpt, model, optimizer, scheduler, rank)
        log.info("resuming from %s (step %d/%d, epoch %d, task attempt %d)", path.name, state.global_step,
                 total_steps, state.epoch, task_attempt)
        return state
    if checkpoints or task_attempt > 0:
        log.warning("task attempt %d: no readable checkpoint in %s, starting from step 0", task_attempt, output)
    return TrainState()


def write_json_atomically(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def finished_metrics(output: Path) -> dict | None:
    """The metrics of a finished run in `output` (metrics.json is written last), or None."""
    metrics_file = output / "metrics.json"
    if metrics_file.is_file() and (output / "adapter" / "adapter_model.safetensors").is_file():
        return json.loads(metrics_file.read_text())
    return None
