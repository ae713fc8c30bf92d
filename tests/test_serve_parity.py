"""Serving parity (serve/parity.py, the check_serving step) against a real evaluate output on a tiny Gemma 4
and a real trained adapter: the server, a subprocess on a free port, answers the test split as evaluate did;
a predictions file that disagrees fails naming the image ids; the step checks the version a local registry
holds and skips, saying why, with the Vertex registry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from petqlora.evaluation.evaluate import EvalConfig, evaluate
from petqlora.registry.local import LocalRegistry
from petqlora.serve import parity
from petqlora.serve.parity import PROBABILITY_TOLERANCE, ParityError, check_parity, check_registered
from petqlora.train.config import TrainConfig
from petqlora.train.train_adapter import train_adapter


@pytest.fixture(scope="module")
def run(tiny_checkpoint, pets_dataset, tmp_path_factory) -> dict:
    """A trained adapter and evaluate's finetuned output on the test split, as run_evaluate lays them out."""
    dataset = pets_dataset(4)
    root = tmp_path_factory.mktemp("parity")
    base = str(tiny_checkpoint("gemma4-31b"))
    train_adapter(dataset, root / "train", TrainConfig(
        base_model=base, lora_r=4, lora_alpha=4, lora_dropout=0.0, batch_size=4, grad_accum=1, max_steps=2,
        learning_rate=1e-2, warmup_ratio=0.0, image_token_budget=70, checkpoint_every=0, log_every=1, seed=5))
    adapter = root / "train" / "adapter"
    # batch_size 4 over the 6 test images: one full and one partial packed batch
    evaluate(dataset, root / "evaluation" / "finetuned", EvalConfig(
        name="finetuned", base_model=base, adapter=str(adapter), image_token_budget=70, device="cpu", batch_size=4))
    return {"dataset": str(dataset), "adapter": str(adapter), "evaluation": str(root / "evaluation"), "root": root}


def test_the_served_test_split_matches_evaluate(run):
    result = check_parity(adapter_dir=run["adapter"], dataset_dir=run["dataset"], evaluation_dir=run["evaluation"],
                          model_version="pets@1")
    rows = (Path(run["evaluation"]) / "finetuned" / "predictions.jsonl").read_text().splitlines()
    assert result["n"] == len(rows) == 6
    assert result["different_class"] == result["different_probabilities"] == []
    assert result["max_abs_probability_gap"] <= PROBABILITY_TOLERANCE and result["model_version"] == "pets@1"


def test_aip_routes_in_the_environment_do_not_move_the_checked_server(run, monkeypatch):
    """Run by hand where Vertex's variables are set (a serving container), the server started for the check
    must still answer on the routes the check calls."""
    monkeypatch.setenv("AIP_HEALTH_ROUTE", "/v1/ready")
    monkeypatch.setenv("AIP_PREDICT_ROUTE", "/v1/models/pets:predict")
    result = check_parity(adapter_dir=run["adapter"], dataset_dir=run["dataset"], evaluation_dir=run["evaluation"],
                          timeout_s=60)
    assert result["n"] == 6 and result["different_class"] == []


def test_a_disagreeing_prediction_fails_naming_the_image(run, tmp_path):
    evaluation = tmp_path / "evaluation"
    shutil.copytree(run["evaluation"], evaluation)
    path = evaluation / "finetuned" / "predictions.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    classes = json.loads((evaluation / "finetuned" / "result.json").read_text())["classes"]
    rows[1]["prediction"] = next(c for c in classes if c != rows[1]["prediction"])  # another class
    # the top class kept, half a nat above the runner-up: the same class, another probability
    scores = rows[4]["scores"]
    top, second = sorted(range(len(scores)), key=lambda i: -scores[i])[:2]
    before = parity.softmax(scores)[top]
    scores[top] = scores[second] + 0.5
    assert abs(parity.softmax(scores)[top] - before) > 5 * PROBABILITY_TOLERANCE
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ParityError) as err:
        check_parity(adapter_dir=run["adapter"], dataset_dir=run["dataset"], evaluation_dir=str(evaluation))
    text = str(err.value)
    assert f"different class: {rows[1]['id']} (evaluate" in text
    assert f"more than 0.0002: {rows[4]['id']} (gap" in text
    assert "differs from evaluate on 2 of 6 images" in text


def test_the_step_checks_the_registered_version_of_a_local_registry(run, tmp_path):
    registry = tmp_path / "registry.sqlite"
    ref = LocalRegistry(registry).register("pets", run["adapter"], run_id="run-1", metrics={"finetuned_accuracy": 0.5},
                                           labels={}, aliases=["candidate"], lineage={}, make_default=True).ref
    report = tmp_path / "report.md"
    result = check_registered(registry=str(registry), model_version=ref, dataset_dir=run["dataset"],
                              evaluation_dir=run["evaluation"], report_md=str(report))
    assert result["model_version"] == ref == "pets@1"
    assert "answers the 6 test images as evaluate did" in report.read_text()


def test_the_step_is_skipped_with_the_reason_on_vertex(tmp_path):
    report = tmp_path / "report.md"
    result = check_registered(registry="vertex", model_version="projects/p/locations/r/models/1@1", dataset_dir="-",
                              evaluation_dir="-", report_md=str(report))
    assert "needs a GPU" in result["skipped"] and "**skipped**" in report.read_text()


def test_a_server_that_cannot_start_fails_with_its_log(run, tmp_path):
    shutil.copytree(run["adapter"], tmp_path / "adapter")
    (tmp_path / "adapter" / "serving.json").unlink()
    with pytest.raises(ParityError, match=r"exited with code 1 before it was ready:(.|\n)*serving.json: no such file"):
        check_parity(adapter_dir=str(tmp_path / "adapter"), dataset_dir=run["dataset"],
                     evaluation_dir=run["evaluation"])


def test_the_command_line_prints_the_comparison(run, capsys):
    args = ["--adapter", run["adapter"], "--dataset", run["dataset"], "--evaluation", run["evaluation"]]
    assert parity.main(args) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 6
