"""The embedded default: run the whole @dsl.pipeline on this machine with kfp.local.

Builds what the cloud would already have (tiny random checkpoints, a generated dataset), runs the same
pipeline through kfp.local's SubprocessRunner, then gathers the results into DIR/run_summary.json and
prints the comparison table.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import time
from pathlib import Path

import yaml

from petqlora import schema
from petqlora.evaluation.report_table import decision_sentence
from petqlora.problems import Problems
from petqlora.run_checks import check_run

log = logging.getLogger("petqlora.local_run")

REPORT_HTML = "report.html"

TASK_DIRS = {"dataset": ("prepare-data", "dataset"), "token_boundary_report": ("validate-token-boundaries", "records"),
             "adapter": ("select-trial", "adapter"), "evaluation_report": ("evaluate", "report"),
             "evaluation": ("evaluate", "evaluation"), "selection": ("select-trial", "selection")}


def load_local_config(path: Path) -> dict:
    """The config file: a YAML mapping of the sections dataset, models, parameters. What cannot be read as one
    (malformed YAML, a key given twice, a list, a folder) raises one ValueError naming the file and the fix."""
    if not path.exists():
        raise FileNotFoundError(f"--config {path}: no such file; start from configs/local.yaml")
    fix = "fix: pass a YAML file of the sections dataset, models, parameters, e.g. configs/local.yaml"
    if path.is_dir():
        raise ValueError(f"--config {path}: is a folder, not a file; {fix}")
    try:
        config = schema.load_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ValueError(f"--config {path}: is not UTF-8 text; {fix}") from None
    except yaml.YAMLError as exc:  # its marks name the line and column
        raise ValueError(f"--config {path}: is not valid YAML ({' '.join(str(exc).split())}); fix: correct it "
                         "there (configs/local.yaml shows the layout)") from None
    if not isinstance(config, dict):
        raise ValueError(f"--config {path}: must be a mapping of the sections dataset, models, parameters, not a "
                         f"{type(config).__name__}; {fix}")
    unknown = sorted(set(config) - {"dataset", "models", "parameters"})
    if unknown:
        raise ValueError(f"--config {path}: unknown sections {unknown}; fix: use only dataset, models, parameters")
    return config


@dataclasses.dataclass(frozen=True)
class SyntheticDataset:
    """The `dataset: synthetic:` section: a generated image folder (data.synthetic)."""

    per_class: int = schema.field(60, "Images generated per breed.", low=1)
    seed: int = schema.field(0, "Seed of the generated images.", low=0)


def _check_sources(p: Problems, section: dict, models: dict, dataset: str | None) -> None:
    """The dataset section (or --dataset) and the models, as resolve_dataset and resolve_model will read them:
    checked before any checkpoint or image is built."""
    from petqlora.evaluation.tiny_contrastive import VARIANTS as CONTRASTIVE_VARIANTS
    from petqlora.gemma.tiny_models import VARIANTS

    for key in sorted(set(section) - {"path", "synthetic"}):
        p.add(f"dataset.{key}", section[key], "is not a dataset key",
              "use path (a dataset folder or manifest) or synthetic (a generated one)")
    if "path" in section and "synthetic" in section:
        p.add("dataset", section, "gives both path and synthetic", "keep one of them")
    if dataset is not None:
        p.check(Path(dataset).exists(), "--dataset", dataset, "no such file or folder", "pass an existing dataset")
    elif "path" in section:
        p.check(isinstance(section["path"], str) and Path(section["path"]).exists(), "dataset.path", section["path"],
                "no such file or folder", "give an existing dataset folder or manifest, or synthetic: {per_class: 60}")
    else:
        try:
            schema.from_mapping(SyntheticDataset, section.get("synthetic") or {}, "dataset.synthetic")
        except ValueError as exc:
            defaults = dataclasses.asdict(SyntheticDataset())
            for item in getattr(exc, "problems", None) or (str(exc),):
                name = item.split("=", 1)[0]
                fix = f"; fix: e.g. {defaults[name]} (the default)" if name in defaults and "; fix: " not in item else ""
                p.items.append(f"dataset.synthetic.{item}{fix}")
    for name, spec in models.items():
        tiny = VARIANTS if name != "contrastive_baseline" else CONTRASTIVE_VARIANTS
        kind = "Gemma" if name != "contrastive_baseline" else "contrastive"
        if not isinstance(spec, str) or not spec:
            continue  # the run checks say what a parameter of another type or an empty one is
        if spec.startswith("tiny:"):
            p.check(spec.split(":", 1)[1] in tiny, f"models.{name}", spec, f"is not a tiny {kind} model",
                    f"use one of {', '.join(f'tiny:{v}' for v in tiny)}")
        else:
            p.check(Path(spec).is_dir(), f"models.{name}", spec, "is not a checkpoint folder",
                    f"give a local checkpoint folder (config.json, *.safetensors, tokenizer and processor files) "
                    f"or one of {', '.join(f'tiny:{v}' for v in tiny)}")


def resolve_model(spec: str, models_dir: Path) -> str:
    """`tiny:<variant>` builds (once) a tiny random checkpoint; "" stays "" (no such model, e.g. no
    contrastive baseline); anything else must be an existing folder."""
    from petqlora.evaluation.tiny_contrastive import VARIANTS as CONTRASTIVE_VARIANTS, build_tiny_contrastive
    from petqlora.gemma.tiny_models import VARIANTS, build_tiny_checkpoint

    if not spec:
        return spec
    if spec.startswith("tiny:"):
        variant = spec.split(":", 1)[1]
        target = models_dir / variant
        if not (target / "config.json").exists():
            build = build_tiny_contrastive if variant in CONTRASTIVE_VARIANTS else build_tiny_checkpoint
            build(variant, target)
        return str(target.resolve())
    if not Path(spec).is_dir():
        raise FileNotFoundError(f"model {spec!r}: not a folder. Give a local checkpoint folder (config.json, "
                                "*.safetensors, tokenizer and processor files) or "
                                f"tiny:<{'|'.join(VARIANTS + CONTRASTIVE_VARIANTS)}>")
    return str(Path(spec).resolve())


def resolve_dataset(section: dict, override: str | None, data_dir: Path) -> str:
    if override:
        if not Path(override).exists():
            raise FileNotFoundError(f"--dataset {override}: no such path")
        return str(Path(override).resolve())
    if "path" in section:
        return str(Path(section["path"]).resolve())
    from petqlora.data.synthetic import generate_synthetic_pets

    synth = section.get("synthetic", {})
    folder = data_dir / "synthetic_pets"
    if not folder.exists():
        generate_synthetic_pets(folder, per_class=synth.get("per_class", 60), seed=synth.get("seed", 0))
    return str(folder.resolve())


def code_revision() -> str:
    """The git commit of this checkout (recorded as a label of the registered version), or ""."""
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              timeout=10, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _latest_run(pipeline_root: Path, before: set[Path]) -> Path | None:
    """This run's folder: the newest one that was not there before it (never an earlier run's), or None."""
    runs = sorted((p for p in pipeline_root.iterdir() if p.is_dir() and p not in before),
                  key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


# What run-local sets itself: the source (from `dataset`), the checkpoints (from `models`), a local registry
# and backend. The same name under `parameters` would be silently replaced, so it is refused.
SET_BY_RUN_LOCAL = ("source", "registry", "backend", "project", "region", "code_revision")


def run_parameters(config: dict, config_path: Path, dataset: str | None, output_dir: Path) -> dict:
    """The run's pipeline parameters, checked as a whole (run_checks.check_run) before anything is built;
    then the tiny checkpoints and the synthetic dataset are built when asked for and their paths put in."""
    given, models, section = config.get("parameters") or {}, config.get("models") or {}, config.get("dataset") or {}
    p = Problems(str(config_path))
    for name, value in (("parameters", given), ("models", models), ("dataset", section)):
        p.check(isinstance(value, dict), name, value, "must be a mapping", "see configs/local.yaml")
    p.raise_if_any()
    for key in sorted(set(given) & (set(SET_BY_RUN_LOCAL) | set(models))):
        p.add(f"parameters.{key}", given[key], "is set by run-local itself (source from `dataset`, the checkpoints "
              "from `models`, a local registry and backend)", f"drop {key} from parameters")
    p.raise_if_any()
    _check_sources(p, section, models, dataset)
    source = dataset or section.get("path") or str(output_dir / "data" / "synthetic_pets")
    values = dict(given, **models, source=source, registry=str(output_dir / "registry.sqlite"),
                  backend={"kind": "local"}, project="local", region="local", code_revision=code_revision())
    try:
        checked = check_run(values, pipeline_root=str(output_dir / "pipeline_root"), context="here")
    except ValueError as exc:
        if not p:
            raise
        p.items.extend(getattr(exc, "problems", None) or (str(exc),))  # every problem of the file at once
    p.raise_if_any()
    built = {k: resolve_model(v, output_dir / "models") for k, v in models.items()}
    source = resolve_dataset(section, dataset, output_dir / "data")
    return schema.to_json_dict(dataclasses.replace(checked, **built, source=source))


def _not_started(error: str, output_dir: Path) -> dict:
    """The summary of a run refused before any step ran: failed, nothing registered, and why."""
    return {"status": "failed", "error": error, "failed_step": None, "run": None, "wall_time_s": 0.0,
            "models": {}, "registered": False, "model_version": None, "decision_reason": None, "table": None,
            "training": None, "cached": [], "dataset_hash": None, "source_fingerprint": None, "trials": None,
            "winner": None,
            "artifacts": {key: None for key in TASK_DIRS}, "registry": str(output_dir / "registry.sqlite"),
            "parameters": None}


def run_local_pipeline(pipeline_func, output_dir: Path, config_path: Path, dataset: str | None = None,
                       enable_caching: bool = True) -> dict:
    """Run the pipeline into `output_dir`. With `enable_caching` (as on Vertex), the steps the pipeline
    caches are reused from `output_dir`/kfp_cache while their inputs are unchanged: prepare_data's include
    the source's fingerprint, so a changed folder is prepared again."""
    from kfp import local

    output_dir = output_dir.resolve()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--output-dir {output_dir}: cannot be created ({exc.strerror}); fix: pass a folder "
                         "you can write") from exc
    summary_path = output_dir / "run_summary.json"
    summary_path.unlink(missing_ok=True)  # an earlier run's result must never read as this run's
    (output_dir / REPORT_HTML).unlink(missing_ok=True)  # nor an earlier run's report
    registry = output_dir / "registry.sqlite"
    try:
        params = run_parameters(load_local_config(config_path), config_path, dataset, output_dir)
    except Exception as exc:  # refused before any step ran: the summary says so, the caller prints why
        summary_path.write_text(json.dumps(_not_started(str(exc), output_dir), indent=1))
        raise
    pipeline_root = output_dir / "pipeline_root"
    pipeline_root.mkdir(exist_ok=True)
    before = set(pipeline_root.iterdir())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               raise_on_error=True, enable_caching=enable_caching, cache_root=str(output_dir / "kfp_cache"))
    started = time.perf_counter()
    status, error = "succeeded", None
    try:
        pipeline_func(**params)
    except Exception as exc:  # the failing task's log is above; summarise and keep what was produced
        status, error = "failed", re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    wall = time.perf_counter() - started
    run_dir = _latest_run(pipeline_root, before)
    summary = (summarize(run_dir, registry, params, status, error, wall) if run_dir is not None
               else _not_started(f"the local pipeline did not start: {error}", output_dir))
    _copy_report(summary, output_dir)
    summary_path.write_text(json.dumps(summary, indent=1))
    print_summary(summary, output_dir)
    return summary


