"""Reruns of the whole local pipeline (kfp.local, caching on) into one output folder, as a weekly schedule
would make them: an unchanged folder reuses its prepared dataset and skips the GPU (the champion was trained
on it with this config) and says why; force_training trains anyway; one added image gives a new fingerprint,
a new dataset and a training run."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


def _run(out: Path, config: Path) -> tuple[subprocess.CompletedProcess, dict]:
    result = subprocess.run([sys.executable, "pipeline.py", "run-local", "--output-dir", str(out), "--config",
                             str(config)], cwd=ROOT, capture_output=True, text=True, timeout=2400)
    summary = json.loads((out / "run_summary.json").read_text())
    assert result.returncode == 0 and summary["status"] == "succeeded", result.stdout[-4000:] + result.stderr[-4000:]
    return result, summary


def _config(tmp_path: Path, folder: Path, name: str, **parameters) -> Path:
    config = yaml.safe_load((ROOT / "configs/local.yaml").read_text())
    config["dataset"] = {"path": str(folder)}
    config["parameters"].update(epochs=3, **parameters)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def test_reruns_reuse_unchanged_data_skip_the_champion_s_training_and_retrain_on_new_images(tmp_path):
    from petqlora.data.synthetic import generate_synthetic_pets

    folder = generate_synthetic_pets(tmp_path / "pets", per_class=24, seed=0)
    out = tmp_path / "out"
    config = _config(tmp_path, folder, "local.yaml")

    _, first = _run(out, config)  # trains and registers version 1
    assert first["cached"] == [] and first["training"]["train"] is True
    assert first["registered"] and first["model_version"].endswith("@1"), first["decision_reason"]
    assert first["source_fingerprint"].startswith("sha256:") and first["dataset_hash"]

    result, again = _run(out, config)  # nothing changed
    assert sorted(again["cached"]) == ["prepare-data", "validate-token-boundaries"]
    assert again["artifacts"]["dataset"] == first["artifacts"]["dataset"]  # the first run's dataset, reused
    assert (again["source_fingerprint"], again["dataset_hash"]) == (first["source_fingerprint"], first["dataset_hash"])
    assert again["training"]["train"] is False and again["training"]["champion"] == first["model_version"]
    assert "training skipped" in again["decision_reason"] and "force_training=true" in again["decision_reason"]
    assert again["artifacts"]["adapter"] is None and again["models"] == {} and not again["registered"]
    assert "No training: training skipped" in result.stdout

    _, forced = _run(out, _config(tmp_path, folder, "force.yaml", force_training=True))  # nothing changed, forced
    assert forced["training"]["train"] is True and "force_training=true" in forced["training"]["reason"]
    assert sorted(forced["cached"]) == ["prepare-data", "validate-token-boundaries"]
    assert forced["artifacts"]["adapter"] is not None and "champion" in forced["models"]

    extra = generate_synthetic_pets(tmp_path / "extra", per_class=1, seed=7, breeds=["shiba_inu"])
    shutil.copy(next((extra / "shiba_inu").iterdir()), folder / "shiba_inu" / "shiba_inu_added.jpg")
    _, grown = _run(out, config)  # one image more
    assert grown["source_fingerprint"] != first["source_fingerprint"]
    assert grown["dataset_hash"] != first["dataset_hash"] and "prepare-data" not in grown["cached"]
    assert grown["training"]["train"] is True and "dataset_hash" in grown["training"]["reason"]
    assert grown["artifacts"]["adapter"] is not None
