"""The class scorers: the log-likelihood of every class name as the answer to the prompt, per image.

`score_classes` runs the prompt once and shares its key/value cache among the candidates (any family);
`score_classes_packed` scores a batch of images in one forward, every candidate packed after its prompt
behind masks that keep candidates apart (Gemma 4 and Gemma 3: both models take a dict of per-layer-type 4D
masks as they are). evaluate, the server and the benchmarks call these.
"""

from __future__ import annotations

import numpy as np
import torch

from petqlora.gemma.encoding import PromptEncoder
from petqlora.gemma.masking import supervised_span
from petqlora.gemma.modeling import base_model, head_logits


def candidate_ids(encoder: PromptEncoder, classes: list[str]) -> list[list[int]]:
    """Each class as the exact ids training supervises: the answer and the end-of-turn token."""
    tok = encoder.processor.tokenizer
    out = []
    for label in classes:
        ids = tok(encoder.training_text(label), add_special_tokens=False)["input_ids"]
        start, end = supervised_span(ids, encoder.tokens)
        out.append(ids[start:end])
    return out


@torch.no_grad()
def score_classes(model, encoder: PromptEncoder, image, candidates: list[list[int]]) -> np.ndarray:
    """Log-likelihood of each candidate after the prompt; the prompt is run once, its cache shared."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in encoder.encode([image], None).items()}
    # Only the last prompt position's logits are needed: projecting the whole prompt (hundreds of image
    # tokens) onto a 262k vocabulary would cost more memory than the rest of the pass.
    out = model(**batch, use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(_at_least_fp32(out.logits[0, -1]), dim=-1)
    n, longest = len(candidates), max(len(c) for c in candidates)
    scores = torch.stack([first[c[0]] for c in candidates])
    if longest > 1:
        cache = out.cache
        cache.batch_repeat_interleave(n)
        ids = torch.full((n, longest - 1), encoder.tokens.pad, dtype=torch.long, device=device)
        mask = torch.zeros((n, longest - 1), dtype=torch.long, device=device)
        for i, c in enumerate(candidates):
            ids[i, :len(c) - 1] = torch.tensor(c[:-1], device=device)
            mask[i, :len(c) - 1] = 1
        prompt_mask = batch["attention_mask"].expand(n, -1)
        logits = model(input_ids=ids, attention_mask=torch.cat([prompt_mask, mask], dim=1),
                       cache=cache, use_cache=True).logits
        logp = torch.log_softmax(_at_least_fp32(logits), dim=-1)
        for i, c in enumerate(candidates):
            if len(c) > 1:
                scores[i] += logp[i, torch.arange(len(c) - 1), torch.tensor(c[1:], device=device)].sum()
    return scores.cpu().numpy()


def _packed_masks(model, family: str, segments: torch.Tensor, positions: torch.Tensor, vision_blocks: torch.Tensor,
                  dtype: torch.dtype) -> dict:
    """Per-layer-type 4D masks for rows of [prompt, candidate 1, candidate 2, ...].

    `segments` is 0 on the prompt, k on candidate k and -1 on padding. A token sees the prompt up to itself
    and the earlier tokens of its own candidate, never another candidate. The tokens of one image see each
    other where the model lets them: Gemma 3 on every layer (its masks when token_type_ids are given, as
    the processor gives them), Gemma 4 on sliding layers when its bidirectional vision overlay is
    configured. Sliding layers measure their window in positions, as the unpacked sequence would.
    """
    text = model.config.get_text_config()
    q, k = segments[:, :, None], segments[:, None, :]
    idx = torch.arange(segments.shape[1], device=segments.device)
    causal = idx[None, :, None] >= idx[None, None, :]
    own = (k == 0) | (k == q)
    full = causal & own & (k >= 0) & (q >= 0)
    vq, vk = vision_blocks[:, :, None], vision_blocks[:, None, :]
    same_image = (vq == vk) & (vq >= 0)
    if family == "gemma3":
        full = full | same_image
    sliding = full
    if family == "gemma4" and getattr(text, "use_bidirectional_attention", None) == "vision":
        sliding = sliding | same_image
    window = getattr(text, "sliding_window", None)
    if window:
        sliding = sliding & ((positions[:, :, None] - positions[:, None, :]) < window)
    masks = {"full_attention": full[:, None], "sliding_attention": sliding[:, None]}
    if model.config._attn_implementation != "sdpa":  # eager and others take an additive float mask
        low = torch.finfo(dtype).min
        masks = {key: torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(~m, low)
                 for key, m in masks.items()}
    return masks


@torch.no_grad()
def score_classes_packed(model, encoder: PromptEncoder, images: list, candidates: list[list[int]]) -> np.ndarray:
    """Log-likelihood of every candidate for a batch of images in ONE forward pass (Gemma 4 and Gemma 3).

    Each row is the prompt followed by all candidates (minus their last token), each candidate placed at
    the positions it would have right after the prompt; the masks keep candidates from seeing each other.
    It gives the scores of running each prompt + candidate on its own, with one forward per batch.
    """
    family = encoder.family
    text = base_model(model).config.get_text_config()
    if family == "gemma3" and getattr(text, "use_bidirectional_attention", False):
        raise ValueError("this Gemma 3 attends bidirectionally (use_bidirectional_attention=true): it is an "
                         "encoder, and no causal scorer applies to it; evaluate a generative Gemma 3")
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in encoder.encode(images, None, padding_side="right").items()}
    type_key = "mm_token_type_ids" if family == "gemma4" else "token_type_ids"
    prompt_len = batch["attention_mask"].sum(1).tolist()
    body = [c[:-1] for c in candidates]  # a candidate's last token is predicted, never fed
    width = max(prompt_len) + sum(len(b) for b in body)
    n = len(images)
    ids = torch.full((n, width), encoder.tokens.pad, dtype=torch.long, device=device)
    segments = torch.full((n, width), -1, dtype=torch.long, device=device)
    positions = torch.zeros((n, width), dtype=torch.long, device=device)
    mm_types = torch.zeros((n, width), dtype=torch.long, device=device)
    # where each candidate's predictions come from: index of the token that predicts its j-th token
    sources = []
    for row in range(n):
        p = prompt_len[row]
        ids[row, :p] = batch["input_ids"][row, :p]
        segments[row, :p] = 0
        positions[row, :p] = torch.arange(p, device=device)
        if type_key in batch:
            mm_types[row, :p] = batch[type_key][row, :p]
        at, row_sources = p, []
        for k, tokens in enumerate(body, 1):
            ids[row, at:at + len(tokens)] = torch.tensor(tokens, dtype=torch.long, device=device)
            segments[row, at:at + len(tokens)] = k
            positions[row, at:at + len(tokens)] = torch.arange(p, p + len(tokens), device=device)
            row_sources.append([p - 1] + list(range(at, at + len(tokens))))
            at += len(tokens)
        sources.append(row_sources)
    vision = (mm_types == 1) | (mm_types == 2) if family == "gemma4" else mm_types == 1  # image (and video)
    starts = vision & ~torch.roll(vision, 1, dims=1)
    starts[:, 0] = vision[:, 0]
    vision_blocks = torch.where(vision, torch.cumsum(starts.long(), dim=1) - 1, -1)
    inner = base_model(model)
    dtype = next(p for p in inner.parameters() if p.is_floating_point()).dtype
    masks = _packed_masks(inner, family, segments, positions, vision_blocks, torch.promote_types(dtype, torch.float32)
                          if dtype not in (torch.bfloat16, torch.float16) else dtype)
    extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", type_key)}
    if family == "gemma4":  # Gemma 4 also places image features by them; Gemma 3 reads them for masks only
        extra["mm_token_type_ids"] = mm_types
    hidden = inner.model(input_ids=ids, attention_mask=masks, position_ids=positions, use_cache=False,
                         **extra).last_hidden_state
    rows = torch.tensor([r for r in range(n) for src in sources[r] for _ in src], device=device)
    cols = torch.tensor([i for r in range(n) for src in sources[r] for i in src], device=device)
    targets = torch.tensor([t for _ in range(n) for c in candidates for t in c], device=device)
    logits = head_logits(inner, hidden[rows, cols])
    logp = torch.log_softmax(_at_least_fp32(logits), dim=-1).gather(-1, targets[:, None])[:, 0]
    lengths = torch.tensor([len(c) for c in candidates] * n, device=device)
    owner = torch.repeat_interleave(torch.arange(n * len(candidates), device=device), lengths)
    scores = torch.zeros(n * len(candidates), dtype=logp.dtype, device=device).index_add_(0, owner, logp)
    return scores.view(n, len(candidates)).cpu().numpy()


def _at_least_fp32(logits: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits up to fp32 for the softmax; fp32 and fp64 stay as they are."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))
