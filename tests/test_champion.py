"""decide_training: a run skips the GPU only when the registry's default version records this dataset hash and
this training-config fingerprint (what register_model records), unless force_training; the local registry
and Vertex (through the real SDK against tests/fakes) give the same decision."""

from __future__ import annotations

import json

import pytest
from google.auth.credentials import AnonymousCredentials

from petqlora.registry.champion import Champion, config_fingerprint, find_champion, training_decision
from petqlora.steps import run_decide_training, run_register_model

from fakes.vertex_api import FakeVertexAPI

CONFIG = {"base_model": "/models/tiny", "lora_r": 16, "lora_alpha": 32, "epochs": 4.0, "learning_rate": 0.003,
          "batch_size": 8, "grad_accum": 1, "image_token_budget": 70, "max_length": 512, "seed": 42,
          "lora_dropout": 0.0, "checkpoint_every": 20, "log_every": 12}
DATASET_HASH = "d" * 64
NAME = "petqlora-gemma4-pets"


# ---- the config fingerprint


def test_the_fingerprint_is_the_parsed_config_not_its_spelling():
    base = config_fingerprint(CONFIG)
    assert base == config_fingerprint(dict(CONFIG, lora_r=16.0, epochs=4))  # KFP's Struct turns 16 into 16.0
    assert base == config_fingerprint({**CONFIG, "warmup_ratio": 0.03})  # a default given explicitly
    assert len(base) == 64 and int(base, 16) >= 0


@pytest.mark.parametrize("change", [{"lora_r": 8}, {"learning_rate": 1e-4}, {"base_model": "/models/other"},
                                    {"seed": 1}, {"adapt_vision": False}, {"max_steps": 3},
                                    {"image_token_budget": 140}])
def test_anything_that_changes_the_adapter_changes_the_fingerprint(change):
    assert config_fingerprint({**CONFIG, **change}) != config_fingerprint(CONFIG)


@pytest.mark.parametrize("change", [{"checkpoint_every": 5}, {"log_every": 1}, {"keep_checkpoints": 4}])
def test_bookkeeping_does_not_change_the_fingerprint(change):
    assert config_fingerprint({**CONFIG, **change}) == config_fingerprint(CONFIG)


def test_a_bad_config_is_refused_not_fingerprinted():
    with pytest.raises(ValueError, match="lora_r"):
        config_fingerprint({**CONFIG, "lora_r": 0})


# ---- the decision


def _champion(dataset_hash=DATASET_HASH, config=CONFIG) -> Champion:
    from petqlora.cloud.vertex_common import to_vertex_labels

    return Champion(f"{NAME}@3", to_vertex_labels({"dataset_hash": dataset_hash,
                                                   "config_fingerprint": config_fingerprint(config)}))


def _decide(champion, force=False):
    return training_decision(dataset_hash=DATASET_HASH, fingerprint=config_fingerprint(CONFIG),
                             champion=champion, force_training=force, model_name=NAME)


def test_same_data_and_config_as_the_champion_skips_and_says_why():
    train, reason = _decide(_champion())
    assert train is False
    assert f"{NAME}@3" in reason and DATASET_HASH[:12] in reason and "force_training=true" in reason


@pytest.mark.parametrize("champion, expected", [
    (None, "no version of petqlora-gemma4-pets is registered"),
    (_champion(dataset_hash="e" * 64), "dataset_hash eeeeeeeeeeeeee there, dddddddddddd now"),
    (_champion(config={**CONFIG, "lora_r": 8}), "config_fingerprint"),
    (Champion(f"{NAME}@1", {"dataset_hash": DATASET_HASH[:63]}), "config_fingerprint (not recorded)"),
], ids=["no-champion", "new-data", "new-config", "old-champion-without-fingerprint"])
def test_anything_new_trains_and_says_what_changed(champion, expected):
    train, reason = _decide(champion)
    assert train is True and expected in reason