def _copy_report(summary: dict, output_dir: Path) -> None:
    """OUTPUT/report.html: the evaluate step's HTML report under a name a browser opens (kfp names the HTML
    artifact's file `report`, without an extension); the summary points at the copy."""
    report = summary["artifacts"].get("evaluation_report")
    if report and Path(report).is_file():
        shutil.copyfile(report, output_dir / REPORT_HTML)
        summary["artifacts"]["evaluation_report"] = str(output_dir / REPORT_HTML)


def _training_decision(run_dir: Path) -> dict | None:
    path = run_dir / "decide-training" / "decision"
    return json.loads(path.read_text()) if path.is_file() else None


def _reused(key: str, task: str, output: str, decision: dict | None) -> Path | None:
    """Where a task served from the cache left its output: a cached task writes nothing in this run's
    folder; the dataset's folder is named by decide_training, the token report sits beside it (the run that
    prepared the dataset validated it; a cached validation needs a cached dataset)."""
    if decision is None or key not in ("dataset", "token_boundary_report"):
        return None
    dataset = Path(decision["dataset"])
    path = dataset if key == "dataset" else dataset.parent.parent / task / output
    return path if path.exists() else None


def summarize(run_dir: Path, registry: Path, params: dict, status: str, error: str | None, wall: float) -> dict:
    artifacts, cached = {}, []
    decision = _training_decision(run_dir)
    for key, (task, output) in TASK_DIRS.items():
        path = run_dir / task / output
        if not path.exists() and (path := _reused(key, task, output, decision)) is not None:
            cached.append(task)
        artifacts[key] = str(path) if path is not None and path.exists() else None
    selection = json.loads(Path(artifacts["selection"]).read_text()) if artifacts["selection"] else None
    # select_trial's adapter is the winning trial's own (its URI, not a copy): the folder lies in that trial's branch
    artifacts["adapter"] = str(Path(selection["adapter"]["uri"]) / "adapter") if selection else None
    if artifacts["token_boundary_report"]:
        artifacts["token_boundary_report"] = str(Path(artifacts["token_boundary_report"]) / "records.jsonl")
    evaluation, models = None, {}
    if artifacts["evaluation"] and (Path(artifacts["evaluation"]) / "evaluation.json").exists():
        evaluation = json.loads((Path(artifacts["evaluation"]) / "evaluation.json").read_text())
        models = evaluation["models"]
    version = None
    if registry.exists():
        from petqlora.registry.local import LocalRegistry

        found = [v for v in LocalRegistry(registry).list_versions(params["model_name"] if "model_name" in params
                                                                      else "petqlora-gemma4-pets")
                 if v.run_id == run_dir.name]
        version = found[0].ref if found else None
    failed = re.search(r"Inner task failed: '([\w-]+)'", error or "")
    return {
        "status": status, "error": error, "failed_step": failed.group(1) if failed else None,
        "run": run_dir.name, "wall_time_s": round(wall, 1),
        "models": models, "registered": version is not None, "model_version": version,
        "decision_reason": evaluation["reason"] if evaluation else (decision or {}).get("reason"),
        "table": evaluation["table"] if evaluation else None,
        "training": decision, "cached": cached, **_dataset_identity(artifacts["dataset"]),
        "trials": selection["trials"] if selection else None, "winner": selection["winner"] if selection else None,
        "artifacts": artifacts, "registry": str(registry), "parameters": params,
    }


