"""The LoRA configuration for a Gemma 4 or Gemma 3 model, built from the model's own modules.

Gemma 4's vision tower wraps each projection in `Gemma4ClippableLinear`, which clamps the input and the
output to bounds loaded from the checkpoint. LoRA must adapt the *inner* `.linear`, so the adapted layer
runs between the clamps; a LoRA layer in place of the wrapper would drop them. The builder resolves the
targets to explicit module paths (recorded in the adapter's config and the training log) and refuses any
configuration that would hit a wrapper or adapt nothing in a tower the user asked to adapt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from peft import LoraConfig
from torch import nn

LANGUAGE_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GEMMA4_VISION_PROJECTIONS = LANGUAGE_PROJECTIONS
SIGLIP_VISION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
CLIPPABLE = "Gemma4ClippableLinear"


class LoraTargetError(ValueError):
    """A LoRA configuration that would break the model or adapt nothing where asked."""


@dataclass(frozen=True)
class LoraSettings:
    r: int = 64
    alpha: int = 64  # alpha usually = rank
    dropout: float = 0.05
    adapt_vision: bool = True
    # Optional user override: module-name suffixes or one regex, as PEFT's `target_modules` takes them.
    target_modules: tuple[str, ...] | str | None = None


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear)  # bitsandbytes' Linear4bit subclasses nn.Linear


def default_targets(model: nn.Module, adapt_vision: bool = True) -> list[str]:
    """Module paths of the projections to adapt: language model always, vision tower when asked."""
    lang = re.compile(r".*language_model\.layers\.\d+\.(self_attn|mlp)\.(" + "|".join(LANGUAGE_PROJECTIONS) + r")$")
    g4_vision = re.compile(r".*vision_tower\.encoder\.layers\.\d+\.(self_attn|mlp)\.("
                           + "|".join(GEMMA4_VISION_PROJECTIONS) + r")\.linear$")
    siglip = re.compile(r".*vision_tower\.vision_model\.encoder\.layers\.\d+\.(self_attn|mlp)\.("
                        + "|".join(SIGLIP_VISION_PROJECTIONS) + r")$|.*vision_tower\.encoder\.layers\.\d+\.(self_attn|mlp)\.("
                        + "|".join(SIGLIP_VISION_PROJECTIONS) + r")$")
    names = []
    for name, module in model.named_modules():
        if not _is_linear(module):
            continue
        if lang.match(name) or (adapt_vision and (g4_vision.match(name) or siglip.match(name))):
            names.append(name)
    return names


def _matches(name: str, target_modules: tuple[str, ...] | str) -> bool:
    # PEFT's rule: a string is a full-match regex; a list matches a name equal to or ending in ".<entry>".
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def check_targets(model: nn.Module, names: list[str], adapt_vision: bool) -> None:
    """Refuse wrapper targets, non-linear targets, and an empty tower; raise once with every problem."""
    modules = dict(model.named_modules())
    problems = []
    wrappers = [n for n in names if type(modules[n]).__name__ == CLIPPABLE]
    if wrappers:
        problems.append(
            f"{len(wrappers)} target(s) are Gemma4ClippableLinear wrappers (e.g. {wrappers[0]}): a LoRA layer in "
            "their place drops the input/output clamps. Target the inner '.linear' instead "
            "(e.g. 'vision_tower.*.q_proj.linear'), or leave target_modules unset to use the default")
    other = [n for n in names if n not in wrappers and not _is_linear(modules[n])]
    if other:
        problems.append(f"targets that are not linear layers: {other[:5]}")
    if not any("language_model" in n for n in names):
        problems.append("no language-model projection is adapted: the answer tokens could not be learned")
    if not adapt_vision and any("vision_tower" in n for n in names):
        problems.append("adapt_vision is off but vision-tower modules are targeted (e.g. "
                        f"{next(n for n in names if 'vision_tower' in n)}): set adapt_vision=true, or narrow "
                        "target_modules to the language model")
    if adapt_vision and not any("vision_tower" in n for n in names):
        problems.append("adapt_vision is on but no vision-tower module is targeted: set adapt_vision=false, "
                        "or include the vision projections")
    if problems:
        raise LoraTargetError("LoRA configuration refused:\n- " + "\n- ".join(problems))


def build_lora_config(model: nn.Module, settings: LoraSettings = LoraSettings()) -> LoraConfig:
    """The LoraConfig whose `target_modules` lists the exact module paths to adapt."""
    if settings.r < 1 or settings.alpha < 1 or not 0 <= settings.dropout < 1:
        raise LoraTargetError(f"LoRA r={settings.r}, alpha={settings.alpha}, dropout={settings.dropout}: "
                              "need r >= 1, alpha >= 1 and 0 <= dropout < 1")
    if settings.target_modules is None:
        names = default_targets(model, settings.adapt_vision)
    elif settings.target_modules == "all-linear":
        # PEFT's shorthand (the published recipe): every linear layer but the output head; inside a
        # Gemma4ClippableLinear that is the inner `.linear`, so the clamps stay.
        names = [n for n, m in model.named_modules() if _is_linear(m) and not n.endswith("lm_head")
                 and (settings.adapt_vision or "vision" not in n)]
    else:
        names = [n for n, _ in model.named_modules() if n and _matches(n, settings.target_modules)]
    check_targets(model, names, settings.adapt_vision)
    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, bias="none",
                      target_modules=names, task_type="CAUSAL_LM")
