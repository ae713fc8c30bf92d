"""The trial steps as library functions, one call per component (as petqlora.steps is for the others):
plan_trials (the trial list; the token boundaries of every other budget checked before any GPU is asked for),
score_trial (one trial's adapter on the validation split, through the Backend) and select_trial (the winner,
the trials table, and which adapter and token report go on to the test split and the registry)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from petqlora import schema
from petqlora.backends import EVALUATE_MODULE, Backend
from petqlora.trials.plan import base_values, normalized, plan_trials, sweep_fingerprint, token_checks
from petqlora.trials.report import trials_markdown
from petqlora.trials.select import TrialResult, select_winner

log = logging.getLogger("petqlora.trials")

__all__ = ["run_plan_trials", "run_score_trial", "run_select_trial", "token_report_name"]


def token_report_name(image_token_budget: int, max_length: int) -> str:
    """The folder of plan_trials' token report for one (budget, max_length) pair."""
    return f"budget{int(image_token_budget)}-max_length{int(max_length)}"


def run_plan_trials(trials: list, values: dict[str, Any], *, dataset_dir: str, sample: int, token_dir: str,
                    summary_md: str) -> tuple[list[dict], dict[str, str]]:
    """The trials (plan.plan_trials) and the token-boundary check of each (budget, max_length) pair a trial
    uses besides the run's own (validate_token_boundaries checked that one): a failing pair fails this step,
    naming its examples, before decide_training and any GPU. Returns the trials and {report folder: sha256 of
    its records}."""
    from petqlora.steps import run_validate_token_boundaries

    items = plan_trials(trials, values)
    reports = {}
    for budget, max_length in token_checks(items, base_values(values)):
        out = Path(token_dir) / token_report_name(budget, max_length)
        out.mkdir(parents=True, exist_ok=True)
        log.info("plan_trials: token boundaries at image_token_budget=%d, max_length=%d", budget, max_length)
        metrics = run_validate_token_boundaries(dataset_dir, str(out), str(out / "report.md"),
                                                base_model=values["base_model"], image_token_budget=budget,
                                                max_length=max_length, sample=sample)
        reports[out.name] = metrics["records_sha256"]
    Path(token_dir).mkdir(parents=True, exist_ok=True)
    rows = "\n".join(f"| {t['index']} | `{json.dumps(t['overrides'], sort_keys=True)}` | {t['image_token_budget']} | "
                     f"{t['lora_r']} | {t['learning_rate']:g} | {t['epochs']:g} |" for t in items)
    checked = ", ".join(f"`{name}`" for name in reports) or "none besides the run's own"
    Path(summary_md).write_text(
        f"# Trials planned\n\n{len(items)} trial{'s' if len(items) > 1 else ''}"
        f"{', trained in parallel' if len(items) > 1 else ' (no sweep: the run trains its own fields)'}.\n\n"
        "| trial | overrides | image_token_budget | lora_r | learning_rate | epochs |\n"
        f"| --- | --- | ---: | ---: | ---: | ---: |\n{rows}\n\nToken boundaries checked for the trials' other budgets: {checked}.\n")
    return items, reports


def _training_figures(adapter_dir: Path) -> dict:
    """The training job's time and speed, from its metrics.json and its last progress.json."""
    training = json.loads((adapter_dir / "metrics.json").read_text())
    progress = adapter_dir / "progress.json"
    speed = json.loads(progress.read_text()).get("samples_per_s") if progress.is_file() else None
    return {"train_seconds": float(training.get("train_time_s") or 0.0),
            "wall_seconds": float(training.get("wall_time_s") or training.get("train_time_s") or 0.0),
            "samples_per_s": speed, "final_loss": training.get("final_loss")}