def _dataset_identity(dataset: str | None) -> dict:
    """The dataset's hash and the source fingerprint it was prepared from (its manifest and report)."""
    if dataset is None or not (Path(dataset) / "manifest.json").is_file():
        return {"dataset_hash": None, "source_fingerprint": None}
    report = Path(dataset) / "report.json"
    source = json.loads(report.read_text()).get("source", {}) if report.is_file() else {}
    return {"dataset_hash": json.loads((Path(dataset) / "manifest.json").read_text())["dataset_hash"],
            "source_fingerprint": source.get("fingerprint")}


def print_summary(summary: dict, output_dir: Path) -> None:
    print()
    if summary["table"]:
        print(summary["table"])
    if summary.get("trials") and len(summary["trials"]) > 1:
        from petqlora.trials.report import trials_markdown

        print(trials_markdown(summary["trials"], summary["winner"]))
    if summary["status"] != "succeeded":
        print(f"\nThe pipeline FAILED: {summary['error']}")
    elif summary["training"] and not summary["training"]["train"]:
        print(f"\nNo training: {summary['decision_reason']}")
    elif summary["registered"]:
        print("\n" + decision_sentence(True, summary["decision_reason"] or "(no reason recorded)",
                                       summary["model_version"]))
        print(f"Lineage: python pipeline.py lineage {summary['model_version']} --registry {summary['registry']}")
    else:
        print("\n" + decision_sentence(False, summary["decision_reason"] or "(no reason recorded)", None))
    if summary["cached"]:
        print(f"Reused from the cache (inputs unchanged): {', '.join(summary['cached'])}")
    if summary["artifacts"].get("evaluation_report"):
        print(f"Report: {summary['artifacts']['evaluation_report']}")
    print(f"Summary: {output_dir / 'run_summary.json'} ({summary['wall_time_s']}s)")
