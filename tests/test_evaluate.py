"""evaluate on tiny random Gemma 4 / Gemma 3 checkpoints and a small synthetic pets set, on CPU.

Scoring with one prompt pass and a shared cache equals the full-sequence log-likelihood of the training
sequences (every family, KV sharing, a prompt longer than the sliding window, a LoRA-wrapped model); the
candidates are exactly what training supervises; answer matching; greedy generation; the files evaluate()
writes agree with a hand count; and a wrong config is refused once, naming every flag.
"""

from __future__ import annotations

import json
import shutil
import unicodedata
import warnings
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

from petqlora.data import dataset as data_lib
from petqlora.evaluation import evaluate as evaluate_mod
from petqlora.gemma.encoding import PromptEncoder
from petqlora.evaluation.evaluate import (
    UNPARSEABLE,
    EvalConfig,
    evaluate,
    generate_answer,
    match_answer,
    normalize_answer,
)
from petqlora.evaluation.scorers import candidate_ids, score_classes
from petqlora.gemma.masking import IGNORE_INDEX
from petqlora.gemma.modeling import load_model_and_processor
from petqlora.gemma.processors import load_processor
from petqlora.gemma.tiny_models import build_tiny_checkpoint

CPU = torch.device("cpu")
VARIANTS = ("gemma4-31b", "gemma4-e", "gemma3")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    paths = {v: build_tiny_checkpoint(v, root / v) for v in VARIANTS}
    # Real Gemma 4 E2B/E4B share the KV of their last layers, and long prompts outrun the sliding window:
    # both change what the cache holds, so score a copy of the E model with both.
    edge = root / "gemma4-e-kv-shared-short-window"
    shutil.copytree(paths["gemma4-e"], edge)
    config = json.loads((edge / "config.json").read_text())
    config["text_config"].update(num_kv_shared_layers=2, sliding_window=16)
    (edge / "config.json").write_text(json.dumps(config))
    paths["gemma4-e-kv-shared-short-window"] = edge
    # Gemma 3 with a global layer beside a sliding one whose window is shorter than the prompt (the real
    # 27B: 5 sliding layers of 1024 to 1 global, prompts of ~410 tokens fit in one window; this one does not).
    short = root / "gemma3-global-short-window"
    shutil.copytree(paths["gemma3"], short)
    config = json.loads((short / "config.json").read_text())
    config["text_config"].update(layer_types=["sliding_attention", "full_attention"], sliding_window=16)
    (short / "config.json").write_text(json.dumps(config))
    paths["gemma3-global-short-window"] = short
    return paths


@pytest.fixture(scope="module")
def dataset(pets_dataset) -> Path:
    """6 learnable synthetic breeds, 6 test images of varied aspect ratios."""
    return pets_dataset(4)


@pytest.fixture(scope="module")
def manifest(dataset) -> dict:
    return data_lib.read_manifest(dataset)


@pytest.fixture(scope="module")
def images(dataset) -> list:
    return [data_lib.load_image(dataset, rec) for rec in data_lib.read_split(dataset, "test")]


@cache
def _load(path: str, dtype: torch.dtype):
    model, processor, family = load_model_and_processor(path, quantize_4bit=False, device=CPU,
                                                        image_token_budget=70, dtype=dtype)
    return model.eval(), processor, family


def _lora(model, seed: int = 1):
    """A LoRA-wrapped copy of `model` whose adapter really changes the outputs (B is not left at zero)."""
    from peft import get_peft_model

    from petqlora.gemma.lora import LoraSettings, build_lora_config

    peft_model = get_peft_model(model, build_lora_config(model, LoraSettings(r=4, alpha=8, dropout=0.0)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float64).to(param.dtype) * 0.2)
    return peft_model.eval()


@torch.no_grad()
def full_sequence_loglik(model, encoder: PromptEncoder, image, classes: list[str]) -> np.ndarray:
    """The reference: each training sequence (prompt + answer + end of turn) through the model in one
    padded batch, log-probabilities summed over its supervised span."""
    batch = encoder.encode([image] * len(classes), classes)
    labels = batch.pop("labels")
    logp = torch.log_softmax(model(**batch).logits, dim=-1)
    out = []
    for i in range(len(classes)):
        pos = (labels[i, 1:] != IGNORE_INDEX).nonzero()[:, 0]  # positions whose next token is supervised
        out.append(logp[i, pos, labels[i, pos + 1]].sum().item())
    return np.array(out)


