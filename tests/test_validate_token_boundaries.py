"""validate_token_boundaries: each check, fed an example that breaks exactly that rule, reports it.

The examples are real encodings of the tiny checkpoints (built offline in milliseconds) passed through a
`Tampered` encoder, which edits the ids / labels the way a processor or masking bug would and leaves the
rest intact. Every violation test asserts the set of rules the record names is exactly the one broken, so
disabling any single check in the module turns its test red.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from petqlora.gemma.encoding import PromptEncoder
from petqlora.gemma.masking import IGNORE_INDEX
from petqlora.gemma.processors import SUPPORTED_BUDGETS, load_processor
from petqlora.gemma.prompts import render_instruction
from petqlora.gemma.validate_token_boundaries import (
    TokenBoundaryError,
    ValidateConfig,
    check_example,
    check_instruction,
    validate_token_boundaries,
)

VARIANTS = ("gemma4-e", "gemma4-31b", "gemma3")
CLASSES = ["abyssinian", "british shorthair", "shiba inu"]
INSTRUCTION = render_instruction(CLASSES)
RECORD = {"id": "cat__42", "label": "british shorthair"}

# A distinctive phrase of each rule's message in check_example. BoundaryError texts from
# image_token_counts ("... outside a begin/end image pair", "no end-of-image token") belong to the pair rule.
RULES = {
    "soft_tokens": "soft tokens, the processor computes",
    "pair": "begin/end image pair",
    "decode": "supervised tokens decode to",
    "contiguous": "not one contiguous span",
    "none": "no supervised token",
    "length": "exceed max_length",
    "prefix": "evaluation prompt is not the prefix",
    "own_tokens": "not the sequence's own tokens",
    "encode": "cannot be encoded as a training sequence",
}


def _broken(record: dict) -> set[str]:
    """The rules a record's problem names."""
    return {rule for rule, phrase in RULES.items() if phrase in (record["problem"] or "")}


def _assert_only(record: dict, rule: str) -> None:
    assert record["ok"] is False
    assert record["example_id"] == RECORD["id"]
    assert _broken(record) == {rule}, record["problem"]


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint):
    return {v: tiny_checkpoint(v) for v in VARIANTS}


@pytest.fixture(scope="module")
def encoders(checkpoints):
    """`encoders(variant, budget)`: a cached PromptEncoder (budget ignored for Gemma 3)."""
    cache: dict = {}

    def get(variant: str, budget: int = 280) -> PromptEncoder:
        family = "gemma3" if variant == "gemma3" else "gemma4"
        key = (variant, budget if family == "gemma4" else None)
        if key not in cache:
            processor = load_processor(checkpoints[variant], family, max_soft_tokens=key[1])
            cache[key] = PromptEncoder(processor, family, INSTRUCTION)
        return cache[key]

    return get


def _image(width: int = 300, height: int = 200) -> Image.Image:
    return Image.new("RGB", (width, height), (120, 60, 30))


class Tampered:
    """The real encoder, except that encode() passes each row through `tamper(ids, labels, tokens)`
    (labels is None for the evaluation prompt) and, given `answer`, trains on that answer instead of
    the record's label. check_example only reads encode, image_tokens, tokens, processor and
    end_of_turn_text, so delegating everything else keeps the example otherwise valid."""

    def __init__(self, encoder: PromptEncoder, tamper=None, answer: str | None = None):
        self._encoder, self._tamper, self._answer = encoder, tamper, answer

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def encode(self, images, labels, padding_side="right"):
        if labels is not None and self._answer is not None:
            labels = [self._answer]
        batch = self._encoder.encode(images, labels, padding_side)
        ids = batch["input_ids"][0].tolist()
        labs = batch["labels"][0].tolist() if labels is not None else None
        if self._tamper is not None:
            ids, labs = self._tamper(list(ids), None if labs is None else list(labs), self._encoder.tokens)
        out = {"input_ids": torch.tensor([ids])}
        if labs is not None:
            out["labels"] = torch.tensor([labs])
        return out


def _splice(ids, labels, pos: int, drop: int = 0, insert=()):
    """Replace ids[pos:pos+drop] by `insert` (unsupervised), keeping labels aligned with the ids."""
    ids[pos:pos + drop] = list(insert)
    if labels is not None:
        labels[pos:pos + drop] = [IGNORE_INDEX] * len(insert)
    return ids, labels