def test_force_training_trains_even_on_the_champion_s_data():
    assert _decide(_champion(), force=True) == (True, "training: force_training=true (the champion is not consulted)")


# ---- what register_model records is what decide_training compares (the local registry, then Vertex)


def _registration(tmp_path, dataset_hash=DATASET_HASH, config=CONFIG) -> dict:
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir(exist_ok=True)
    (evaluation / "evaluation.json").write_text(json.dumps({  # as run_evaluate writes it
        "register": True, "reason": "registered: wins", "classes": ["cat", "dog"], "confusion_matrix": [[5, 0], [1, 4]],
        "models": {k: {"accuracy": 0.9, "macro_f1": 0.9, "n_eval": 10}
                   for k in ("finetuned", "gemma4_baseline", "gemma3_baseline")}}))
    lineage = {"dataset": {"uri": "d", "sha256": dataset_hash, "inputs": {}},
               "adapter": {"uri": "a", "sha256": "a" * 64,
                           "inputs": {"config_fingerprint": config_fingerprint(config)}}}
    return dict(adapter_dir=str(tmp_path / "adapter"), adapter_uri="gs://b/run/adapter", evaluation_dir=str(evaluation),
                lineage=lineage, model_name=NAME, serving_image="us-docker.pkg.dev/p/r/serve:0.1.0",
                code_revision="abc", dry_run=False)


def _dataset(tmp_path, dataset_hash=DATASET_HASH):
    folder = tmp_path / "dataset"
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"format": "petqlora.dataset/v1", "dataset_hash": dataset_hash}))
    return str(folder)


def _decide_step(tmp_path, registry, force=False, config=CONFIG, **cloud):
    return run_decide_training(_dataset(tmp_path), config, force_training=force, registry=registry, model_name=NAME,
                               decision_json=str(tmp_path / "decision.json"), summary_md=str(tmp_path / "summary.md"),
                               **{"project": "local", "region": "local", **cloud})


def test_local_registry_round_trip(tmp_path):
    registry = str(tmp_path / "registry.sqlite")
    assert _decide_step(tmp_path, registry)["train"] is True  # no registry yet
    ref = run_register_model(**_registration(tmp_path), run_id="run-1", registry=registry, project="", region="")
    decision = _decide_step(tmp_path, registry)
    assert decision["train"] is False and decision["champion"] == ref == f"{NAME}@1"
    assert json.loads((tmp_path / "decision.json").read_text()) == decision
    assert "**skip**" in (tmp_path / "summary.md").read_text() and ref in (tmp_path / "summary.md").read_text()
    assert _decide_step(tmp_path, registry, force=True)["train"] is True
    assert _decide_step(tmp_path, registry, config={**CONFIG, "epochs": 5.0})["train"] is True
    # a newer version on other data becomes the default: this data now trains again
    run_register_model(**_registration(tmp_path, dataset_hash="f" * 64), run_id="run-2", registry=registry,
                       project="", region="")
    assert _decide_step(tmp_path, registry)["train"] is True


def test_vertex_registry_round_trip(tmp_path):
    with FakeVertexAPI() as fake:
        cloud = {"credentials": AnonymousCredentials(), "api_endpoint": fake.endpoint}
        assert find_champion("vertex", NAME, project="my-proj", region="us-central1", **cloud) is None
        run_register_model(**_registration(tmp_path), run_id="run-1", registry="vertex", project="my-proj",
                           region="us-central1", **cloud)
        champion = find_champion("vertex", NAME, project="my-proj", region="us-central1", **cloud)
    assert champion is not None and champion.ref.endswith("@1")
    assert champion.labels["config_fingerprint"] == config_fingerprint(CONFIG)[:63]
    train, reason = training_decision(dataset_hash=DATASET_HASH, fingerprint=config_fingerprint(CONFIG),
                                      champion=champion, force_training=False, model_name=NAME)
    assert train is False and champion.ref in reason
