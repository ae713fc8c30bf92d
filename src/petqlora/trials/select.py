"""The winner of a sweep: the trial with the best validation accuracy; a tie goes to the cheaper trial.

Cheaper, in this order: the smaller image_token_budget (every prediction of the registered model, and every
retraining, pays for its image tokens), then the fewer GPU seconds the trial took (training and its
validation scoring, as measured), then the smaller LoRA rank, then the earlier trial in the list. Accuracies
are fractions k/n of the same split, compared without float noise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from petqlora import params as pipeline_params
from petqlora.trials.plan import normalized

__all__ = ["TrialResult", "cheaper_key", "select_winner"]

_TOLERANCE = 1e-9


@dataclass(frozen=True)
class TrialResult:
    """One trial's figures, as score_trial returns them: its overrides, where its adapter is, its validation
    scores (None when the sweep had one trial: nothing to choose, so no validation evaluation is paid for),
    its training speed and the GPU time it took."""

    index: int
    count: int
    overrides: dict
    image_token_budget: int
    lora_r: int
    max_length: int
    config_fingerprint: str
    adapter_uri: str
    gpu_seconds: float  # training (the job's wall time, model loading included) + validation scoring
    train_seconds: float  # time in training steps
    samples_per_s: float | None = None  # training examples per second in training steps
    final_loss: float | None = None
    validation_accuracy: float | None = None
    validation_macro_f1: float | None = None
    validation_examples: int | None = None

    def __post_init__(self) -> None:
        known = {k: v for k, v in self.overrides.items() if k in pipeline_params.NAMES}  # KFP's JSON floats:
        object.__setattr__(self, "overrides", {**self.overrides, **normalized(known)})  # lora_r 8, not 8.0
        for name in ("index", "count", "image_token_budget", "lora_r", "max_length", "validation_examples"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, int(value))  # KFP hands JSON numbers over as floats
        bad = [name for name in ("validation_accuracy", "validation_macro_f1")
               if getattr(self, name) is not None and not 0 <= getattr(self, name) <= 1]
        if bad or not (0 <= self.index < self.count) or not math.isfinite(self.gpu_seconds) or self.gpu_seconds < 0:
            what = ", ".join(bad) or "index or gpu_seconds"
            raise ValueError(f"trial result {self.index} of {self.count} is not valid ({what}): score_trial writes "
                             "these; rerun the sweep")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrialResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @property
    def label(self) -> str:
        """How the report names the trial: its index and overrides."""
        return f"trial {self.index} " + (json.dumps(self.overrides, sort_keys=True) if self.overrides
                                         else "(the run's own fields)")


def cheaper_key(r: TrialResult) -> tuple:
    return (r.image_token_budget, r.gpu_seconds, r.lora_r, r.index)


def _check(results: list[TrialResult]) -> None:
    if not results:
        raise ValueError("no trial results: the sweep trained nothing; check plan_trials' output")
    count = results[0].count
    indexes = sorted(r.index for r in results)
    if indexes != list(range(count)) or any(r.count != count for r in results):
        raise ValueError(f"trial results {indexes} do not cover the sweep's {count} trials once each: a branch "
                         "is missing or repeated; rerun the sweep")
    if count > 1 and any(r.validation_accuracy is None for r in results):
        missing = [r.index for r in results if r.validation_accuracy is None]
        raise ValueError(f"trials {missing} have no validation score: score_trial scores every trial of a sweep "
                         "of more than one; rerun the sweep")


def select_winner(results: list[TrialResult]) -> tuple[TrialResult, str]:
    """(the winner, why in one sentence). A single trial wins without a validation score."""
    _check(results)
    if len(results) == 1:
        return results[0], "one trial: nothing to choose, so no validation evaluation was run"
    best = max(r.validation_accuracy for r in results)
    tied = [r for r in results if best - r.validation_accuracy <= _TOLERANCE]
    winner = min(tied, key=cheaper_key)
    reason = f"{winner.label} has the best validation accuracy, {best:.3f}"
    if len(tied) > 1:
        others = ", ".join(str(r.index) for r in tied if r is not winner)
        reason += (f"; it ties trial{'s' if len(tied) > 2 else ''} {others} and is the cheaper (image token budget, "
                   "then GPU time, then LoRA rank, then list order)")
    return winner, reason
