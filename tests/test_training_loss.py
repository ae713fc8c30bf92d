"""What one optimizer step trains on: the loss average, fresh gradients per step, and clipping in training.

- forward_backward's gradient over micro-batches of unequal supervised-token counts must be the gradient
  of one loss: the sum of every token loss over the total supervised-token count. A mean of per-micro-batch
  means weights a token of a short answer more than one of a long answer; the samples below make that a
  large difference, so such a change fails here.
- Each optimizer step of train_adapter's loop must see only the gradient of its own micro-batches (the
  gradient is zeroed between steps). optimizer.zero_grad lives only inside train_adapter, so the real loop
  is driven on a tiny dataset and the gradient handed to each optimizer step is checked against one
  computed freshly for that step's batches.
- Gemma 4's Gemma4ClippableLinear clamps must hold during a training forward (train mode, LoRA applied by
  petqlora.gemma.lora through prepare_for_training, forward and backward through forward_backward), not only in
  eval mode after training (tests/test_lora.py).

The reference loss is computed "the straightforward way": the model's full forward (all logits, soft-capped
by the model itself), shifted, summed over supervised tokens and divided by their count. It shares no code
with forward_backward or modeling.supervised_logits. Everything runs on CPU in float32 with LoRA dropout 0,
so a recomputation gives the same numbers and only float rounding separates the two paths.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer
from torch.optim.optimizer import register_optimizer_step_pre_hook

import petqlora.train.loop as train_loop
from petqlora.data import dataset as data_lib
from petqlora.gemma.encoding import PromptEncoder
from petqlora.gemma.masking import IGNORE_INDEX
from petqlora.gemma.modeling import load_model_and_processor
from petqlora.train.config import TrainConfig
from petqlora.train.loop import forward_backward, prepare_for_training
from petqlora.train.train_adapter import train_adapter

CPU = torch.device("cpu")
CLIPPABLE = "Gemma4ClippableLinear"


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint) -> Path:
    # The E-like Gemma 4: its vision tower is built from Gemma4ClippableLinear with finite bounds
    # (inputs +-2, outputs +-0.5), so the same model serves the loss tests and the clipping test.
    return tiny_checkpoint("gemma4-e")


@pytest.fixture(scope="module")
def dataset(pets_dataset) -> Path:
    return pets_dataset(4)  # the session's shared 12-image set (6 breeds, names of 9 to 24 answer tokens)


def config(model: Path, **overrides) -> TrainConfig:
    # Dropout 0: a recomputed forward must equal the one that produced the gradient under test.
    values = dict(base_model=str(model), lora_r=4, lora_alpha=4, lora_dropout=0.0, batch_size=2, grad_accum=2,
                  max_steps=2, learning_rate=1e-2, warmup_ratio=0.0, image_token_budget=70, checkpoint_every=0,
                  log_every=1, seed=3, device="cpu")
    values.update(overrides)
    return TrainConfig(**values)


def lora_model(path: Path, cfg: TrainConfig, dataset: Path):
    """The training model as train_adapter builds it (float32 on CPU, LoRA by petqlora.gemma.lora), and an encoder."""
    model, processor, family = load_model_and_processor(path, quantize_4bit=False, device=CPU,
                                                        image_token_budget=cfg.image_token_budget)
    model, _ = prepare_for_training(model, cfg, CPU, quantized=False)
    encoder = PromptEncoder(processor, family, data_lib.read_manifest(dataset)["instruction"])
    return model, encoder


def randomize_lora_b(model, std: float, only: str = "", seed: int = 0) -> int:
    """Non-zero LoRA B weights: with PEFT's B = 0 the gradient of every A is zero and would compare trivially."""
    g = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer) and only in name:
                for b in module.lora_B.values():
                    b.weight.copy_(torch.randn(b.weight.shape, generator=g) * std)
                    n += 1
    assert n > 0
    return n