def _check(encoder, max_length: int = 4096) -> dict:
    return check_example(encoder, _image(), dict(RECORD), max_length)


# --- the untampered baseline: every violation below differs from this in one respect ---------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_a_real_encoding_passes(encoders, variant):
    enc = encoders(variant)
    record = _check(enc)
    assert record["ok"] is True and record["problem"] is None
    assert record["image_tokens"] == record["expected_image_tokens"] == enc.image_tokens(300, 200)
    assert record["supervised_text"] == RECORD["label"] + enc.end_of_turn_text


# --- 1. soft-token count -------------------------------------------------------------------------------
# Both the training and the prompt encodings are edited alike, so the prefix rule still holds.

def _drop_soft_token(ids, labels, tk):
    return _splice(ids, labels, ids.index(tk.image), drop=1)


def _add_soft_token(ids, labels, tk):
    return _splice(ids, labels, ids.index(tk.image), insert=[tk.image])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("tamper", [_drop_soft_token, _add_soft_token], ids=["one-fewer", "one-more"])
def test_wrong_soft_token_count(encoders, variant, tamper):
    enc = encoders(variant)
    record = _check(Tampered(enc, tamper))
    _assert_only(record, "soft_tokens")
    delta = -1 if tamper is _drop_soft_token else 1
    assert record["image_tokens"] == record["expected_image_tokens"] + delta


def test_encoder_formula_disagreeing_with_the_ids(encoders):
    # The other side of the comparison: ids as the processor wrote them, a formula that is off by one.
    enc = encoders("gemma4-e")

    class OffByOne(Tampered):
        def image_tokens(self, width, height):
            return enc.image_tokens(width, height) + 1

    _assert_only(_check(OffByOne(enc)), "soft_tokens")


# --- 2. one begin/end pair per image -----------------------------------------------------------------------

def _drop_begin(ids, labels, tk):
    return _splice(ids, labels, ids.index(tk.begin_image), drop=1)


def _drop_end(ids, labels, tk):
    return _splice(ids, labels, ids.index(tk.end_image), drop=1)


