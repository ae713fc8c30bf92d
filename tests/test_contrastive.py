"""The contrastive baseline (evaluation/contrastive.py) on tiny random SigLIP and CLIP checkpoints built
offline, on CPU: the checkpoints load through the loader; the scores are the image-text similarity computed
by hand and the library's own logits_per_image; evaluate() writes the usual result.json for the family; the
registration gate counts the contrastive baseline only when asked; its parameters are checked before spend.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from petqlora import params
from petqlora.data import dataset as data_lib
from petqlora.evaluation.contrastive import (PROMPT_TEMPLATE, class_prompts, encode_prompts, is_contrastive,
                                             load_contrastive, score_images)
from petqlora.evaluation.evaluate import EvalConfig, evaluate
from petqlora.evaluation.tiny_contrastive import build_tiny_contrastive
from petqlora.run_checks import check_run
from petqlora.steps import APPROACHES, registration_decision

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("contrastive")
    return {v: build_tiny_contrastive(v, root / v) for v in ("siglip", "clip")}


@pytest.fixture(scope="module")
def dataset(pets_dataset) -> Path:
    return pets_dataset(4)


@cache
def _load(path: str):
    return load_contrastive(path, CPU)


# ------------------------------------------------------------------------------------------ the checkpoints


@pytest.mark.parametrize("variant, model_class, tokenizer_class", [
    ("siglip", "SiglipModel", "GemmaTokenizer"), ("clip", "CLIPModel", "CLIPTokenizer")])
def test_tiny_checkpoint_builds_offline_and_loads_through_the_loader(checkpoints, variant, model_class,
                                                                     tokenizer_class):
    folder = checkpoints[variant]
    names = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in names and not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    assert is_contrastive(folder) and json.loads((folder / "config.json").read_text())["model_type"] == variant
    cm = _load(str(folder))
    assert (type(cm.model).__name__, type(cm.processor.tokenizer).__name__, cm.model_type) \
        == (model_class, tokenizer_class, variant)
    assert type(cm.processor.image_processor).__name__.endswith("Pil")  # no torchvision needed
    assert not cm.model.training


def test_a_gemma_checkpoint_is_not_contrastive_and_the_loader_refuses_it(tiny_checkpoint):
    gemma = tiny_checkpoint("gemma3")
    assert not is_contrastive(gemma)
    with pytest.raises(ValueError, match="model_type 'gemma3' is not a contrastive image-text model"):
        load_contrastive(gemma, CPU)


def test_one_prompt_per_class_from_the_template():
    assert class_prompts(["yorkshire_terrier", "Pug"]) == ["a photo of a yorkshire terrier, a type of pet.",
                                                          "a photo of a pug, a type of pet."]
    assert PROMPT_TEMPLATE.format(label="beagle") == "a photo of a beagle, a type of pet."


# ------------------------------------------------------------------------------------------ the scores


@pytest.mark.parametrize("variant", ["siglip", "clip"])
def test_scores_are_the_image_text_similarity_computed_by_hand(checkpoints, dataset, variant):
    cm = _load(str(checkpoints[variant]))
    classes = data_lib.read_manifest(dataset)["classes"]
    images = [data_lib.load_image(dataset, rec) for rec in data_lib.read_split(dataset, "test")[:4]]
    prompts = class_prompts(classes)
    scores = score_images(cm, images, encode_prompts(cm, prompts))
    assert scores.shape == (4, len(classes))

    # By hand: each tower's pooled (and, for CLIP, projected) embedding, normalized in numpy, cosine
    # similarity times exp(logit_scale), plus logit_bias for SigLIP.
    kwargs = {"padding": "max_length", "max_length": 64} if variant == "siglip" else {"padding": True}
    text_in = cm.processor.tokenizer(prompts, return_tensors="pt", **kwargs)
    pixels = cm.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        text = cm.model.text_model(**text_in).pooler_output
        image = cm.model.vision_model(pixel_values=pixels).pooler_output
        if variant == "clip":
            text, image = cm.model.text_projection(text), cm.model.visual_projection(image)
    text, image = text.double().numpy(), image.double().numpy()
    cosine = (image / np.linalg.norm(image, axis=1, keepdims=True)) @ (text / np.linalg.norm(text, axis=1,
                                                                                           keepdims=True)).T
    hand = cosine * np.exp(cm.model.logit_scale.item())
    if variant == "siglip":
        hand = hand + cm.model.logit_bias.item()
    np.testing.assert_allclose(scores, hand, rtol=1e-5, atol=1e-5)

    # ... and the library's own logits of the whole model, prompts and images in one forward.
    with torch.no_grad():
        library = cm.model(**cm.processor(text=prompts, images=images, return_tensors="pt", **kwargs)).logits_per_image
    np.testing.assert_allclose(scores, library.numpy(), rtol=1e-5, atol=1e-5)
    # The probabilities each family reads (sigmoid per class, softmax over classes) rank as the logits do.
    probs = torch.sigmoid(library) if variant == "siglip" else library.softmax(-1)
    assert (probs.argmax(-1).numpy() == scores.argmax(-1)).all()
    assert len({tuple(row) for row in np.round(scores, 5)}) == 4  # the images do differ


def test_a_prompt_longer_than_the_text_tower_is_refused_not_truncated(checkpoints):
    cm = _load(str(checkpoints["siglip"]))
    with pytest.raises(ValueError, match=r"class prompt .* tokens; the siglip text tower reads 64.*fix:"):
        encode_prompts(cm, class_prompts(["very long breed name " * 8]))


# ------------------------------------------------------------------------------------------ evaluate()


def test_evaluate_writes_the_same_result_keys_for_the_contrastive_family(checkpoints, dataset, tmp_path,
                                                                         tiny_checkpoint):
    # mode=generate would decode with a Gemma model; a contrastive one still scores by similarity.
    cfg = EvalConfig(name="contrastive_baseline", base_model=str(checkpoints["siglip"]), device="cpu",
                     batch_size=4, mode="generate")
    result = evaluate(dataset, tmp_path / "siglip", cfg)
    saved = json.loads((tmp_path / "siglip" / "result.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["family"] == "contrastive" and saved["model_type"] == "siglip"
    assert saved["prompt_template"] == PROMPT_TEMPLATE
    gemma = evaluate(dataset, tmp_path / "gemma", EvalConfig(name="gemma3_baseline", device="cpu", quantize="none",
                                                            base_model=str(tiny_checkpoint("gemma3"))))
    assert set(gemma) <= set(saved)  # every key the report reads, for every family

    classes = data_lib.read_manifest(dataset)["classes"]
    records = data_lib.read_split(dataset, "test")
    rows = [json.loads(line) for line in (tmp_path / "siglip" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in records] and saved["n_eval"] == len(records) == 6
    cm = _load(str(checkpoints["siglip"]))
    expected = score_images(cm, [data_lib.load_image(dataset, r) for r in records], encode_prompts(
        cm, class_prompts(classes)))
    np.testing.assert_allclose([r["scores"] for r in rows], expected, atol=1e-4)  # batches of 4 and 2 = one of 6
    assert [r["prediction"] for r in rows] == [classes[i] for i in expected.argmax(1)]
    assert saved["accuracy"] == pytest.approx(np.mean([r["prediction"] == r["label"] for r in rows]))
    top3 = [r["label"] in [classes[i] for i in np.argsort(-np.array(r["scores"]))[:3]] for r in rows]
    assert saved["top3_accuracy"] == pytest.approx(np.mean(top3))
    assert saved["unparseable_rate"] == 0.0 and saved["images_per_s"] > 0 and saved["memory_kind"] == "CPU RSS"


# ------------------------------------------------------------------------------------------ the gate


BEATS_GEMMA_NOT_SIGLIP = {"finetuned": 0.80, "gemma4_baseline": 0.50, "gemma3_baseline": 0.40,
                          "contrastive_baseline": 0.90}


def test_gate_off_registers_and_reports_the_contrastive_baseline():
    register, reason = registration_decision(BEATS_GEMMA_NOT_SIGLIP, 0.02, gate_on_contrastive=False)
    assert register is True
    assert reason == ("registered: fine-tuned accuracy 0.800 beats gemma4_baseline 0.500 by 0.300 "
                      "(contrastive_baseline 0.900, not beaten: reported, not gated, as gate_on_contrastive is off)")


def test_gate_on_refuses_naming_the_contrastive_baseline():
    register, reason = registration_decision(BEATS_GEMMA_NOT_SIGLIP, 0.02, gate_on_contrastive=True)
    assert register is False
    assert reason == ("not registered: fine-tuned accuracy 0.800 does not beat the best baseline "
                      "(contrastive_baseline 0.900) by the margin 0.020")


@pytest.mark.parametrize("contrastive, margin, registered", [(0.79, 0.02, False), (0.78, 0.02, True),
                                                             (0.80, 0.0, False)])
def test_gate_on_needs_the_margin_over_the_contrastive_baseline_too(contrastive, margin, registered):
    accuracy = {**BEATS_GEMMA_NOT_SIGLIP, "contrastive_baseline": contrastive}
    register, reason = registration_decision(accuracy, margin, gate_on_contrastive=True)
    assert register is registered and "contrastive_baseline" in reason
    assert registration_decision(accuracy, margin)[0] is True  # off: the Gemma baselines decide


def test_gate_on_without_a_contrastive_result_is_an_error_not_a_silent_pass():
    without = {k: v for k, v in BEATS_GEMMA_NOT_SIGLIP.items() if k != "contrastive_baseline"}
    with pytest.raises(ValueError, match="gate_on_contrastive=True but no contrastive baseline was evaluated"):
        registration_decision(without, 0.02, gate_on_contrastive=True)
    assert registration_decision(without, 0.02) == (True, "registered: fine-tuned accuracy 0.800 beats "
                                                          "gemma4_baseline 0.500 by 0.300")


def test_the_contrastive_row_has_its_approach_name():
    assert APPROACHES["contrastive_baseline"] == "Contrastive baseline (SigLIP / CLIP, zero-shot)"


# ------------------------------------------------------------------------------------------ parameters


def test_local_config_builds_the_tiny_siglip_and_leaves_the_gate_off():
    config = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    assert config["models"]["contrastive_baseline"] == "tiny:siglip"
    parsed = params.parse({**config["parameters"], **config["models"]})
    assert (parsed.contrastive_baseline, parsed.gate_on_contrastive) == ("tiny:siglip", False)


def test_cloud_defaults_name_siglip2_and_do_not_gate():
    assert (params.DEFAULTS.contrastive_baseline, params.DEFAULTS.gate_on_contrastive) \
        == ("google/siglip2-so400m-patch14-384", False)
    assert check_run({}, context="template").contrastive_baseline == "google/siglip2-so400m-patch14-384"


@pytest.mark.parametrize("values, expected", [
    ({"gate_on_contrastive": True, "contrastive_baseline": ""},
     "gate_on_contrastive=True: needs a contrastive_baseline to beat; fix: set contrastive_baseline"),
    ({"contrastive_baseline": "google/siglip2 so400m"},
     "contrastive_baseline='google/siglip2 so400m': must be a checkpoint without spaces; fix: e.g. "),
    ({"gate_on_contrastive": "yes"}, "gate_on_contrastive='yes': must be true or false"),
], ids=["gate-without-baseline", "spaces", "not-a-bool"])
def test_bad_contrastive_parameters_are_refused_in_one_message(values, expected):
    with pytest.raises(ValueError) as info:
        check_run(values, context="template")
    message = str(info.value)
    assert expected in message and message.count("\n  - ") == 1, message


def test_a_local_gemma_folder_as_the_contrastive_baseline_is_refused_before_the_run(tiny_checkpoint, tmp_path):
    gemma = str(tiny_checkpoint("gemma3"))
    values = {"contrastive_baseline": gemma, "registry": str(tmp_path / "registry.sqlite"),
              "backend": {"kind": "local"}, "project": "local", "region": "local"}
    with pytest.raises(ValueError, match=r"contrastive_baseline=.*is a 'gemma3' checkpoint, not a contrastive"):
        check_run(values, context="here")
    assert check_run({**values, "contrastive_baseline": ""}, context="here").contrastive_baseline == ""


def test_run_local_builds_tiny_siglip_and_leaves_an_empty_baseline_empty(tmp_path):
    from petqlora.local_run import resolve_model

    built = resolve_model("tiny:siglip", tmp_path)
    assert is_contrastive(built) and Path(built) == (tmp_path / "siglip").resolve()
    assert resolve_model("", tmp_path) == ""