def n_supervised(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def token_loss_sum(model, batch: dict) -> torch.Tensor:
    """Sum of the cross-entropy of every supervised token, from the model's full forward."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "image_keys")}
    logits = model(**inputs, use_cache=False).logits.float()
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                             ignore_index=IGNORE_INDEX, reduction="sum")


def reference_loss(model, batches: list[dict]) -> torch.Tensor:
    """sum of token losses / total supervised tokens, over all the batches together."""
    return sum(token_loss_sum(model, b) for b in batches) / sum(n_supervised(b) for b in batches)


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def grads_of(loss: torch.Tensor, params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    # autograd.grad leaves every .grad untouched, so a reference never mixes into the gradient under test.
    got = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(params.items(), got)}


def relative_error(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    """|got - want| / |want| over all the parameters as one vector (per-tensor ratios explode near zero)."""
    assert got.keys() == want.keys() and want
    diff = torch.cat([(got[n] - want[n]).flatten() for n in want])
    ref = torch.cat([want[n].flatten() for n in want])
    return float(diff.norm() / ref.norm())


# ---------------------------------------------------------------------------------------------------------
# 1. One step's loss is the mean over all its supervised tokens, however they fall into micro-batches
# ---------------------------------------------------------------------------------------------------------

def test_micro_batch_gradient_equals_one_batch_token_mean(tiny_model, dataset):
    cfg = config(tiny_model)
    model, encoder = lora_model(tiny_model, cfg, dataset)
    randomize_lora_b(model, std=0.05)
    params = trainable(model)
    # Each record alone, to read its supervised-token count: the breed name's tokens plus end-of-turn.
    records = data_lib.read_split(dataset, "train")
    images = {r["id"]: data_lib.load_image(dataset, r) for r in records}
    count = {r["id"]: n_supervised(encoder.encode([images[r["id"]]], [r["label"]])) for r in records}
    by_count = sorted(records, key=lambda r: count[r["id"]])
    short, longs = by_count[:1], by_count[-2:]  # one short answer vs two long ones (9 vs 2 x 24 tokens)

    def encode(recs):
        return encoder.encode([images[r["id"]] for r in recs], [r["label"] for r in recs])

    micro = [encode(short), encode(longs)]
    n_a, n_b = n_supervised(micro[0]), n_supervised(micro[1])
    assert n_b >= 4 * n_a, (n_a, n_b)  # unequal enough that a mean of means weights tokens very differently

    model.zero_grad(set_to_none=True)
    total, seen = forward_backward(model, micro, CPU, autocast=False)
    got = {n: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for n, p in params.items()}
    model.zero_grad(set_to_none=True)

    # The straightforward way: all three samples in one padded batch through the model's own forward.
    whole = encode(short + longs)
    assert n_supervised(whole) == n_a + n_b
    loss = reference_loss(model, [whole])
    want = grads_of(loss, params)
    err = relative_error(got, want)
    assert err < 1e-4, f"forward_backward's gradient is {err:.3g} (relative) off the token-mean gradient"
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-4 * float(want[name].abs().max()) + 1e-9,
                                   msg=lambda m, name=name: f"{name}: {m}")
    # The returned loss is that same token mean (it is what the loss curve shows).
    assert total == pytest.approx(loss.item(), rel=1e-5)
    assert seen == sum(int(b["attention_mask"].sum()) for b in micro)
    # Vision and language adapters both receive gradient (the answer depends on the image).
    assert any(".vision_tower." in n and float(g.abs().max()) > 0 for n, g in want.items())

    # The samples discriminate: the mean of per-micro-batch means has a clearly different gradient.
    mean_of_means = sum(token_loss_sum(model, b) / n_supervised(b) for b in micro) / len(micro)
    assert relative_error(grads_of(mean_of_means, params), want) > 0.5


# ---------------------------------------------------------------------------------------------------------
# 2. Gradients do not carry over from one optimizer step to the next (train_adapter's own loop)
# ---------------------------------------------------------------------------------------------------------

def test_each_optimizer_step_sees_only_its_own_gradient(tiny_model, dataset, tmp_path, monkeypatch):
    # max_grad_norm far above any gradient norm: clip_grad_norm_ then multiplies by exactly 1.0, so the
    # optimizer sees the raw gradient. Two steps of two micro-batches of two examples.
    cfg = config(tiny_model, max_steps=2, max_grad_norm=1e6)
    calls = []  # (model, encoded micro-batches) of each forward_backward the loop makes
    steps = []  # per optimizer step: the gradient handed to the optimizer, and a fresh one for its batches

    def recording_forward_backward(model, encoded, *args, **kwargs):
        calls.append((model, encoded))
        return forward_backward(model, encoded, *args, **kwargs)

    def before_step(optimizer, args, kwargs):
        # Runs before the update, so the weights are those the step's gradient was computed at.
        model, encoded = calls[-1]
        params = trainable(model)
        by_id = {id(p): p for group in optimizer.param_groups for p in group["params"]}
        assert set(by_id) == {id(p) for p in params.values()}, "the optimizer holds exactly the trainable params"
        got = {n: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for n, p in params.items()}
        with torch.enable_grad():
            loss = reference_loss(model, encoded)
            want = grads_of(loss, params)
        steps.append((got, want, loss.item()))

    monkeypatch.setattr(train_loop, "forward_backward", recording_forward_backward)
    handle = register_optimizer_step_pre_hook(before_step)
    try:
        metrics = train_adapter(dataset, tmp_path / "out", cfg)
    finally:
        handle.remove()

    assert len(calls) == len(steps) == 2
    assert all(len(encoded) == 2 for _, encoded in calls)
    for k, (got, want, loss) in enumerate(steps, start=1):
        # Step 1 has nothing to carry over; at step 2 a kept gradient would add step 1's.
        err = relative_error(got, want)
        assert err < 1e-4, f"step {k}: the optimizer's gradient is {err:.3g} (relative) off this step's own"
        assert metrics["loss"][k - 1] == [k, pytest.approx(loss, rel=1e-4, abs=1e-5)]
    # The steps' gradients are far apart, so a carried-over one could not pass for a fresh one.
    assert relative_error(steps[0][1], steps[1][1]) > 0.1


# ---------------------------------------------------------------------------------------------------------
# 3. Gemma4ClippableLinear's clamps hold during a training forward
# ---------------------------------------------------------------------------------------------------------

class TrainingClipProbe:
    """Hooks at every clipped wrapper's path (the model's paths before LoRA) and on its inner linear.

    Records, per path: the range of the raw input reaching the module at the path (before any input
    clamp), the range of the input the inner linear sees, the inner linear's raw output range (before the
    output clamp), and the range the module at the path writes. If something replaced the wrapper, the
    module at the path is hooked as both outer and inner, so unclamped values show up as out of bounds.
    """

    def __init__(self, model, paths: list[str]):
        modules = dict(model.named_modules())
        self.ranges: dict[str, dict[str, list[float]]] = {p: {} for p in paths}
        self.calls = {p: 0 for p in paths}
        self.modules = {}
        self.handles = []
        for path in paths:
            full = next(n for n in modules if n == path or n.endswith("." + path))
            outer = modules[full]
            inner = getattr(outer, "linear", outer)
            self.modules[path] = outer
            self.handles += [outer.register_forward_pre_hook(self._pre(path)),
                             inner.register_forward_hook(self._inner(path)),
                             outer.register_forward_hook(self._outer(path))]

    def _note(self, path: str, key: str, x: torch.Tensor) -> None:
        lo, hi = float(x.detach().min()), float(x.detach().max())
        old = self.ranges[path].get(key, [lo, hi])
        self.ranges[path][key] = [min(old[0], lo), max(old[1], hi)]

    def _pre(self, path):
        def hook(module, args):
            self._note(path, "raw_in", args[0])
        return hook

    def _inner(self, path):
        def hook(module, args, out):
            self._note(path, "inner_in", args[0])
            self._note(path, "inner_out", out)
        return hook

    def _outer(self, path):
        def hook(module, args, out):
            self.calls[path] += 1
            self._note(path, "out", out)
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def test_clip_bounds_hold_during_the_training_forward(tiny_model, dataset):
    cfg = config(tiny_model)
    model, processor, family = load_model_and_processor(tiny_model, quantize_4bit=False, device=CPU,
                                                        image_token_budget=cfg.image_token_budget)
    # The bounds as the checkpoint loaded them, keyed by path inside the model, read before LoRA is applied.
    bounds = {name: (float(m.input_min), float(m.input_max), float(m.output_min), float(m.output_max))
              for name, m in model.named_modules() if type(m).__name__ == CLIPPABLE and m.use_clipped_linears}
    assert bounds and all(b == (-2.0, 2.0, -0.5, 0.5) for b in bounds.values()), "finite bounds expected"
    model, _ = prepare_for_training(model, cfg, CPU, quantized=False)
    encoder = PromptEncoder(processor, family, data_lib.read_manifest(dataset)["instruction"])
    # A large adapter contribution in the vision tower (as after some training): the adapted inner linears
    # then write far outside the output bounds, so only the clamp keeps the wrapper's output inside.
    randomize_lora_b(model, std=2.0, only=".vision_tower.")
    assert model.training

    records = data_lib.read_split(dataset, "train")[:4]
    micro = [encoder.encode([data_lib.load_image(dataset, r) for r in pair], [r["label"] for r in pair])
             for pair in (records[:2], records[2:])]
    probe = TrainingClipProbe(model, list(bounds))
    try:
        model.zero_grad(set_to_none=True)
        total, _ = forward_backward(model, micro, CPU, autocast=False)
    finally:
        probe.close()
    assert torch.isfinite(torch.tensor(total))

    assert all(n >= len(micro) for n in probe.calls.values()), f"every clipped linear must run: {probe.calls}"
    for path, (in_lo, in_hi, out_lo, out_hi) in bounds.items():
        seen = probe.ranges[path]
        assert in_lo <= seen["inner_in"][0] and seen["inner_in"][1] <= in_hi, \
            f"{path}: the inner linear saw inputs in {seen['inner_in']} outside [{in_lo}, {in_hi}] while training"
        assert out_lo <= seen["out"][0] and seen["out"][1] <= out_hi, \
            f"{path}: the wrapper wrote {seen['out']} outside [{out_lo}, {out_hi}] while training"

    def outside(path, key, lo, hi):
        return probe.ranges[path][key][0] < lo or probe.ranges[path][key][1] > hi

    # The clamps did work in this forward (raw inputs and the adapted linears' raw outputs leave the
    # bounds), so without them the range checks above would have failed.
    in_clamped = [p for p, b in bounds.items() if outside(p, "raw_in", b[0], b[1])]
    out_clamped = [p for p, b in bounds.items() if outside(p, "inner_out", b[2], b[3])]
    assert len(in_clamped) >= len(bounds) // 2 and len(out_clamped) == len(bounds), (in_clamped, out_clamped)
    # The modules at the wrappers' paths are still the clipped wrappers, in train mode, with LoRA inside.
    for path, module in probe.modules.items():
        assert type(module).__name__ == CLIPPABLE and module.use_clipped_linears and module.training, path
        assert isinstance(module.linear, LoraLayer), path
    # The backward went through the clamps into the vision adapters.
    vision_grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and ".vision_tower." in n]
    assert vision_grads and any(g is not None and float(g.abs().max()) > 0 for g in vision_grads)

