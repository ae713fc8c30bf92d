"""The pipeline's steps as library functions: each KFP component body is one call into this module.

Each function takes plain values and local paths (Vertex mounts gs:// artifacts under /gcs), does its
step, writes the outputs where the component asked, and returns the values the component logs as
Metrics or passes on. GPU work (training, evaluation of the large models) goes through a `Backend`:
a local subprocess of the entrypoint, or a Cloud Run Job execution of the trainer image.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

from petqlora import schema

from petqlora.backends import EVALUATE_MODULE, TRAIN_MODULE, Backend

log = logging.getLogger("petqlora.steps")

MODEL_KEYS = ("finetuned", "gemma4_baseline", "gemma3_baseline")
APPROACHES = {
    "finetuned": "Gemma 4 + QLoRA (fine-tuned)",
    "gemma4_baseline": "Gemma 4 baseline (zero-shot)",
    "gemma3_baseline": "Gemma 3 baseline (zero-shot)",
    "contrastive_baseline": "Contrastive baseline (SigLIP / CLIP, zero-shot)",
    "champion": "Current registered version",
}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def log_metrics(metrics, values: dict) -> None:
    """Log `values` on a KFP Metrics output and keep them as JSON in its file too. A Metrics artifact
    otherwise has no file (its values live in the executor's output), and kfp.local's cache takes an output
    whose file is missing for a lost one: a cached step with metrics would never be reused locally."""
    for key, value in values.items():
        metrics.log_metric(key, value)
    Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics.path).write_text(json.dumps(values, indent=1, sort_keys=True))


# ---- check_parameters

def run_check_parameters(values: dict, artifact_uri: str, report_md: str) -> None:
    """The pipeline's first step: every check of the whole run (petqlora.run_checks), so a run started with
    bad values (e.g. from the Vertex console) fails in seconds, before any data is read or GPU asked for.
    ``artifact_uri`` is this step's output, under the run's pipeline root like every step's outputs."""
    from petqlora.run_checks import check_run

    checked = schema.to_json_dict(check_run(values, pipeline_root=artifact_uri, context="here"))
    rows = "\n".join(f"| `{name}` | `{json.dumps(value)}` |" for name, value in checked.items())
    Path(report_md).write_text("# Parameters checked\n\nEvery parameter, the training config, the backend and "
                               f"the registry passed.\n\n| parameter | value |\n| --- | --- |\n{rows}\n")
    log.info("check_parameters: %d parameters passed every check", len(checked))


# ---- fingerprint_source

def run_fingerprint_source(source: str, summary_md: str) -> str:
    """The source's fingerprint (no pixel read), its Markdown report at `summary_md`; see data.fingerprint."""
    from petqlora.data.fingerprint import fingerprint_source

    fp = fingerprint_source(source)
    Path(summary_md).write_text(fp.markdown())
    log.info("fingerprint_source: %s (%s, %d files, exact=%s)", fp.fingerprint, fp.kind, fp.files, fp.exact)
    return fp.fingerprint


# ---- prepare_data

def run_prepare_data(source: str, out_dir: str, report_path: str, *, source_fingerprint: str = "",
                     **options) -> dict:
    from petqlora.data.fingerprint import record_fingerprint
    from petqlora.data.prepare_data import PrepareDataConfig, prepare_data

    result = prepare_data(PrepareDataConfig(source=source, **options), out_dir)
    if source_fingerprint:
        record_fingerprint(out_dir, source_fingerprint)
    Path(report_path).write_text((Path(out_dir) / "report.md").read_text())
    return {"dataset_hash": result.dataset_hash, "classes": len(result.classes), "skipped": result.skipped,
            **{f"{k}_examples": v for k, v in result.splits.items()}}


# ---- validate_token_boundaries

def run_validate_token_boundaries(dataset_dir: str, out_dir: str, report_path: str, *, base_model: str,
                                  image_token_budget: int, max_length: int, sample: int) -> dict:
    from petqlora.gemma.validate_token_boundaries import ValidateConfig, validate_token_boundaries

    cfg = ValidateConfig(base_model=base_model, image_token_budget=image_token_budget, max_length=max_length,
                         sample=sample or None)
    try:
        metrics = validate_token_boundaries(dataset_dir, out_dir, cfg)
    finally:
        report = Path(out_dir) / "report.md"
        if report.exists():
            Path(report_path).write_text(report.read_text())
    metrics["records_sha256"] = sha256_file(Path(out_dir) / "records.jsonl")
    return metrics


# ---- train_adapter

def run_train_adapter(dataset_dir: str, out_dir: str, train_config: dict, backend: Backend, task_id: str) -> dict:
    """Write the config next to the outputs, run the entrypoint, and return the training metrics."""
    from petqlora.train.config import parse_train_config

    cfg = parse_train_config(train_config)  # validated before any GPU is asked for
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "train_config.json"
    config_path.write_text(json.dumps(asdict(cfg), indent=1))
    args = ["--dataset", backend.path_arg(dataset_dir), "--output", backend.path_arg(str(out)),
            "--config", backend.path_arg(str(config_path))]
    backend.run(TRAIN_MODULE, args, task_id)
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["adapter_sha256"] = sha256_file(out / "adapter" / "adapter_model.safetensors")
    from petqlora.registry.champion import config_fingerprint

    metrics["config_fingerprint"] = config_fingerprint(train_config)  # registered with the version
    return metrics


# ---- decide_training

def run_decide_training(dataset_dir: str, train_config: dict, *, force_training: bool, registry: str,
                        model_name: str, project: str, region: str, decision_json: str, summary_md: str,
                        trials: list | None = None) -> dict:
    """Train, or skip because the registry's default version was trained on this dataset with this
    config (registry.champion; with `trials`, the sweep's fingerprint: trials.plan.sweep_fingerprint); the
    decision and its reason go to `decision_json` and `summary_md`."""
    from petqlora.data.dataset import read_manifest
    from petqlora.registry.champion import config_fingerprint, find_champion, training_decision
    from petqlora.trials.plan import sweep_fingerprint, trial_config

    dataset_hash = read_manifest(dataset_dir)["dataset_hash"]
    fingerprint = sweep_fingerprint([config_fingerprint(trial_config(train_config, t)) for t in trials or [{}]])
    champion = None if force_training else find_champion(registry, model_name, project=project, region=region)
    train, reason = training_decision(dataset_hash=dataset_hash, fingerprint=fingerprint, champion=champion,
                                      force_training=force_training, model_name=model_name)
    decision = {"train": train, "reason": reason, "dataset": dataset_dir, "dataset_hash": dataset_hash,
                "config_fingerprint": fingerprint, "champion": champion.ref if champion else None}
    Path(decision_json).write_text(json.dumps(decision, indent=1))
    Path(summary_md).write_text(f"# Train or skip\n\n**{'train' if train else 'skip'}**: {reason}\n")
    log.info("decide_training: %s", reason)
    return decision


# ---- evaluate

# Accuracies are fractions k/n: compare them without float noise (0.1 + 0.2 > 0.3).
_TOLERANCE = 1e-9
CONTRASTIVE = "contrastive_baseline"  # a SigLIP / CLIP baseline: it gates registration only when asked to


def check_win_margin(win_margin: float) -> None:
    if isinstance(win_margin, bool) or not isinstance(win_margin, (int, float)) or not 0 <= win_margin <= 1:
        raise ValueError(f"win_margin={win_margin!r}: must be a share of accuracy in [0, 1], e.g. 0.02 "
                         "(two points); a negative margin would register a model worse than a baseline")


def registration_decision(accuracy: dict[str, float], win_margin: float,
                          gate_on_contrastive: bool = False) -> tuple[bool, str]:
    """Register only when the fine-tuned model beats the best baseline by at least `win_margin` (a tie
    never beats) and, when a version is registered, beats that champion too. The contrastive baseline
    counts among the baselines only with `gate_on_contrastive`; otherwise the reason reports it, ungated."""
    check_win_margin(win_margin)
    if gate_on_contrastive and CONTRASTIVE not in accuracy:
        raise ValueError("gate_on_contrastive=True but no contrastive baseline was evaluated; fix: set "
                         "contrastive_baseline, or gate_on_contrastive=false")
    ft = accuracy["finetuned"]
    baselines = {k: v for k, v in accuracy.items()
                 if k.endswith("_baseline") and (gate_on_contrastive or k != CONTRASTIVE)}
    register, reason = _baseline_and_champion_decision(ft, baselines, accuracy.get("champion"), win_margin)
    if CONTRASTIVE in accuracy and not gate_on_contrastive:
        c = accuracy[CONTRASTIVE]
        reason += (f" ({CONTRASTIVE} {c:.3f}, {'beaten' if ft - c > _TOLERANCE else 'not beaten'}: reported, "
                   "not gated, as gate_on_contrastive is off)")
    return register, reason


def _baseline_and_champion_decision(ft: float, baselines: dict[str, float], champion: float | None,
                                    win_margin: float) -> tuple[bool, str]:
    best_name = max(baselines, key=baselines.get)
    best = baselines[best_name]
    if ft - best <= _TOLERANCE or ft - best < win_margin - _TOLERANCE:
        return False, (f"not registered: fine-tuned accuracy {ft:.3f} does not beat the best baseline "
                       f"({best_name} {best:.3f}) by the margin {win_margin:.3f}")
    if champion is not None and ft - champion <= _TOLERANCE:
        return False, (f"not registered: fine-tuned accuracy {ft:.3f} does not beat the current registered "
                       f"version ({champion:.3f}) on the same split")
    reason = f"registered: fine-tuned accuracy {ft:.3f} beats {best_name} {best:.3f} by {ft - best:.3f}"
    if champion is not None:
        reason += f" and the current version {champion:.3f}"
    return True, reason


def champion_adapter(registry: str, model_name: str, project: str = "", region: str = "") -> str | None:
    """The adapter folder of the registry's default version of `model_name`, if one is registered.

    On Vertex, the default version's artifact URI (gs://...), as the /gcs mount path the jobs read.
    """
    if registry == "vertex":
        from petqlora.cloud.storage import local_path
        from petqlora.cloud.vertex_models import default_version_artifact_uri

        uri = default_version_artifact_uri(project=project, region=region, display_name=model_name)
        return local_path(uri) if uri else None
    if not registry or not Path(registry).exists():
        return None
    from petqlora.registry.local import LocalRegistry

    version = LocalRegistry(registry).default_version(model_name)
    return version.artifact_uri if version else None


def run_evaluate(dataset_dir: str, adapter_dir: str, out_dir: str, *, base_model: str, gemma4_baseline: str,
                 gemma3_baseline: str, image_token_budget: int, mode: str, win_margin: float, registry: str,
                 model_name: str, backend: Backend, task_id: str, report_html: str, summary_md: str,
                 run_id: str = "", selection_json: str | None = None, contrastive_baseline: str = "",
                 gate_on_contrastive: bool = False) -> dict:
    """Evaluate the models (the contrastive baseline when named, the champion when registered) on the test
    split; write the report; decide. A sweep's trials (select_trial's `selection_json`, more than one trial)
    are shown in the report."""
    check_win_margin(win_margin)  # before any GPU time is spent
    _check_contrastive_gate(contrastive_baseline, gate_on_contrastive)
    from petqlora.evaluation.evaluate import EvalConfig
    from petqlora.evaluation.report_table import ModelRow, results_table, run_details

    out = Path(out_dir)
    models = {
        "finetuned": (base_model, f"{adapter_dir}/adapter"),
        "gemma4_baseline": (gemma4_baseline, None),
        "gemma3_baseline": (gemma3_baseline, None),
    }
    if contrastive_baseline:
        models[CONTRASTIVE] = (contrastive_baseline, None)
    champion = champion_adapter(registry, model_name, backend.project, backend.region)
    if champion:
        models["champion"] = (base_model, champion)
    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for name, (model, adapter) in models.items():
        cfg = EvalConfig(name=name, base_model=model, adapter=backend.path_arg(adapter) if adapter else None,
                         mode=mode, image_token_budget=image_token_budget)
        config_path = out / f"{name}.config.json"
        config_path.write_text(json.dumps(schema.to_json_dict(cfg), indent=1))
        args = ["--dataset", backend.path_arg(dataset_dir), "--output", backend.path_arg(str(out / name)),
                "--config", backend.path_arg(str(config_path))]
        runs[name] = (EVALUATE_MODULE, args, f"{task_id}-{name}")
    backend.run_many(runs)  # the models are independent: at once, each its own GPU job (Backend.max_parallel)
    results = {name: json.loads((out / name / "result.json").read_text()) for name in models}

    register, reason = registration_decision({k: r["accuracy"] for k, r in results.items()}, win_margin,
                                             gate_on_contrastive)
    rows = [ModelRow(approach=APPROACHES[k], accuracy=r["accuracy"], macro_f1=r["macro_f1"],
                     peak_memory_gib=r["peak_memory_gib"], seconds=r["seconds"], images_per_s=r["images_per_s"],
                     memory_kind=r["memory_kind"], top3_accuracy=r["top3_accuracy"]) for k, r in results.items()]
    ft = results["finetuned"]
    training = json.loads(Path(adapter_dir, "metrics.json").read_text())
    classes = ft["classes"]
    details = run_details(run_id=run_id, base_model=base_model, image_token_budget=image_token_budget, scoring=mode,
                          n_eval=ft["n_eval"], manifest=json.loads(Path(dataset_dir, "manifest.json").read_text()),
                          training=training, source_fingerprint=_source_fingerprint(dataset_dir),
                          contrastive=_contrastive_detail(results.get(CONTRASTIVE), gate_on_contrastive))
    trials = json.loads(Path(selection_json).read_text()) if selection_json else None
    trials = trials if trials and len(trials["trials"]) > 1 else None
    _write_evaluation_reports(out, report_html, summary_md, rows=rows, finetuned=ft, training=training,
                              register=register, reason=reason, details=details, trials=trials)
    table = results_table(rows)
    print(table, flush=True)
    summary = {"models": {k: {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"], "n_eval": r["n_eval"],
                              "top3_accuracy": r["top3_accuracy"], "peak_memory_gib": r["peak_memory_gib"],
                              "memory_kind": r["memory_kind"], "seconds": r["seconds"]} for k, r in results.items()},
               "register": register, "reason": reason, "classes": classes,
               "confusion_matrix": ft["result"]["confusion_matrix"], "table": table,
               # what register_model's summary repeats, with the version it creates
               "rows": [asdict(r) for r in rows], "details": details, "trials": trials}
    (out / "evaluation.json").write_text(json.dumps(summary, indent=1))
    summary["evaluation_sha256"] = sha256_file(out / "evaluation.json")
    return summary


def _check_contrastive_gate(contrastive_baseline: str, gate_on_contrastive: bool) -> None:
    from petqlora.params import PipelineParams, check_contrastive_gate
    from petqlora.problems import Problems

    problems = Problems("evaluate parameters")
    check_contrastive_gate(PipelineParams(contrastive_baseline=contrastive_baseline,
                                          gate_on_contrastive=gate_on_contrastive), problems)
    problems.raise_if_any()


def _contrastive_detail(result: dict | None, gated: bool) -> str | None:
    """The report's line on the contrastive baseline: its checkpoint, prompt and whether it gates."""
    if result is None:
        return None
    return (f"{result['config']['base_model']} ({result.get('model_type', '?')}), prompt "
            f"\"{result.get('prompt_template', '?')}\", "
            + ("gates registration" if gated else "reported, does not gate registration (gate_on_contrastive off)"))


def _source_fingerprint(dataset_dir: str) -> str | None:
    """The source fingerprint prepare_data recorded in its report.json, if it did."""
    report = Path(dataset_dir, "report.json")
    return json.loads(report.read_text()).get("source", {}).get("fingerprint") if report.is_file() else None


def _write_evaluation_reports(out: Path, report_html: str, summary_md: str, *, rows: list, finetuned: dict,
                              training: dict, register: bool, reason: str, details: dict, trials: dict | None) -> None:
    """The HTML report at `report_html` (the HTML artifact, which the Vertex UI renders from its content) and a
    copy at OUT/report.html, a name a browser opens; the Markdown summary at `summary_md`. A winner's version
    does not exist yet: both say its registration is pending, and register_model's summary names it."""
    from petqlora.evaluation.metrics import ClassificationResult
    from petqlora.evaluation.report_html import html_report
    from petqlora.evaluation.report_table import markdown_summary

    page = html_report(
        rows=rows, classes=finetuned["classes"], finetuned=ClassificationResult(**finetuned["result"]),
        loss_curve=[tuple(x) for x in training.get("loss", [])],
        val_loss_curve=[tuple(x) for x in training.get("val_loss", [])],
        title="Pet breeds: Gemma 4 QLoRA vs baselines", registered=register, reason=reason, model_version=None,
        extra=details, trials=trials)
    Path(report_html).write_text(page)
    (out / "report.html").write_text(page)
    Path(summary_md).write_text(markdown_summary(rows, registered=register, model_version=None, reason=reason,
                                                 details=details, trials=trials))


def registration_summary(evaluation_dir: str, model_version: str) -> str:
    """register_model's Markdown summary: the evaluation's table and details, and the version it created."""
    from petqlora.evaluation.report_table import ModelRow, markdown_summary

    evaluation = json.loads(Path(evaluation_dir, "evaluation.json").read_text())
    return markdown_summary([ModelRow(**row) for row in evaluation["rows"]], registered=evaluation["register"],
                            model_version=model_version, reason=evaluation["reason"], details=evaluation["details"],
                            trials=evaluation.get("trials"))


# ---- register_model

def run_register_model(*, adapter_dir: str, adapter_uri: str, evaluation_dir: str, lineage: dict, run_id: str,
                       model_name: str, registry: str, project: str, region: str, serving_image: str,
                       code_revision: str, dry_run: bool, credentials=None, api_endpoint: str | None = None) -> str:
    """Register the adapter as a new version; returns NAME@VERSION (local) or the Vertex resource name."""
    evaluation = json.loads(Path(evaluation_dir, "evaluation.json").read_text())
    if not evaluation["register"]:
        raise ValueError(f"register_model called although evaluation decided: {evaluation['reason']}")
    metrics = {f"{k}_accuracy": v["accuracy"] for k, v in evaluation["models"].items()}
    metrics["finetuned_macro_f1"] = evaluation["models"]["finetuned"]["macro_f1"]
    from petqlora.cloud.vertex_common import to_vertex_labels

    # Vertex's label rules in the local registry too: "v0.1.0" -> "v0_1_0"; a sha256 is cut to 63 characters
    labels = to_vertex_labels({"dataset_hash": lineage["dataset"]["sha256"], "code_revision": code_revision or "unknown",
                               # with dataset_hash, what decide_training compares to skip retraining the same
                               "config_fingerprint": lineage["adapter"]["inputs"].get("config_fingerprint") or "unknown"})
    if registry.startswith("vertex"):
        from petqlora.cloud.vertex_models import register_vertex_model

        result = register_vertex_model(
            project=project, region=region, display_name=model_name,
            artifact_uri=f"{adapter_uri.rstrip('/')}/adapter",  # the folder with the adapter's safetensors
            serving_container_image_uri=serving_image, parent_model=None,
            # the metrics go in as the version's classification evaluation; one short label to sort by
            version_aliases=["candidate"], labels={**labels, "finetuned_accuracy": round(metrics["finetuned_accuracy"], 4)},
            description=evaluation["reason"], run_id=run_id, evaluation=evaluation, dry_run=dry_run,
            credentials=credentials, api_endpoint=api_endpoint)
        if dry_run:
            return "(dry run: nothing registered)"  # register_vertex_model printed the requests
        return f"{result['resource_name']}@{result['version_id']}"
    from petqlora.registry.local import LocalRegistry

    if dry_run:
        print(json.dumps({"registry": registry, "name": model_name, "artifact_uri": str(Path(adapter_dir) / "adapter"),
                          "run_id": run_id, "metrics": metrics, "labels": labels, "aliases": ["candidate", "default"]},
                         indent=2, sort_keys=True))
        return "(dry run: nothing registered)"
    version = LocalRegistry(registry).register(
        model_name, str(Path(adapter_dir) / "adapter"), run_id=run_id, metrics=metrics, labels=labels,
        aliases=["candidate"], lineage=lineage, make_default=True)
    log.info("registered %s", version.ref)
    return version.ref
