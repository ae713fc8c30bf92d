"""Label masking: hand-written token tables, then properties on the real tiny processors of each family.

The tables mirror the real vocabularies' ids (Gemma 4: <|turn> 105, <turn|> 106, "model" 4368, "\\n" 107;
images <|image> / <|image|> / <image|>), so a mistake in the boundary logic shows up on sequences that
look like the ones the cloud job trains on. The properties run the project's own encoder on tiny
checkpoints built from the same code that builds the embedded default model.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from petqlora.gemma.encoding import PromptEncoder
from petqlora.gemma.masking import (
    IGNORE_INDEX,
    BoundaryError,
    TurnTokens,
    image_token_counts,
    labels_for_batch,
    labels_for_sequence,
    supervised_span,
)
from petqlora.gemma.processors import SUPPORTED_BUDGETS, load_processor
from petqlora.gemma.prompts import build_messages

X = IGNORE_INDEX

# ---------------------------------------------------------------------------------------------------------
# Hand-written tables (no tokenizer)
# ---------------------------------------------------------------------------------------------------------

BOS, EOS, PAD = 2, 1, 0
SOT, EOT, NL, USER, MODEL = 105, 106, 107, 2364, 4368
CHANNEL_OPEN, THOUGHT, CHANNEL_CLOSE = 100, 45518, 101
G4_BOI, G4_EOI, G4_IMG = 255999, 258882, 258880

GEMMA4_E = TurnTokens(start_of_turn=SOT, end_of_turn=EOT, model_opener=(SOT, MODEL, NL),
                      begin_image=G4_BOI, end_image=G4_EOI, image=G4_IMG, pad=PAD)
# 31B / 26B templates end the generation prompt with the empty thought channel.
GEMMA4_31B = TurnTokens(start_of_turn=SOT, end_of_turn=EOT,
                        model_opener=(SOT, MODEL, NL, CHANNEL_OPEN, THOUGHT, NL, CHANNEL_CLOSE),
                        begin_image=G4_BOI, end_image=G4_EOI, image=G4_IMG, pad=PAD)
# Gemma 3: <start_of_turn> 105, <end_of_turn> 106, "model" 2528, <start_of_image> 255999,
# <end_of_image> 256000, <image_soft_token> 262144.
G3_MODEL, G3_BOI, G3_EOI, G3_IMG = 2528, 255999, 256000, 262144
GEMMA3 = TurnTokens(start_of_turn=SOT, end_of_turn=EOT, model_opener=(SOT, G3_MODEL, NL),
                    begin_image=G3_BOI, end_image=G3_EOI, image=G3_IMG, pad=PAD)

TEXT = [3689, 28082, 563, 496]  # "What breed is the" ...
ANSWER = [2516, 11780, 10096]  # "Abyssinian"-like multi-token answer


def _image(tokens: TurnTokens, n: int) -> list[int]:
    return [tokens.begin_image] + [tokens.image] * n + [tokens.end_image]


def _user_turn(tokens: TurnTokens, n_soft: tuple[int, ...] = (4,)) -> list[int]:
    body = [t for n in n_soft for t in _image(tokens, n)]
    return [tokens.start_of_turn, USER, NL] + body + TEXT + [tokens.end_of_turn, NL]


def _sequence(tokens: TurnTokens, answer=ANSWER, n_soft=(4,), tail=()) -> list[int]:
    return ([BOS] + _user_turn(tokens, n_soft) + list(tokens.model_opener) + list(answer) + [tokens.end_of_turn]
            + list(tail))


FAMILIES = pytest.mark.parametrize("tokens", [GEMMA4_E, GEMMA4_31B, GEMMA3], ids=["gemma4-e", "gemma4-31b", "gemma3"])


def test_exact_labels_for_a_gemma4_sequence():
    ids = [BOS, SOT, USER, NL, G4_BOI, G4_IMG, G4_IMG, G4_IMG, G4_EOI, 3689, EOT, NL, SOT, MODEL, NL, 2516, 11780, EOT]
    want = [X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, 2516, 11780, EOT]
    assert labels_for_sequence(ids, GEMMA4_E) == want
    assert supervised_span(ids, GEMMA4_E) == (15, 18)
    assert image_token_counts(ids, GEMMA4_E) == [3]


def test_exact_labels_for_a_31b_sequence_with_the_thought_channel():
    ids = [BOS, SOT, USER, NL, G4_BOI, G4_IMG, G4_EOI, 3689, EOT, NL,
           SOT, MODEL, NL, CHANNEL_OPEN, THOUGHT, NL, CHANNEL_CLOSE, 2516, EOT]
    want = [X] * 17 + [2516, EOT]
    assert labels_for_sequence(ids, GEMMA4_31B) == want
    # The thought channel belongs to the prompt: the E-series opener would supervise it.
    assert labels_for_sequence(ids, GEMMA4_E)[13:17] == [CHANNEL_OPEN, THOUGHT, NL, CHANNEL_CLOSE]


def test_exact_labels_for_a_gemma3_sequence():
    ids = [BOS, SOT, USER, NL, NL, NL, G3_BOI] + [G3_IMG] * 256 + [G3_EOI, NL, NL, 3689, EOT, NL,
                                                                  SOT, G3_MODEL, NL, 2516, 11780, 10096, EOT]
    labels = labels_for_sequence(ids, GEMMA3)
    assert labels == [X] * (len(ids) - 4) + [2516, 11780, 10096, EOT]
    assert image_token_counts(ids, GEMMA3) == [256]


@FAMILIES
def test_only_answer_and_end_of_turn_are_supervised(tokens):
    ids = _sequence(tokens, tail=(NL, EOS))  # what follows the answer's end of turn is never supervised
    labels = labels_for_sequence(ids, tokens)
    start = len(ids) - 2 - 1 - len(ANSWER)
    assert labels[:start] == [X] * start
    assert labels[start:start + len(ANSWER) + 1] == ANSWER + [tokens.end_of_turn]
    assert labels[-2:] == [X, X]


@FAMILIES
@pytest.mark.parametrize("n_soft", [(1,), (266, 260), (256, 0, 70), (1120, 3, 498, 12)])
def test_several_images_with_different_soft_token_counts(tokens, n_soft):
    ids = _sequence(tokens, n_soft=n_soft)
    assert image_token_counts(ids, tokens) == list(n_soft)
    labels = labels_for_sequence(ids, tokens)
    assert [t for t in labels if t != X] == ANSWER + [tokens.end_of_turn]
    assert supervised_span(ids, tokens) == (len(ids) - len(ANSWER) - 1, len(ids))


def test_a_multi_turn_conversation_supervises_only_the_last_model_turn():
    first = [SOT, MODEL, NL, 999, 998, EOT, NL]
    ids = [BOS] + _user_turn(GEMMA4_E) + first + _user_turn(GEMMA4_E, (2,)) + [SOT, MODEL, NL] + ANSWER + [EOT]
    assert [t for t in labels_for_sequence(ids, GEMMA4_E) if t != X] == ANSWER + [EOT]


@FAMILIES
def test_truncated_answer_is_refused(tokens):
    ids = _sequence(tokens)[:-1]  # the end-of-turn was cut off
    with pytest.raises(BoundaryError, match="truncated"):
        labels_for_sequence(ids, tokens)
    with pytest.raises(BoundaryError, match="truncated"):
        supervised_span(ids[:-2], tokens)


@FAMILIES
def test_empty_answer_is_refused(tokens):
    with pytest.raises(BoundaryError, match="empty"):
        labels_for_sequence(_sequence(tokens, answer=()), tokens)


@FAMILIES
def test_last_turn_from_the_user_is_refused(tokens):
    ids = [BOS] + _user_turn(tokens)  # an evaluation-style sequence without the model turn
    with pytest.raises(BoundaryError, match="model-turn opener"):
        labels_for_sequence(ids, tokens)
    ids = _sequence(tokens) + [NL] + _user_turn(tokens)  # a user turn after the answer
    with pytest.raises(BoundaryError, match="model-turn opener"):
        labels_for_sequence(ids, tokens)


def test_no_turn_at_all_is_refused():
    with pytest.raises(BoundaryError, match="no start-of-turn"):
        supervised_span([BOS] + TEXT + ANSWER + [EOT], GEMMA4_E)
    with pytest.raises(BoundaryError):
        supervised_span([], GEMMA4_E)


def test_opener_merged_with_the_answer_is_refused():
    # The answer began with "\n", and the tokenizer merged the opener's "\n" with it into "\n\n" (108).
    ids = [BOS] + _user_turn(GEMMA4_E) + [SOT, MODEL, 108] + ANSWER + [EOT]
    with pytest.raises(BoundaryError, match="merged"):
        labels_for_sequence(ids, GEMMA4_E)
    # The 31B opener's thought channel is missing (a sequence built with the E-series template).
    ids = [BOS] + _user_turn(GEMMA4_31B) + [SOT, MODEL, NL] + ANSWER + [EOT]
    with pytest.raises(BoundaryError, match="merged"):
        labels_for_sequence(ids, GEMMA4_31B)
    # The opener's last token merged away entirely: the sequence ends inside the opener.
    ids = [BOS] + _user_turn(GEMMA4_31B) + [SOT, MODEL, NL, CHANNEL_OPEN, THOUGHT, NL]
    with pytest.raises(BoundaryError):
        labels_for_sequence(ids, GEMMA4_31B)


def test_opener_must_start_with_start_of_turn():
    with pytest.raises(ValueError, match="start_of_turn"):
        TurnTokens(start_of_turn=SOT, end_of_turn=EOT, model_opener=(MODEL, NL), begin_image=1, end_image=2,
                   image=3, pad=0)
    with pytest.raises(ValueError):
        TurnTokens(start_of_turn=SOT, end_of_turn=EOT, model_opener=(), begin_image=1, end_image=2, image=3, pad=0)


@FAMILIES
def test_right_and_left_padding(tokens):
    short = _sequence(tokens, answer=[2516], n_soft=(2,))
    long = _sequence(tokens, answer=ANSWER, n_soft=(5,))
    width = len(long)
    pad = width - len(short)
    assert pad > 0
    want_short = [X] * (len(short) - 2) + [2516, tokens.end_of_turn]
    want_long = [X] * (width - 4) + ANSWER + [tokens.end_of_turn]

    right = labels_for_batch([short + [PAD] * pad, long], [[1] * len(short) + [0] * pad, [1] * width], tokens)
    assert right == [want_short + [X] * pad, want_long]

    left = labels_for_batch([[PAD] * pad + short, long], [[0] * pad + [1] * len(short), [1] * width], tokens)
    assert left == [[X] * pad + want_short, want_long]


def test_padding_is_never_supervised_even_when_it_looks_like_an_answer():
    seq = _sequence(GEMMA4_E)
    # Padding ids that spell a model turn (as if the padded region were filled with another example).
    junk = [SOT, MODEL, NL, 777, EOT]
    for ids, mask in [(seq + junk, [1] * len(seq) + [0] * len(junk)), (junk + seq, [0] * len(junk) + [1] * len(seq))]:
        (labels,) = labels_for_batch([ids], [mask], GEMMA4_E)
        assert all(lab == X for lab, m in zip(labels, mask) if not m)
        assert [t for t in labels if t != X] == ANSWER + [EOT]
    # Pad ids themselves are never supervised, whatever side.
    (labels,) = labels_for_batch([seq + [PAD] * 7], [[1] * len(seq) + [0] * 7], GEMMA4_E)
    assert labels[-7:] == [X] * 7


def _place(seq: list[int], mask: list[int]) -> list[int]:
    """Put `seq` on the masked-in positions of a row of pads (the mask has exactly len(seq) ones)."""
    ids, it = [PAD] * len(mask), iter(seq)
    for i, m in enumerate(mask):
        if m:
            ids[i] = next(it)
    return ids


@pytest.mark.parametrize("holes", [
    lambda n: [1, 1, 0] + [1] * (n - 2),  # a hole near the start of the real tokens
    lambda n: [1] * (n - 4) + [0] + [1] * 4 + [0, 0],  # a hole inside the answer, right padding
    lambda n: [0, 0] + [1] * (n - 1) + [0, 1],  # a stray real token inside the padding
])
def test_non_contiguous_attention_mask_is_refused(holes):
    seq = _sequence(GEMMA4_E, answer=[2516], n_soft=(1,))
    mask = holes(len(seq))
    assert sum(mask) == len(seq)
    with pytest.raises(BoundaryError, match="row 0: the attention mask is not one contiguous"):
        labels_for_batch([_place(seq, mask)], [mask], GEMMA4_E)


def test_a_row_without_real_tokens_is_refused():
    with pytest.raises(BoundaryError, match="contiguous"):
        labels_for_batch([[PAD] * 5], [[0] * 5], GEMMA4_E)


def test_padding_on_both_sides_is_one_block_and_accepted():
    seq = _sequence(GEMMA4_E)
    mask = [0, 0] + [1] * len(seq) + [0, 0, 0]
    (labels,) = labels_for_batch([_place(seq, mask)], [mask], GEMMA4_E)
    assert labels == [X] * (len(mask) - 3 - len(ANSWER) - 1) + ANSWER + [EOT] + [X] * 3


def test_non_contiguous_mask_names_the_row():
    good = _sequence(GEMMA4_E)
    bad_mask = [1] * len(good)
    bad_mask[3] = 0
    with pytest.raises(BoundaryError, match="row 1"):
        labels_for_batch([good, good], [[1] * len(good), bad_mask], GEMMA4_E)


def test_batch_rows_are_checked_one_by_one():
    good = _sequence(GEMMA4_E)
    truncated = good[:-1] + [PAD]
    with pytest.raises(BoundaryError, match="truncated"):
        labels_for_batch([good, truncated], [[1] * len(good), [1] * (len(good) - 1) + [0]], GEMMA4_E)


@pytest.mark.parametrize(("ids", "match"), [
    ([G4_BOI, G4_IMG, G4_IMG], "no end-of-image"),  # unpaired begin (truncated inside an image)
    ([G4_IMG, G4_EOI], "outside"),  # soft token before any begin
    ([G4_EOI], "never began"),  # unpaired end
    ([G4_BOI, G4_IMG, G4_EOI, G4_EOI], "never began"),  # an extra end
    ([G4_BOI, G4_IMG, G4_BOI, G4_IMG, G4_EOI, G4_EOI], "inside another"),  # nested
    ([G4_BOI, G4_IMG, G4_EOI, 3689, G4_IMG], "outside"),  # stray soft token in the text
    ([G4_BOI, G4_IMG, G4_EOI, G4_BOI, 3689], "no end-of-image"),  # second image unterminated
])
def test_image_token_counts_refuses_malformed_images(ids, match):
    with pytest.raises(BoundaryError, match=match):
        image_token_counts([BOS, SOT] + ids + [EOT], GEMMA4_E)


def test_image_token_counts_on_well_formed_sequences():
    assert image_token_counts([BOS, SOT, USER, NL] + TEXT + [EOT], GEMMA4_E) == []
    assert image_token_counts(_image(GEMMA4_E, 0) + _image(GEMMA4_E, 7), GEMMA4_E) == [0, 7]
    # Text between images is fine.
    assert image_token_counts(_image(GEMMA3, 256) + [NL, NL] + _image(GEMMA3, 256), GEMMA3) == [256, 256]


# ---------------------------------------------------------------------------------------------------------
# Properties on the real tiny processors
# ---------------------------------------------------------------------------------------------------------

VARIANTS = ("gemma4-e", "gemma4-31b", "gemma3")
INSTRUCTION = "What breed is the pet in this image? Answer with one breed from this list: a, b_c, é ñ."


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint):
    return {v: tiny_checkpoint(v) for v in VARIANTS}


@pytest.fixture(scope="module")
def encoders(checkpoints):
    cache: dict = {}

    def get(variant: str, budget: int | None) -> PromptEncoder:
        key = (variant, budget)
        if key not in cache:
            family = "gemma3" if variant == "gemma3" else "gemma4"
            processor = load_processor(checkpoints[variant], family,
                                       max_soft_tokens=budget if family == "gemma4" else None)
            cache[key] = PromptEncoder(processor, family, INSTRUCTION)
        return cache[key]

    return get


def _processor_soft_tokens(enc: PromptEncoder, image: Image.Image) -> int:
    """What the processor itself gives an image (not the encoder's formula)."""
    if enc.family == "gemma3":
        return enc.processor.full_image_sequence.count(enc.processor.tokenizer.image_token)
    return int(enc.processor.image_processor(image)["num_soft_tokens_per_image"][0])


side = st.integers(16, 2000)
sizes = st.one_of(
    st.tuples(side, side),
    st.tuples(st.integers(16, 40), st.integers(1200, 2000)),  # extreme portrait
    st.tuples(st.integers(1200, 2000), st.integers(16, 40)),  # extreme landscape
)
ALPHABET = "abcXYZ_ 0123456789éöñßÉ"
answers = st.text(alphabet=ALPHABET, min_size=1, max_size=24)
examples = st.lists(st.tuples(sizes, answers), min_size=2, max_size=3)
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode(tok, ids) -> str:
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@FAST
@given(variant=st.sampled_from(VARIANTS), budget=st.sampled_from(SUPPORTED_BUDGETS),
       padding_side=st.sampled_from(["left", "right"]), batch=examples)
def test_encoded_batches_supervise_exactly_the_answer(encoders, variant, budget, padding_side, batch):
    enc = encoders(variant, budget if variant != "gemma3" else None)
    tok, tokens = enc.processor.tokenizer, enc.tokens
    images = [Image.new("RGB", (w, h), (40 * i, 90, 200)) for i, ((w, h), _) in enumerate(batch)]
    answers_ = [a for _, a in batch]
    out = enc.encode(images, answers_, padding_side=padding_side)
    ids_b, mask_b, labels_b = (out[k].tolist() for k in ("input_ids", "attention_mask", "labels"))
    assert len(ids_b) == len(batch)

    for row, ((w, h), answer) in enumerate(batch):
        ids, mask, labels = ids_b[row], mask_b[row], labels_b[row]
        kept = [i for i, m in enumerate(mask) if m]
        assert kept == list(range(kept[0], kept[-1] + 1))
        if len(kept) < len(ids):  # padded rows are padded on the requested side
            assert (kept[0] == 0) == (padding_side == "right")
        # Padding is never supervised.
        assert all(labels[i] == IGNORE_INDEX for i, m in enumerate(mask) if not m)
        assert all(ids[i] == tokens.pad for i, m in enumerate(mask) if not m)
        # Exactly one supervised span, carrying the ids themselves.
        sup = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
        assert sup == list(range(sup[0], sup[-1] + 1))
        assert [labels[i] for i in sup] == [ids[i] for i in sup]
        assert ids[sup[-1]] == tokens.end_of_turn and sup[-1] == kept[-1]
        # It decodes to the answer and the end-of-turn token, exactly.
        assert _decode(tok, [ids[i] for i in sup]) == answer + enc.end_of_turn_text
        # Soft tokens: what the ids hold == the encoder's formula == the processor's own count.
        real = [ids[i] for i in kept]
        expected = enc.image_tokens(w, h)
        assert image_token_counts(real, tokens) == [expected]
        assert expected == _processor_soft_tokens(enc, images[row])
        if variant == "gemma3":
            assert expected == 256
        else:
            assert 0 < expected <= budget
        # Training and evaluation share the prefix: the ids before the span are the evaluation prompt's.
        prompt = enc.encode([images[row]], None)["input_ids"][0].tolist()
        assert real[:sup[0] - kept[0]] == prompt
        assert labels_for_sequence(real, tokens) == [labels[i] for i in kept]


@FAST
@given(variant=st.sampled_from(VARIANTS), budget=st.sampled_from(SUPPORTED_BUDGETS), size_a=sizes, size_b=sizes,
       answer=answers)
def test_two_images_in_one_prompt(encoders, variant, budget, size_a, size_b, answer):
    enc = encoders(variant, budget if variant != "gemma3" else None)
    proc, tok, tokens = enc.processor, enc.processor.tokenizer, enc.tokens
    prompt_text = proc.apply_chat_template(build_messages(INSTRUCTION, None, n_images=2), add_generation_prompt=True,
                                           tokenize=False)
    images = [Image.new("RGB", size_a, (10, 20, 30)), Image.new("RGB", size_b, (200, 100, 0))]
    ids = proc(text=[prompt_text + answer + enc.end_of_turn_text], images=[images],
               return_tensors="pt")["input_ids"][0].tolist()
    prompt_ids = proc(text=[prompt_text], images=[images], return_tensors="pt")["input_ids"][0].tolist()

    expected = [enc.image_tokens(*size_a), enc.image_tokens(*size_b)]
    assert image_token_counts(ids, tokens) == expected
    assert expected == [_processor_soft_tokens(enc, im) for im in images]
    labels = labels_for_sequence(ids, tokens)
    start, end = supervised_span(ids, tokens)
    assert end == len(ids)
    assert ids[:start] == prompt_ids
    sup = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
    assert sup == list(range(start, end))
    assert _decode(tok, ids[start:end]) == answer + enc.end_of_turn_text


def test_encoder_turn_tokens_match_the_templates(encoders):
    e, big, g3 = encoders("gemma4-e", None), encoders("gemma4-31b", None), encoders("gemma3", None)
    conv = e.processor.tokenizer.convert_tokens_to_ids
    assert e.tokens.start_of_turn == conv("<|turn>") and e.tokens.end_of_turn == conv("<turn|>")
    assert e.processor.tokenizer.decode(e.tokens.model_opener) == "<|turn>model\n"
    assert big.processor.tokenizer.decode(big.tokens.model_opener) == "<|turn>model\n<|channel>thought\n<channel|>"
    assert big.prompt_text.endswith("<|turn>model\n<|channel>thought\n<channel|>")
    assert g3.processor.tokenizer.decode(g3.tokens.model_opener) == "<start_of_turn>model\n"
    assert g3.end_of_turn_text == "<end_of_turn>" and e.end_of_turn_text == "<turn|>"
    for enc in (e, big, g3):
        assert enc.training_text("Abyssinian") == enc.prompt_text + "Abyssinian" + enc.end_of_turn_text


# ---------------------------------------------------------------------------------------------------------
# The real Gemma 4 image processor math (patch 16, pooling 3, budget 280)
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("width", "height", "soft_tokens"), [
    (500, 375, 266), (333, 500, 260), (500, 500, 256), (225, 300, 266), (1500, 2000, 266),
    (375, 500, 266), (500, 333, 260),  # transposes give the same count
])
def test_reference_soft_token_counts_at_the_default_budget(width, height, soft_tokens):
    from transformers import Gemma4ImageProcessorPil
    from transformers.models.gemma4.processing_gemma4 import get_aspect_ratio_preserving_size

    ip = Gemma4ImageProcessorPil()
    assert (ip.patch_size, ip.pooling_kernel_size, ip.max_soft_tokens) == (16, 3, 280)
    # get_aspect_ratio_preserving_size takes (height, width); PIL sizes are (width, height).
    th, tw = get_aspect_ratio_preserving_size(height=height, width=width, patch_size=16, max_patches=280 * 9,
                                              pooling_kernel_size=3)
    assert th % 48 == 0 and tw % 48 == 0
    assert (th // 16) * (tw // 16) // 9 == soft_tokens
    assert (th >= tw) == (height >= width)  # orientation preserved
    # The image processor on a PIL image of that size (width, height) agrees.
    out = ip(Image.new("RGB", (width, height)))
    assert list(out["num_soft_tokens_per_image"]) == [soft_tokens]


def test_reference_counts_through_the_processor_and_the_encoder(checkpoints):
    """Our encoder's image_tokens(width, height) on a processor with the real image settings."""
    from transformers import Gemma4ImageProcessorPil

    processor = load_processor(checkpoints["gemma4-e"], "gemma4")
    processor.image_processor = Gemma4ImageProcessorPil()  # patch 16, pooling 3, budget 280
    enc = PromptEncoder(processor, "gemma4", INSTRUCTION)
    got = {(w, h): enc.image_tokens(w, h) for w, h in [(500, 375), (333, 500), (500, 500), (225, 300), (1500, 2000)]}
    assert got == {(500, 375): 266, (333, 500): 260, (500, 500): 256, (225, 300): 266, (1500, 2000): 266}
    data = processor._get_num_multimodal_tokens(image_sizes=[(375, 500), (500, 333)])  # (height, width)
    assert list(data.num_image_tokens) == [266, 260]
    batch = enc.encode([Image.new("RGB", (333, 500))], ["x"])
    assert image_token_counts(batch["input_ids"][0].tolist(), enc.tokens) == [260]
