"""The whole pipeline on this machine (kfp.local), as `make run` runs it, plus its failure and no-win paths."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


def run_local(out: Path, config: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    result = subprocess.run([sys.executable, "pipeline.py", "run-local", "--output-dir", str(out), "--config",
                             str(config), *extra], cwd=ROOT, capture_output=True, text=True, timeout=1500)
    summary = json.loads((out / "run_summary.json").read_text())
    return result, summary


def small_config(tmp_path: Path, name: str, **parameters) -> Path:
    config = yaml.safe_load((ROOT / "configs/local.yaml").read_text())
    config["parameters"].update(parameters)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result, summary = run_local(out, ROOT / "configs/local.yaml")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out, result, summary


def test_default_run_trains_a_winner_and_registers_it(default_run):
    out, result, summary = default_run
    models = summary["models"]
    assert set(models) == {"finetuned", "gemma4_baseline", "gemma3_baseline", "contrastive_baseline"}
    for values in models.values():
        assert {"accuracy", "macro_f1", "n_eval"} <= set(values)
        assert values["n_eval"] == models["finetuned"]["n_eval"] > 0  # one held-out split for all
    assert models["finetuned"]["accuracy"] > max(models["gemma4_baseline"]["accuracy"],
                                                 models["gemma3_baseline"]["accuracy"])
    assert summary["registered"] is True
    assert summary["model_version"] == "petqlora-gemma4-pets@1"
    assert "Gemma 4 + QLoRA (fine-tuned)" in result.stdout
    # The tiny random SigLIP is evaluated beside the Gemma baselines, in the table, reported but not gated.
    assert "Contrastive baseline (SigLIP / CLIP, zero-shot)" in summary["table"]
    assert "(contrastive_baseline " in summary["decision_reason"] and "not gated" in summary["decision_reason"]
    # The train step logged the trainer's progress.json while it ran; the trainer's own lines, relayed by the
    # step, carry one timestamp each and their own level.
    lines = result.stdout.splitlines()
    assert [line for line in lines if "train_adapter progress: step" in line][-1].endswith(", done")
    relayed = [line for line in lines if " INFO petqlora.train.train_adapter: step " in line]
    assert relayed and all(len(re.findall(r"\d\d:\d\d:\d\d", line)) == 1 for line in relayed), relayed[:3]
    assert "Registered as model version petqlora-gemma4-pets@1: fine-tuned accuracy" in result.stdout
    # check_serving: the registered version, served over HTTP, answered the test split as evaluate did
    report = (out / "pipeline_root" / summary["run"] / "check-serving" / "report").read_text()
    assert "as evaluate did" in report and "`petqlora-gemma4-pets@1`" in report


def test_default_run_trains_both_trials_and_registers_the_winner(default_run):
    """configs/local.yaml's two trials: both trained and scored on the validation split, the best (a tie to the
    cheaper) alone evaluated on the test split and registered; every trial in the report."""
    from petqlora.registry.local import LocalRegistry
    from petqlora.trials.plan import sweep_fingerprint
    from petqlora.trials.select import TrialResult, select_winner

    out, result, summary = default_run
    trials = summary["trials"]
    assert [t["index"] for t in trials] == [0, 1]
    assert [t["image_token_budget"] for t in trials] == [70, 140] and [t["lora_r"] for t in trials] == [16, 8]
    for t in trials:
        assert 0 <= t["validation_accuracy"] <= 1 and t["validation_examples"] > 0 and t["gpu_seconds"] > 0
        assert t["samples_per_s"] > 0 and Path(t["adapter_uri"], "adapter", "adapter_model.safetensors").is_file()
    winner, _ = select_winner([TrialResult.from_dict(t) for t in trials])
    assert summary["winner"] == winner.index
    # the winner's own adapter went on to the test split and the registry (not a loser's, not a copy)
    assert summary["artifacts"]["adapter"] == str(Path(winner.adapter_uri) / "adapter")
    evaluation = json.loads((Path(summary["artifacts"]["evaluation"]) / "evaluation.json").read_text())
    assert evaluation["details"]["image token budget"].startswith(f"{winner.image_token_budget} soft tokens")
    assert evaluation["trials"]["winner"] == winner.index
    version = LocalRegistry(summary["registry"]).default_version("petqlora-gemma4-pets")
    assert version.artifact_uri == summary["artifacts"]["adapter"]
    # the token report of the winner's budget: plan_trials' for the trial's 140, validate_token_boundaries' for 70
    token_report = version.lineage["token_boundary_report"]["uri"]
    assert token_report.endswith("budget140-max_length1024" if winner.image_token_budget == 140 else "/records")
    # decide_training compares the sweep's fingerprint next time
    assert version.labels["config_fingerprint"] == sweep_fingerprint([t["config_fingerprint"] for t in trials])[:63]
    # every trial, the losers too, in the report and the console
    html = (out / "report.html").read_text()
    assert "<h2>Trials (validation split)</h2>" in html and html.count("image_token_budget") >= 1
    assert "### Trials (validation split)" in result.stdout and result.stdout.count("| winner |") == 1
    assert "&quot;lora_r&quot;: 8" in html  # the losing trial's overrides too, whichever lost


def test_default_run_artifacts(default_run):
    out, _, summary = default_run
    art = summary["artifacts"]
    assert (Path(art["dataset"]) / "manifest.json").exists()
    assert (Path(art["adapter"]) / "adapter_model.safetensors").exists()
    assert Path(art["evaluation_report"]) == (out / "report.html").resolve()  # a name a browser opens
    html = Path(art["evaluation_report"]).read_text()
    assert "<table" in html and "Gemma 3 baseline" in html and "<h2>Run details</h2>" in html
    records = [json.loads(line) for line in Path(art["token_boundary_report"]).read_text().splitlines()]
    assert records and all(r["ok"] for r in records)
    assert {"example_id", "image_tokens", "expected_image_tokens", "supervised_text", "label", "ok",
            "problem"} <= set(records[0])
    assert len({r["image_tokens"] for r in records}) > 2  # aspect ratios give varied soft-token counts
    assert all(r["supervised_text"] == r["label"] + "<turn|>" for r in records)


def test_lineage_prints_the_whole_chain(default_run):
    out, _, summary = default_run
    result = subprocess.run([sys.executable, "pipeline.py", "lineage", summary["model_version"], "--registry",
                             summary["registry"]], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    positions = [text.find(word) for word in ("dataset", "token", "adapter", "evaluation")]
    assert all(p >= 0 for p in positions) and positions == sorted(positions)
    assert summary["artifacts"]["adapter"].rsplit("/adapter", 1)[0] in text


def test_a_run_that_does_not_win_registers_nothing_and_says_why(default_run, tmp_path):
    """Same output dir (so version 1 is the champion), an Oxford-layout dataset, and an adapter barely trained."""
    from petqlora.data.synthetic import generate_synthetic_pets

    out, _, _ = default_run
    oxford = generate_synthetic_pets(tmp_path / "oxford", per_class=16, seed=7, layout="oxford")
    config = small_config(tmp_path, "no_win.yaml", learning_rate=1e-7, trials=[],  # one run: no sweep
                          train_options={"max_steps": 1, "checkpoint_every": 0})
    result, summary = run_local(out, config, "--dataset", str(oxford))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert summary["registered"] is False and summary["model_version"] is None
    assert "champion" in summary["models"]  # the registered version was evaluated on the same split
    assert summary["decision_reason"].startswith("not registered")
    assert "\nNot registered: fine-tuned accuracy" in result.stdout
    # a run of one trial is not scored on the validation split: nothing to choose
    [trial] = summary["trials"]
    assert trial["validation_accuracy"] is None and trial["overrides"] == {}
    assert "Trials (validation split)" not in Path(summary["artifacts"]["evaluation_report"]).read_text()


def test_a_broken_example_fails_validation_before_training(tmp_path):
    """max_length one token short of the longest example: that example's answer would be cut."""
    from petqlora.gemma.encoding import PromptEncoder
    from petqlora.local_run import resolve_dataset, resolve_model
    from petqlora.data.prepare_data import PrepareDataConfig, prepare_data
    from petqlora.gemma.processors import load_processor
    from petqlora.data import dataset as data_lib
    from petqlora.train.examples import sequence_length

    out = tmp_path / "run"
    folder = resolve_dataset({"synthetic": {"per_class": 8, "seed": 3}}, None, out / "data")
    model = resolve_model("tiny:gemma4-31b", out / "models")
    ds = prepare_data(PrepareDataConfig(source=folder), tmp_path / "ds").path
    encoder = PromptEncoder(load_processor(model, "gemma4", 70), "gemma4", data_lib.read_manifest(ds)["instruction"])
    lengths = {r["id"]: sequence_length(encoder, r) for s in data_lib.SPLITS for r in data_lib.read_split(ds, s)}
    longest = max(lengths.values())
    broken = sorted(i for i, n in lengths.items() if n == longest)
    config = yaml.safe_load((ROOT / "configs/local.yaml").read_text())
    config["dataset"] = {"synthetic": {"per_class": 8, "seed": 3}}
    config["parameters"]["max_length"] = longest - 1
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    result, summary = run_local(out, path)
    assert result.returncode != 0
    assert summary["status"] == "failed" and summary["failed_step"] == "validate-token-boundaries"
    log = result.stdout + result.stderr
    for example_id in broken:
        assert example_id in log
    assert "exceed max_length" in log
    assert summary["artifacts"]["adapter"] is None  # no training was paid for
