"""The trial list: the `trials` parameter's overrides checked against the parameter schema, applied to the run's
training fields (one item per `dsl.ParallelFor` branch), and the sweep's fingerprint, which decide_training
compares with the registered version's to skip a sweep already trained on the same data."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from petqlora import params as pipeline_params
from petqlora.problems import Problems

__all__ = ["TUNABLE", "base_values", "check_trials", "normalized", "plan_trials", "sweep_fingerprint",
           "token_checks", "trial_config", "trial_values"]

# The training fields a trial may change; every other parameter (data, base model, seed, scoring) is the run's,
# so that the trials differ only in how they train and their validation scores compare.
TUNABLE = ("image_token_budget", "lora_r", "lora_alpha", "lora_dropout", "learning_rate", "epochs", "batch_size",
           "grad_accum", "max_length", "train_options")
# What train_adapter takes besides the tunable fields, the same for every trial.
FIXED = ("base_model", "seed")
_EXAMPLE = '{"image_token_budget": 140}'


def base_values(values: Any) -> dict:
    """The run's tunable fields, from a mapping or an object (PipelineParams, the pipeline's `p`)."""
    get = values.get if isinstance(values, Mapping) else lambda name: getattr(values, name)
    return {name: get(name) for name in TUNABLE}


def trial_values(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    """A trial's training fields: the run's with the trial's overrides; the trial's train_options are merged into
    the run's (a key in both takes the trial's value)."""
    values = {**base, **{k: v for k, v in overrides.items() if k != "train_options"}}
    values["train_options"] = {**base["train_options"], **overrides.get("train_options", {})}
    return values


def trial_config(train_config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    """A trial's training-config values from the run's (train_config_values' result): the same values as
    building them from trial_values, since a train_options key never repeats a pipeline field."""
    options = overrides.get("train_options", {})
    return {**train_config, **options, **{k: v for k, v in overrides.items() if k != "train_options"}}


def _train_config(values: Mapping[str, Any], fixed: Mapping[str, Any]) -> dict:
    from petqlora.train.config import train_config_values

    return train_config_values(values["train_options"], **{k: fixed[k] for k in FIXED},
                               **{k: values[k] for k in TUNABLE if k != "train_options"})


def _prefixed(problems: Problems, exc: ValueError, prefix: str, rename=lambda item: item) -> None:
    """The problems ``exc`` carries, each named under ``prefix`` (e.g. trials[1].), once."""
    for item in getattr(exc, "problems", None) or (str(exc),):
        if f"{prefix}{rename(item)}" not in problems.items:
            problems.items.append(f"{prefix}{rename(item)}")


def _check_keys(i: int, overrides: Mapping[str, Any], problems: Problems) -> bool:
    """Each key a tunable field and each value within its parameter's rule; True when all are."""
    ok = True
    for key in sorted(overrides):
        value = overrides[key]
        if key not in TUNABLE:
            rule = ("is the run's, the same for every trial" if key in pipeline_params.NAMES
                    else "is not a training field a trial can set")
            problems.add(f"trials[{i}].{key}", value, rule, f"use one of {', '.join(TUNABLE)}"
                         + (f"; set {key} as a parameter of the run" if key in pipeline_params.NAMES else ""))
            ok = False
            continue
        try:
            pipeline_params.parse({key: value})
        except ValueError as exc:
            default = json.dumps(getattr(pipeline_params.DEFAULTS, key))
            _prefixed(problems, exc, f"trials[{i}].",
                      lambda item: item if "; fix: " in item else f"{item}; fix: e.g. {default} (the default)")
            ok = False
            continue
        if key == "train_options":
            for option in sorted(set(value) & set(pipeline_params.NAMES)):
                problems.add(f"trials[{i}].train_options.{option}", value[option],
                             f"repeats the field {option}, which a trial sets itself",
                             f'set {{"{option}": {json.dumps(value[option])}}} in the trial, not in its train_options')
                ok = False
    return ok


def check_trials(trials: Any, base: Mapping[str, Any], fixed: Mapping[str, Any], problems: Problems,
                 *, base_ok: bool = True) -> list[str]:
    """Adds a problem, naming trials[INDEX].KEY, the rule and the fix, for each trial that is not an object of
    tunable fields within their rules, whose training config (the run's with its overrides, built as
    train_adapter builds it) is refused, or that trains the same config as an earlier trial. ``base_ok``: the
    run's own training fields passed (otherwise a trial's config is not built: its problem would be the run's).
    Returns the config fingerprint of each trial (None for a refused one)."""
    from petqlora.registry.champion import config_fingerprint
    from petqlora.train.config import TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    if not isinstance(trials, list):
        problems.add("trials", trials, "must be a JSON list of objects", f"e.g. [{{}}, {_EXAMPLE}]")
        return []
    fingerprints: list[str | None] = []
    for i, overrides in enumerate(trials):
        fingerprints.append(None)
        if not isinstance(overrides, Mapping):
            problems.add(f"trials[{i}]", overrides, "must be a JSON object of training fields to override",
                         f"e.g. {_EXAMPLE}, or {{}} for the run's own fields")
            continue
        if not _check_keys(i, overrides, problems) or not base_ok:
            continue
        values = trial_values(base, normalized(overrides))

        def where(item: str) -> str:  # the base passed: every problem of the trial's config is the trial's
            name = item.split("=", 1)[0]
            if name not in values["train_options"]:
                return item
            if "; fix: " in item or name not in defaults:
                return f"train_options.{item}"
            return f"train_options.{item}; fix: e.g. {json.dumps(defaults[name])} (the default)"

        try:
            fingerprints[i] = config_fingerprint(_train_config(values, fixed))
        except ValueError as exc:
            _prefixed(problems, exc, f"trials[{i}].", where)
            continue
        first = fingerprints.index(fingerprints[i])
        if first < i:
            problems.add(f"trials[{i}]", dict(overrides), f"trains the same config as trials[{first}]",
                         "drop one of them, or change a value")
    return fingerprints


def normalized(overrides: Mapping[str, Any]) -> dict:
    """Each value as its parameter's type (KFP hands JSON numbers over as floats: 140.0 is 140)."""
    return {k: getattr(pipeline_params.parse({k: v}), k) for k, v in overrides.items()}


def plan_trials(trials: list, values: Mapping[str, Any]) -> list[dict]:
    """The trials as the ParallelFor iterates them, one item each (one item of the run's own fields when
    ``trials`` is empty): its index, the sweep's size (count), its overrides, its training fields (what
    train_adapter takes) and its config fingerprint. ``values``: the run's parameters (the tunable fields,
    base_model and seed). Raises one ValueError naming every refused trial."""
    base, fixed = base_values(values), {k: values[k] for k in FIXED}
    p = Problems("trials")
    fingerprints = check_trials(trials, base, fixed, p)
    p.raise_if_any()
    overrides = [normalized(t) for t in trials] or [{}]
    if not trials:
        from petqlora.registry.champion import config_fingerprint

        fingerprints = [config_fingerprint(_train_config(base, fixed))]
    return [{"index": i, "count": len(overrides), "overrides": o, **trial_values(base, o),
             "config_fingerprint": fingerprints[i]} for i, o in enumerate(overrides)]


def token_checks(items: list[dict], base: Mapping[str, Any]) -> list[tuple[int, int]]:
    """The (image_token_budget, max_length) pairs of the trials other than the run's own, each once in trial
    order: validate_token_boundaries checked the run's pair; these are checked before any trial trains."""
    own = (int(base["image_token_budget"]), int(base["max_length"]))
    pairs = [(int(t["image_token_budget"]), int(t["max_length"])) for t in items]
    return [pair for i, pair in enumerate(pairs) if pair != own and pair not in pairs[:i]]


def sweep_fingerprint(fingerprints: list[str]) -> str:
    """The fingerprint decide_training compares with the registered version's: a single trial's own config
    fingerprint (so a run without trials is fingerprinted as before), else one over the set of the trials'
    (their order does not matter: the same sweep picks the same winner)."""
    if len(fingerprints) == 1:
        return fingerprints[0]
    payload = json.dumps({"trials": sorted(fingerprints)})
    return hashlib.sha256(payload.encode()).hexdigest()