# ------------------------------------------------------------------------------------------ scoring


@pytest.mark.parametrize("variant", [*VARIANTS, "gemma4-e-kv-shared-short-window", "gemma4-31b+lora"])
def test_score_classes_equals_the_full_sequence_log_likelihood(variant, checkpoints, manifest, images):
    # float64 so that the only differences left are the algorithm's, not rounding in a different batch shape
    base = variant.removesuffix("+lora")
    if variant.endswith("+lora"):  # a fresh model: get_peft_model changes the one it wraps
        model, processor, family = load_model_and_processor(
            checkpoints[base], quantize_4bit=False, device=CPU, image_token_budget=70, dtype=torch.float64)
    else:
        model, processor, family = _load(str(checkpoints[base]), torch.float64)
    encoder = PromptEncoder(processor, family, manifest["instruction"])
    classes = manifest["classes"]
    candidates = candidate_ids(encoder, classes)
    assert len({len(c) for c in candidates}) > 1  # candidates of different lengths share one padded pass
    plain = None
    if variant.endswith("+lora"):
        plain = score_classes(model.eval(), encoder, images[0], candidates)
        model = _lora(model)
    # two aspect ratios where the soft-token count depends on them (Gemma 4 31B); one image elsewhere
    for image in images[:2] if variant == "gemma4-31b" else images[:1]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scores = score_classes(model, encoder, image, candidates)
        assert not [w for w in caught if "past_key_values" in str(w.message)]  # removed in transformers 5.40
        assert scores.shape == (len(classes),)
        np.testing.assert_allclose(scores, full_sequence_loglik(model, encoder, image, classes), rtol=0, atol=1e-4)
        np.testing.assert_array_equal(scores, score_classes(model, encoder, image, candidates))  # deterministic
    if plain is not None:
        assert np.abs(scores - plain).max() > 1e-2  # the adapter really changed the model


PACKED_VARIANTS = ["gemma4-31b", "gemma4-e", "gemma4-e-kv-shared-short-window", "gemma4-31b+bidirectional-vision",
                   "gemma4-31b+lora", "gemma3", "gemma3-global-short-window", "gemma3+lora", "gemma3+eager"]


def _packed_setup(variant: str, checkpoints, manifest, dtype: torch.dtype):
    base = variant.split("+")[0]
    if variant.endswith("+lora") or variant.endswith("+eager"):  # fresh: these change the model they touch
        model, processor, family = load_model_and_processor(
            checkpoints[base], quantize_4bit=False, device=CPU, image_token_budget=70, dtype=dtype)
        model.eval()
    else:
        model, processor, family = _load(str(checkpoints[base]), dtype)
    if variant.endswith("+bidirectional-vision"):  # Gemma 4's option: image tokens see each other on sliding layers
        model.config.text_config.use_bidirectional_attention = "vision"
    if variant.endswith("+eager"):  # additive float masks instead of sdpa's boolean ones
        model.set_attn_implementation("eager")
    if variant.endswith("+lora"):
        model = _lora(model)
    return model, PromptEncoder(processor, family, manifest["instruction"])


@pytest.mark.parametrize("variant", PACKED_VARIANTS)
def test_packed_scorer_equals_the_full_sequence_log_likelihood(variant, checkpoints, manifest, images):
    """One forward for a batch of images, every class packed after each prompt: the same scores as running
    each training sequence on its own (float64, so only the algorithm could differ)."""
    from petqlora.evaluation.scorers import score_classes_packed

    model, encoder = _packed_setup(variant, checkpoints, manifest, torch.float64)
    classes = manifest["classes"]
    batch = images[:3]  # different aspect ratios: prompts of different lengths in one padded batch (Gemma 4)
    packed = score_classes_packed(model, encoder, batch, candidate_ids(encoder, classes))
    reference = np.stack([full_sequence_loglik(model, encoder, image, classes) for image in batch])
    # eager attention takes its softmax in float32 even for a float64 model: rounding of 1e-8 relative
    np.testing.assert_allclose(packed, reference, rtol=1e-7 if variant.endswith("+eager") else 0, atol=1e-9)