def _double_image(ids, labels, tk):
    """A second, identical image block right after the first: two pairs, each with the right count."""
    begin, end = ids.index(tk.begin_image), ids.index(tk.end_image)
    return _splice(ids, labels, end + 1, insert=ids[begin:end + 1])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("tamper", "detail"), [
    (_drop_begin, "outside a begin/end image pair"),
    (_drop_end, "no end-of-image token"),
])
def test_missing_image_marker(encoders, variant, tamper, detail):
    record = _check(Tampered(encoders(variant), tamper))
    _assert_only(record, "pair")
    # Both the malformed-image error and the pair count are reported.
    assert detail in record["problem"] and "found 0" in record["problem"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_image_pairs(encoders, variant):
    record = _check(Tampered(encoders(variant), _double_image))
    _assert_only(record, "pair")
    assert "found 2" in record["problem"]
    assert record["image_tokens"] == [record["expected_image_tokens"]] * 2


# --- 3. the supervised span ---------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_span_decoding_to_another_class(encoders, variant):
    # Trained on "shiba inu" while the record says "british shorthair": same prompt, same image.
    enc = encoders(variant)
    record = _check(Tampered(enc, answer="shiba inu"))
    _assert_only(record, "decode")
    assert record["supervised_text"] == "shiba inu" + enc.end_of_turn_text


def _labels_of_another_answer(ids, labels, tk):
    if labels is not None:  # the ids stay right; the targets at the span's first position are another token
        span = [i for i, t in enumerate(labels) if t != IGNORE_INDEX]
        labels[span[0]] = ids[span[0]] + 1
    return ids, labels


@pytest.mark.parametrize("variant", VARIANTS)
def test_supervised_labels_that_are_not_the_sequence_tokens(encoders, variant):
    # The span decodes right (decoding reads the ids), yet training would learn another token.
    _assert_only(_check(Tampered(encoders(variant), _labels_of_another_answer)), "own_tokens")


def test_a_label_that_cannot_be_encoded_is_refused_not_a_crash(encoders):
    record = check_example(encoders("gemma4-e"), Image.new("RGB", (64, 48)), {"id": "x__1", "label": "<|turn>"}, 1024)
    assert record["ok"] is False and record["example_id"] == "x__1" and _broken(record) == {"encode"}


def _hole_in_span(ids, labels, tk):
    if labels is not None:  # unsupervise one token inside the answer (not its first one: the prefix holds)
        span = [i for i, t in enumerate(labels) if t != IGNORE_INDEX]
        labels[span[2]] = IGNORE_INDEX
    return ids, labels


def _nothing_supervised(ids, labels, tk):
    return ids, None if labels is None else [IGNORE_INDEX] * len(labels)


@pytest.mark.parametrize("variant", VARIANTS)
def test_non_contiguous_span(encoders, variant):
    _assert_only(_check(Tampered(encoders(variant), _hole_in_span)), "contiguous")


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_supervised_token(encoders, variant):
    record = _check(Tampered(encoders(variant), _nothing_supervised))
    _assert_only(record, "none")
    assert record["supervised_text"] == ""


# --- 4. the evaluation prompt is the training prefix --------------------------------------------------------

def _change_a_prompt_token(replacement: int):
    def tamper(ids, labels, tk):
        if labels is not None:  # training only: the first token after the image becomes another one
            pos = ids.index(tk.end_image) + 1
            assert ids[pos] != replacement
            ids[pos] = replacement
        return ids, labels

    return tamper


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_prefix_differs_from_the_prompt(encoders, variant):
    enc = encoders(variant)
    z = enc.processor.tokenizer.convert_tokens_to_ids("Z")  # an ordinary character, in no prompt here
    _assert_only(_check(Tampered(enc, _change_a_prompt_token(z))), "prefix")


# --- 5. max_length -------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_sequence_longer_than_max_length(encoders, variant):
    enc = encoders(variant)
    n = _check(enc)["sequence_length"]
    assert _check(enc, max_length=n)["ok"] is True  # exactly max_length fits
    record = _check(enc, max_length=n - 1)
    _assert_only(record, "length")
    assert f"{n} tokens exceed max_length={n - 1}" in record["problem"]


# --- 6. the instruction names exactly the label set --------------------------------------------------------

def test_instruction_naming_every_label_passes():
    assert check_instruction(INSTRUCTION, CLASSES) == []
    # prepare_data renders the classes in the dataset's order: another order is a different instruction.
    assert check_instruction(INSTRUCTION, list(reversed(CLASSES))) == [
        "the instruction does not list the classes as one comma-separated list in the dataset's order "
        f"({', '.join(reversed(CLASSES))!r})"]


@pytest.mark.parametrize("template", ["Which breed is this? Choose from {classes}.", "Note: choose one of: {classes}.",
                                      "Choose one of: {classes}. Answer in one word.", "{classes}"])
def test_any_template_placing_the_class_list_passes(template):
    assert check_instruction(render_instruction(CLASSES, template), CLASSES) == []


def test_an_item_joined_before_the_list_is_named():
    problems = check_instruction(render_instruction(["maine coon"] + CLASSES), CLASSES)
    assert problems == ["instruction names classes that are not labels: ['maine coon']"]


def test_instruction_naming_a_class_that_is_not_a_label():
    problems = check_instruction(render_instruction(CLASSES + ["maine coon"]), CLASSES)
    assert problems == ["instruction names classes that are not labels: ['maine coon']"]


def test_instruction_missing_a_label():
    problems = check_instruction(render_instruction(CLASSES[:2]), CLASSES)
    assert problems == ["classes not named in the instruction: ['shiba inu']"]


# --- 7. validate_token_boundaries on a prepared dataset ----------------------------------------------------

@pytest.fixture()
def dataset_copy(pets_dataset, tmp_path):
    """A writable copy of the session's prepared dataset (the shared one must stay untouched)."""
    return shutil.copytree(pets_dataset(4), tmp_path / "dataset")


def _rewrite_first(path, **changes) -> dict:
    """Apply `changes` to the first JSON-lines record of `path`; return the changed record."""
    lines = path.read_text(encoding="utf-8").splitlines()
    first = {**json.loads(lines[0]), **changes}
    path.write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n", encoding="utf-8")
    return first


@pytest.mark.parametrize("variant", VARIANTS)
def test_clean_dataset_passes(pets_dataset, checkpoints, tmp_path, variant):
    metrics = validate_token_boundaries(pets_dataset(4), tmp_path / "out",
                                        ValidateConfig(base_model=str(checkpoints[variant])))
    assert metrics["examples_checked"] == 24 and metrics["problems"] == metrics["instruction_problems"] == 0
    rows = [json.loads(x) for x in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and all(r["ok"] for r in rows)
    if variant == "gemma3":
        assert metrics["min_image_tokens"] == metrics["max_image_tokens"] == 256
    else:  # the synthetic set's aspect ratios give Gemma 4 several soft-token counts
        assert metrics["distinct_image_token_counts"] > 1
    assert "problems: 0" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize(("label", "rule"), [
    # The end-of-turn marker inside a label ends the span early: it decodes to half the label.
    ("abys<turn|>sinian", "decode"),
    # A label long enough to push the sequence past max_length=1024.
    ("abyssinian " * 200, "length"),
], ids=["end-of-turn-in-label", "too-long"])
def test_a_tampered_record_fails_the_run(dataset_copy, checkpoints, tmp_path, label, rule):
    bad = _rewrite_first(dataset_copy / "validation.jsonl", label=label)
    out = tmp_path / "out"
    with pytest.raises(TokenBoundaryError, match="failed for 1 of 24") as info:
        validate_token_boundaries(dataset_copy, out, ValidateConfig(base_model=str(checkpoints["gemma4-e"])))
    assert f"- {bad['id']} (validation): " in str(info.value) and RULES[rule] in str(info.value)
    rows = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    (row,) = [r for r in rows if not r["ok"]]
    assert row["example_id"] == bad["id"] and row["split"] == "validation" and _broken(row) == {rule}
    assert bad["id"] in (out / "report.md").read_text()


def test_a_tampered_instruction_fails_the_run(dataset_copy, checkpoints, tmp_path):
    manifest_path = dataset_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["instruction"] = render_instruction(manifest["classes"][1:])  # drops the first breed
    manifest_path.write_text(json.dumps(manifest))
    out = tmp_path / "out"
    with pytest.raises(TokenBoundaryError, match="classes not named in the instruction") as info:
        validate_token_boundaries(dataset_copy, out, ValidateConfig(base_model=str(checkpoints["gemma3"])))
    assert repr(manifest["classes"][0]) in str(info.value)
    assert "failed for 0 of 24" in str(info.value)  # the examples themselves are fine
    assert manifest["classes"][0] in (out / "report.md").read_text()
    assert len((out / "records.jsonl").read_text().splitlines()) == 24


# --- 8. property: any valid example passes, with the processor's own soft-token count -------------------

def _processor_soft_tokens(enc: PromptEncoder, image: Image.Image) -> int:
    """What the image processor itself gives the image (not the encoder's formula)."""
    if enc.family == "gemma3":
        return enc.processor.full_image_sequence.count(enc.processor.tokenizer.image_token)
    return int(enc.processor.image_processor(image)["num_soft_tokens_per_image"][0])


@pytest.fixture(scope="module")
def warm_encoders(encoders):
    """Every (variant, budget) encoder loaded up front, so no example pays for loading a processor."""
    for variant in VARIANTS:
        for budget in SUPPORTED_BUDGETS:
            encoders(variant, budget)
    return encoders


# deadline=None: an example at budget 1120 runs the processor on ~1200 tokens three times, 150-300 ms on
# the shared 2-core machine, past the dev profile's 200 ms; conftest.py keeps such slow-by-nature tests
# on their own deadline=None (as test_masking's FAST does). Derandomizing is left to the ci profile.
@settings(max_examples=20, deadline=None)
@given(variant=st.sampled_from(VARIANTS), budget=st.sampled_from(SUPPORTED_BUDGETS),
       width=st.integers(16, 800), height=st.integers(16, 800), label=st.sampled_from(CLASSES))
def test_valid_examples_pass(warm_encoders, variant, budget, width, height, label):
    enc = warm_encoders(variant, budget)
    image = _image(width, height)
    record = check_example(enc, image, {"id": "p", "label": label}, 4096)
    assert record["ok"] is True, record["problem"]
    assert record["image_tokens"] == record["expected_image_tokens"] == _processor_soft_tokens(enc, image)
    assert record["supervised_text"] == label + enc.end_of_turn_text