def run_score_trial(dataset_dir: str, adapter_dir: str, adapter_uri: str, trial: dict, *, base_model: str, mode: str,
                    backend: Backend, task_id: str, out_dir: str) -> dict:
    """One trial's figures (select.TrialResult as JSON): its adapter scored on the validation split by the
    evaluate entrypoint, as evaluate runs it for the test split; no scoring for a sweep of one trial (there
    is nothing to choose), so a run without trials pays for no extra evaluation."""
    from petqlora.evaluation.evaluate import EvalConfig

    trained = _training_figures(Path(adapter_dir))
    figures = {"index": trial["index"], "count": trial["count"], "overrides": normalized(trial["overrides"]),
               "image_token_budget": trial["image_token_budget"], "lora_r": trial["lora_r"],
               "max_length": trial["max_length"],
               "config_fingerprint": trial["config_fingerprint"], "adapter_uri": adapter_uri.rstrip("/"),
               "train_seconds": trained["train_seconds"], "samples_per_s": trained["samples_per_s"],
               "final_loss": trained["final_loss"], "gpu_seconds": trained["wall_seconds"]}
    if int(trial["count"]) > 1:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        cfg = EvalConfig(name="finetuned", base_model=base_model, adapter=backend.path_arg(f"{adapter_dir}/adapter"),
                         split="validation", mode=mode, image_token_budget=int(trial["image_token_budget"]))
        config_path = out / "finetuned.config.json"
        config_path.write_text(json.dumps(schema.to_json_dict(cfg), indent=1))
        backend.run(EVALUATE_MODULE, ["--dataset", backend.path_arg(dataset_dir), "--output",
                                      backend.path_arg(str(out / "finetuned")), "--config",
                                      backend.path_arg(str(config_path))], task_id)
        result = json.loads((out / "finetuned" / "result.json").read_text())
        figures.update(validation_accuracy=result["accuracy"], validation_macro_f1=result["macro_f1"],
                       validation_examples=result["n_eval"],
                       gpu_seconds=trained["wall_seconds"] + result["seconds"] + result.get("load_seconds", 0.0))
        log.info("score_trial %d: validation accuracy %.3f, macro-F1 %.3f", int(trial["index"]), result["accuracy"],
                 result["macro_f1"])
    # checked, as select_trial reads it; no None values: kfp refuses a null inside a parameter (a sweep of one
    # trial has no validation scores), and TrialResult reads a missing field as None
    return {k: v for k, v in asdict(TrialResult.from_dict(figures)).items() if v is not None}


def run_select_trial(results: list[dict], adapters: list[tuple[str, dict]], trial_token_reports: tuple[str, dict],
                     selection_json: str, summary_md: str) -> dict:
    """The winner (select.select_winner) and what the steps after it take: the winner's adapter (its URI and
    metadata; config_fingerprint becomes the sweep's, which decide_training compares next time), the token
    report of its budget (plan_trials' for another budget than the run's, else None: validate_token_boundaries'),
    and its image_token_budget. ``adapters``: (uri, metadata) of every trial's adapter; ``trial_token_reports``:
    (uri, metadata) of plan_trials' reports. Writes the selection (every trial's figures) and the summary."""
    trials = sorted((TrialResult.from_dict(r) for r in results), key=lambda r: r.index)
    winner, reason = select_winner(trials)
    by_uri = {uri.rstrip("/"): metadata for uri, metadata in adapters}
    if winner.adapter_uri not in by_uri:
        raise ValueError(f"the winner's adapter {winner.adapter_uri} is not among the trials' adapters "
                         f"{sorted(by_uri)}: score_trial and train_adapter disagree; rerun the sweep")
    fingerprint = sweep_fingerprint([r.config_fingerprint for r in trials])
    metadata = {**by_uri[winner.adapter_uri], "config_fingerprint": fingerprint, "trial": winner.index,
                "trial_config_fingerprint": winner.config_fingerprint}
    report = token_report_name(winner.image_token_budget, winner.max_length)
    reports_uri, reports_meta = trial_token_reports
    token_report = None
    if report in (reports_meta.get("reports") or {}):
        token_report = {"uri": f"{reports_uri.rstrip('/')}/{report}",
                        "metadata": {"sha256": reports_meta["reports"][report],
                                     "image_token_budget": winner.image_token_budget}}
    selection = {"winner": winner.index, "reason": reason, "sweep_fingerprint": fingerprint,
                 "image_token_budget": winner.image_token_budget, "adapter": {"uri": winner.adapter_uri,
                                                                             "metadata": metadata},
                 "token_report": token_report, "trials": [asdict(r) for r in trials]}
    Path(selection_json).write_text(json.dumps(selection, indent=1))
    Path(summary_md).write_text(f"# Trial selected\n\n**Trial {winner.index}**: {reason}.\n\n"
                                + (trials_markdown(selection["trials"], winner.index) if len(trials) > 1 else ""))
    log.info("select_trial: %s", reason)
    return selection