@pytest.mark.parametrize("variant", ["gemma4-31b", "gemma3", "gemma3-global-short-window"])
def test_packed_scorer_in_float32_matches_full_sequences_and_their_argmax(variant, checkpoints, manifest, images):
    """In float32 too (what a CPU evaluation runs): within 1e-5 of the scores' size, every argmax the same,
    over all six test images (several aspect ratios) and candidates of one to several tokens."""
    from petqlora.evaluation.scorers import score_classes_packed

    model, encoder = _packed_setup(variant, checkpoints, manifest, torch.float32)
    classes = manifest["classes"]
    candidates = candidate_ids(encoder, classes)
    assert max(len(c) for c in candidates) > 2  # multi-token names (and end of turn)
    packed = score_classes_packed(model, encoder, images, candidates)
    reference = np.stack([full_sequence_loglik(model, encoder, image, classes) for image in images])
    np.testing.assert_allclose(packed, reference, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(packed.argmax(1), reference.argmax(1))
    assert len(set(reference.argmax(1))) > 1 or np.ptp(reference, axis=1).min() > 1e-3  # not a tie everywhere


@pytest.mark.parametrize("variant", VARIANTS)
def test_candidate_ids_are_the_supervised_span_of_the_training_sequence(variant, checkpoints, manifest, images):
    family = "gemma3" if variant == "gemma3" else "gemma4"
    processor = load_processor(checkpoints[variant], family, 70 if family == "gemma4" else None)
    encoder = PromptEncoder(processor, family, manifest["instruction"])
    classes = manifest["classes"]
    candidates = candidate_ids(encoder, classes)
    labels = encoder.encode([images[0]] * len(classes), classes)["labels"]  # what training supervises
    for label, cand, row in zip(classes, candidates, labels.tolist()):
        assert cand == [t for t in row if t != IGNORE_INDEX]
        assert cand[-1] == encoder.tokens.end_of_turn
        assert processor.tokenizer.decode(cand[:-1]) == label


# ------------------------------------------------------------------------------------------ matching

CLASSES = ["abyssinian", "american pit bull terrier", "shiba inu", "yorkshire terrier",
           unicodedata.normalize("NFC", "léonberger"), "großer münsterländer"]


@pytest.mark.parametrize("text, expected", [
    ("abyssinian", "abyssinian"),
    ("Abyssinian", "abyssinian"),  # case
    ("SHIBA INU", "shiba inu"),
    ("american_pit_bull_terrier", "american pit bull terrier"),  # underscores
    ("American-Pit-Bull-Terrier", "american pit bull terrier"),  # hyphens
    ("  Yorkshire   Terrier.\n", "yorkshire terrier"),  # whitespace and a full stop
    ('"Shiba Inu!"', "shiba inu"),  # quotes, exclamation
    ("**Abyssinian**", "abyssinian"),  # markdown emphasis
    ("Ａｂｙｓｓｉｎｉａｎ", "abyssinian"),  # full-width letters (NFKC)
    (unicodedata.normalize("NFD", "Léonberger"), "léonberger"),  # decomposed accent
    ("LÉONBERGER", "léonberger"),  # non-ASCII upper case
    ("GROSSER MÜNSTERLÄNDER", "großer münsterländer"),  # ß case-folds to ss
    ("leonberger", UNPARSEABLE),  # accents are part of the name
    ("poodle", UNPARSEABLE),  # unknown breed
    ("", UNPARSEABLE),
    ("abyssinian cat", UNPARSEABLE),  # extra words
    ("It is a shiba inu.", UNPARSEABLE),
    ("shiba inu, abyssinian", UNPARSEABLE),  # two answers
])
def test_match_answer_table(text, expected):
    assert match_answer(text, CLASSES) == expected


def test_normalize_answer_examples():
    assert normalize_answer("  Yorkshire_Terrier.") == "yorkshire terrier"
    assert normalize_answer("Shiba-Inu!!") == "shiba inu"
    assert normalize_answer("\tMaine\n Coon ") == "maine coon"
    assert normalize_answer("?!") == ""


def test_match_answer_refuses_classes_it_cannot_tell_apart():
    with pytest.raises(ValueError, match="'st. bernard' and 'st bernard'"):
        match_answer("st bernard", ["st. bernard", "st bernard"])


# ------------------------------------------------------------------------------------------ generation


@torch.no_grad()
def _argmax_decode(model, batch: dict, stop: set[int], steps: int) -> list[int]:
    """Greedy decoding by hand: the whole sequence through the model at every step, no cache."""
    batch = dict(batch)
    out = []
    for _ in range(steps):
        nxt = int(model(**batch).logits[0, -1].argmax())
        out.append(nxt)
        if nxt in stop:
            break
        batch["input_ids"] = torch.cat([batch["input_ids"], torch.tensor([[nxt]])], dim=1)
        for key, fill in (("attention_mask", 1), ("mm_token_type_ids", 0), ("token_type_ids", 0)):
            if key in batch:
                batch[key] = torch.cat([batch[key], torch.full((1, 1), fill, dtype=batch[key].dtype)], dim=1)
    return out


@pytest.mark.parametrize("variant", ["gemma4-31b", "gemma3"])
def test_generate_answer_is_greedy_even_when_the_model_config_samples(variant, checkpoints, manifest, images):
    model, processor, family = load_model_and_processor(checkpoints[variant], quantize_4bit=False, device=CPU,
                                                        image_token_budget=70)
    model.eval()
    model.generation_config.update(do_sample=True, temperature=5.0, top_k=0, top_p=1.0)  # a sampling default
    encoder = PromptEncoder(processor, family, manifest["instruction"])
    calls = []
    original = model.generate
    model.generate = lambda **kw: (calls.append(kw), original(**kw))[1]
    texts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        texts.append(generate_answer(model, encoder, images[0], max_new_tokens=6))
    assert texts[0] == texts[1]
    assert all(c["do_sample"] is False and c.get("num_beams", 1) == 1 for c in calls)
    stop = {encoder.tokens.end_of_turn, processor.tokenizer.eos_token_id}
    expected = _argmax_decode(model, encoder.encode([images[0]], None), stop, steps=6)
    assert texts[0] == processor.tokenizer.decode(expected, skip_special_tokens=True)


def test_generate_mode_reports_the_unparseable_rate(checkpoints, dataset, tmp_path):
    cfg = EvalConfig(name="gemma3_baseline", base_model=str(checkpoints["gemma3"]), mode="generate",
                     quantize="none", device="cpu", max_examples=2)
    result = evaluate(dataset, tmp_path / "out", cfg)
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(isinstance(r["generated"], str) and r["scores"] is None for r in rows)
    assert all(r["prediction"] == match_answer(r["generated"], result["classes"]) for r in rows)
    assert result["unparseable_rate"] == sum(r["prediction"] == UNPARSEABLE for r in rows) / 2
    assert result["top3_accuracy"] is None  # no scores to rank in generate mode


def test_generate_mode_matches_normalized_answers_and_counts_the_rest_unparseable(
        checkpoints, dataset, tmp_path, monkeypatch):
    # The tiny random model cannot be made to say a chosen breed; script its text, keep everything else real.
    records = data_lib.read_split(dataset, "test")[:4]
    other = next(c for c in data_lib.read_manifest(dataset)["classes"] if c != records[2]["label"])
    scripted = iter([records[0]["label"].title().replace(" ", "_") + ".",  # right, oddly spelled
                     "I cannot tell.",  # unparseable
                     other.upper(),  # wrong but a class
                     f"  {records[3]['label'].replace(' ', '-')}!\n"])  # right
    monkeypatch.setattr(evaluate_mod, "generate_answer", lambda *a, **k: next(scripted))
    cfg = EvalConfig(name="finetuned", base_model=str(checkpoints["gemma4-31b"]), mode="generate",
                     quantize="none", device="cpu", max_examples=4, image_token_budget=70)
    result = evaluate(dataset, tmp_path / "out", cfg)
    assert result["accuracy"] == 0.5 and result["unparseable_rate"] == 0.25
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in rows] == [records[0]["label"], UNPARSEABLE, other, records[3]["label"]]
    assert sum(map(sum, result["result"]["confusion_matrix"])) == 3  # the unparseable answer is in no column


# ------------------------------------------------------------------------------------------ evaluate()


def _hand_metrics(rows: list[dict], classes: list[str]) -> dict:
    tp = Counter(r["label"] for r in rows if r["prediction"] == r["label"])
    predicted = Counter(r["prediction"] for r in rows)
    support = Counter(r["label"] for r in rows)
    precision = {c: tp[c] / predicted[c] if predicted[c] else 0.0 for c in classes}
    recall = {c: tp[c] / support[c] if support[c] else 0.0 for c in classes}
    f1 = {c: 2 * precision[c] * recall[c] / (precision[c] + recall[c]) if precision[c] + recall[c] else 0.0
          for c in classes}
    confusion = [[sum(1 for r in rows if r["label"] == t and r["prediction"] == p) for p in classes]
                 for t in classes]
    top3 = sum(r["label"] in [classes[i] for i in np.argsort(-np.array(r["scores"]), kind="stable")[:3]]
               for r in rows) / len(rows)
    return {"accuracy": sum(tp.values()) / len(rows), "precision": precision, "recall": recall,
            "macro_f1": sum(f1.values()) / len(classes), "confusion": confusion, "top3": top3}


def test_evaluate_writes_predictions_and_a_result_that_agrees_with_a_hand_count(
        checkpoints, dataset, manifest, images, tmp_path):
    cfg = EvalConfig(name="gemma4_baseline", base_model=str(checkpoints["gemma4-31b"]), quantize="none",
                     device="cpu", image_token_budget=70)
    returned = evaluate(dataset, tmp_path / "out", cfg)
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result == json.loads(json.dumps(returned))
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    records = data_lib.read_split(dataset, "test")
    classes = manifest["classes"]
    assert [r["id"] for r in rows] == [r["id"] for r in records] and [r["label"] for r in rows] == [
        r["label"] for r in records]
    assert all(r["prediction"] == classes[int(np.argmax(r["scores"]))] and r["generated"] is None for r in rows)

    hand = _hand_metrics(rows, classes)
    assert result["n_eval"] == len(rows) == 6
    assert result["accuracy"] == pytest.approx(hand["accuracy"])
    assert result["macro_f1"] == pytest.approx(hand["macro_f1"])
    assert result["top3_accuracy"] == pytest.approx(hand["top3"])
    per_class = result["result"]["per_class"]
    assert [p["label"] for p in per_class] == classes
    assert [p["precision"] for p in per_class] == pytest.approx([hand["precision"][c] for c in classes])
    assert [p["recall"] for p in per_class] == pytest.approx([hand["recall"][c] for c in classes])
    assert result["result"]["confusion_matrix"] == hand["confusion"]
    assert result["unparseable_rate"] == 0.0  # scoring always names a class

    assert result["name"] == "gemma4_baseline" and result["family"] == "gemma4" and result["classes"] == classes
    assert result["seconds"] > 0 and result["load_seconds"] > 0
    assert result["images_per_s"] == pytest.approx(6 / result["seconds"])
    assert result["memory_kind"] == "CPU RSS" and 0.05 < result["peak_memory_gib"] < 64
    assert result["config"]["mode"] == "score" and result["config"]["split"] == "test"

    # the stored scores are the model's (float32 here, rounded to 4 decimals in the file)
    model, processor, family = _load(str(checkpoints["gemma4-31b"]), torch.float32)
    encoder = PromptEncoder(processor, family, manifest["instruction"])
    expected = score_classes(model, encoder, images[0], candidate_ids(encoder, classes))
    np.testing.assert_allclose(rows[0]["scores"], expected, atol=1e-3)


def test_evaluate_scores_gemma3_in_packed_batches_as_full_sequences_would(
        checkpoints, dataset, manifest, images, tmp_path, monkeypatch):
    """Gemma 3 is evaluated by the packed scorer too, in batches of `batch_size` images (6 = 4 + 2)."""
    calls = []
    real = evaluate_mod.score_classes_packed
    monkeypatch.setattr(evaluate_mod, "score_classes_packed", lambda m, e, ims, c: calls.append(len(ims)) or real(m, e, ims, c))
    cfg = EvalConfig(name="gemma3_baseline", base_model=str(checkpoints["gemma3"]), quantize="none", device="cpu",
                     batch_size=4)
    evaluate(dataset, tmp_path / "out", cfg)
    assert calls == [4, 2]
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    model, processor, family = _load(str(checkpoints["gemma3"]), torch.float32)
    encoder = PromptEncoder(processor, family, manifest["instruction"])
    for i in (0, 5):
        np.testing.assert_allclose(rows[i]["scores"], full_sequence_loglik(model, encoder, images[i], manifest["classes"]),
                                   rtol=1e-5, atol=1e-3)


def test_evaluate_loads_the_adapter_and_the_entrypoint_runs(checkpoints, dataset, manifest, images, tmp_path):
    model, processor, family = load_model_and_processor(checkpoints["gemma4-31b"], quantize_4bit=False,
                                                        device=CPU, image_token_budget=70)
    adapted = _lora(model, seed=3)
    adapted.save_pretrained(tmp_path / "adapter")
    encoder = PromptEncoder(processor, family, manifest["instruction"])
    expected = score_classes(adapted, encoder, images[0], candidate_ids(encoder, manifest["classes"]))

    config = tmp_path / "eval_config.json"
    config.write_text(json.dumps({"name": "finetuned", "base_model": str(checkpoints["gemma4-31b"]),
                                  "adapter": str(tmp_path / "adapter"), "image_token_budget": 70, "quantize": "none",
                                  "device": "cpu", "max_examples": 2}))
    code = evaluate_mod.main(["--dataset", str(dataset), "--output", str(tmp_path / "out"), "--config", str(config)])
    assert code == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["name"] == "finetuned" and result["n_eval"] == 2
    assert result["config"]["adapter"] == str(tmp_path / "adapter")
    first = json.loads((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()[0])
    np.testing.assert_allclose(first["scores"], expected, atol=1e-3)  # the adapter's scores, not the base's


# ------------------------------------------------------------------------------------------ config


def test_eval_config_names_every_wrong_field_at_once():
    with pytest.raises(ValueError) as err:
        EvalConfig(name="fine-tuned!", base_model="", adapter="", split="dev", mode="sample",
                   image_token_budget=300, quantize="8bit", max_examples=0, device="tpu")
    message = str(err.value)
    for field in ("name", "base_model", "adapter", "split", "mode", "image_token_budget", "quantize",
                  "max_examples", "device"):
        assert f"  - {field}=" in message, field
    assert message.count("\n  - ") == 9
    assert "must be one of score, generate" in message and "70, 140, 280, 560, 1120" in message


def test_the_entrypoint_refuses_a_bad_config_in_one_line_with_exit_2(tmp_path, capsys):
    config = tmp_path / "eval_config.json"
    config.write_text(json.dumps({"name": "finetuned", "base_model": "m", "batch_size": 0, "bogus": 1}))
    code = evaluate_mod.main(["--dataset", str(tmp_path), "--output", str(tmp_path / "out"), "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and "batch_size=0: must be >= 1" in err and "bogus=1: is not a known field" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field, value", [("max_examples", "5"), ("image_token_budget", "280"), ("name", None),
                                          ("max_examples", True)])
def test_eval_config_wrong_types_are_config_errors_not_crashes(field, value):
    with pytest.raises(ValueError, match="invalid evaluation config"):
        EvalConfig(**{"name": "finetuned", "base_model": "m", field: value})


def test_eval_config_defaults_are_valid():
    cfg = EvalConfig(name="gemma3_baseline", base_model="google/gemma-3-27b-it")
    assert (cfg.mode, cfg.split, cfg.quantize, cfg.adapter) == ("score", "test", "auto", None)
