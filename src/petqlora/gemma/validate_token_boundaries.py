"""validate_token_boundaries: prove, before any GPU is paid for, that every example trains on exactly its answer.

    python -m petqlora.gemma.validate_token_boundaries --dataset DIR --output DIR --config CONFIG.json

For every example (or a seeded sample when asked) it encodes the training sequence with the real processor,
as training does, and checks: the soft-token count of each image equals what the image processor computes
for that image's size and budget; each image has exactly one begin/end pair; there is exactly one
supervised span and it decodes to the label + end of turn; nothing is truncated (the sequence fits
max_length); the evaluation prompt's ids are the training ids' prefix. It also checks the instruction:
every class it names is in the label set and vice versa.
"""

from __future__ import annotations

import json
import logging
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from petqlora import schema
from petqlora.data import dataset as data_lib
from petqlora.entrypoint import run_step
from petqlora.gemma.encoding import PromptEncoder
from petqlora.gemma.masking import IGNORE_INDEX, BoundaryError, image_token_counts
from petqlora.gemma.modeling import model_family
from petqlora.gemma.processors import load_processor
from petqlora.params import PipelineParams
from petqlora.problems import Problems
from petqlora.schema import field, required, same_as

log = logging.getLogger("petqlora.gemma.validate_token_boundaries")


class TokenBoundaryError(ValueError):
    """Examples whose supervised tokens are not exactly the answer and the end of turn."""


@dataclass(frozen=True)
class ValidateConfig:
    base_model: str = required("Checkpoint folder or Hub id whose processor and chat template are checked.",
                                 nonempty=True)
    image_token_budget: int = same_as(PipelineParams, "image_token_budget")
    max_length: int = same_as(PipelineParams, "max_length")
    splits: tuple[str, ...] = field(data_lib.SPLITS, "Splits to check.")
    sample: int | None = field(None, "Check a seeded sample of this many per split; None checks all.", low=1)
    seed: int = field(0, "Seed of the sample.", low=0)
    report_examples: int = field(20, "Offending examples shown in the report.", low=0)

    def __post_init__(self) -> None:
        problems = Problems("validation config")
        bad = schema.check(self, problems)
        if "splits" not in bad:
            problems.check(bool(self.splits) and set(self.splits) <= set(data_lib.SPLITS), "splits", self.splits,
                           f"must be a non-empty subset of {data_lib.SPLITS}")
        problems.raise_if_any()


# An item joined to the class list: ", name" right after it (up to the next comma or the end of a
# sentence), or "name, " right before it.
_EXTRA_AFTER = re.compile(r", ([^,]+?)(?=, |[.?!;:](?:\s|$)|$)")
_EXTRA_BEFORE = re.compile(r"([^,:]+), $")


def check_instruction(instruction: str, classes: list[str]) -> list[str]:
    """Problems between the classes the instruction names and the label set. prepare_data renders the
    classes as one comma-separated list in the dataset's order, wherever the template puts it: that list
    must be in the instruction, with no further item joined to it."""
    listed = ", ".join(classes)
    at = instruction.find(listed)
    if at < 0:
        missing = [c for c in classes if c not in instruction]
        if missing:
            return [f"classes not named in the instruction: {missing}"]
        return [f"the instruction does not list the classes as one comma-separated list in the dataset's order "
                f"({listed!r})"]
    after = _EXTRA_AFTER.match(instruction[at + len(listed):])
    before = _EXTRA_BEFORE.search(instruction[:at])
    extra = [m.group(1).strip() for m in (before, after) if m]
    return [f"instruction names classes that are not labels: {extra}"] if extra else []


def _span_problems(encoder: PromptEncoder, ids: list[int], labels: list[int], label: str) -> tuple[list[str], str]:
    """The supervised span must be one contiguous run, the sequence's own tokens, decoding to the label +
    end of turn. Returns the problems and the decoded span."""
    supervised = [i for i, t in enumerate(labels) if t != IGNORE_INDEX]
    text = encoder.processor.tokenizer.decode([ids[i] for i in supervised]) if supervised else ""
    if not supervised:
        return ["no supervised token"], text
    if supervised != list(range(supervised[0], supervised[-1] + 1)):
        return ["the supervised tokens are not one contiguous span"], text
    if any(labels[i] != ids[i] for i in supervised):
        return ["the supervised labels are not the sequence's own tokens: training would learn another answer"], text
    if text != label + encoder.end_of_turn_text:
        return [f"supervised tokens decode to {text!r}, expected {label + encoder.end_of_turn_text!r}"], text
    return [], text


def check_example(encoder: PromptEncoder, image, record: dict, max_length: int) -> dict:
    """One JSON-lines record: what was found and whether it is right."""
    expected = encoder.image_tokens(image.width, image.height)
    try:
        batch = encoder.encode([image], [record["label"]])
        prompt_ids = encoder.encode([image], None)["input_ids"][0].tolist()
    except ValueError as exc:  # e.g. a label holding a turn marker: no span can be found
        return {"example_id": record["id"], "image_tokens": None, "expected_image_tokens": expected,
                "supervised_text": "", "label": record["label"], "sequence_length": 0, "ok": False,
                "problem": f"cannot be encoded as a training sequence: {exc}"}
    ids = batch["input_ids"][0].tolist()
    labels = batch["labels"][0].tolist()
    problems = []
    try:
        counts = image_token_counts(ids, encoder.tokens)
    except BoundaryError as exc:
        counts = []
        problems.append(str(exc))
    if len(counts) != 1:
        problems.append(f"expected exactly one begin/end image pair, found {len(counts)}")
    elif counts[0] != expected:
        problems.append(f"image has {counts[0]} soft tokens, the processor computes {expected} for "
                        f"{image.width}x{image.height} at this budget")
    span_problems, text = _span_problems(encoder, ids, labels, record["label"])
    problems += span_problems
    if len(ids) > max_length:
        problems.append(f"{len(ids)} tokens exceed max_length={max_length}: training would cut the answer; "
                        f"set max_length >= {len(ids)}")
    first = next((i for i, t in enumerate(labels) if t != IGNORE_INDEX), None)
    if first is not None and ids[:first] != prompt_ids:
        problems.append("the evaluation prompt is not the prefix of the training sequence")
    return {
        "example_id": record["id"], "image_tokens": counts[0] if len(counts) == 1 else counts,
        "expected_image_tokens": expected, "supervised_text": text, "label": record["label"],
        "sequence_length": len(ids), "ok": not problems, "problem": "; ".join(problems) or None,
    }


def _report(records: list[dict], instruction_problems: list[str], cfg: ValidateConfig, family: str) -> str:
    bad = [r for r in records if not r["ok"]]
    tokens = Counter(r["expected_image_tokens"] for r in records)
    lines = [
        "# Token-boundary validation", "",
        f"- model family: {family}, image-token budget: {cfg.image_token_budget}, max length: {cfg.max_length}",
        f"- examples checked: {len(records)}; problems: {len(bad)}; instruction problems: {len(instruction_problems)}",
        f"- longest sequence: {max((r['sequence_length'] for r in records), default=0)} tokens", "",
        "## Soft tokens per image", "", "| soft tokens | images |", "| ---: | ---: |",
    ] + [f"| {n} | {c} |" for n, c in sorted(tokens.items())]
    if instruction_problems:
        lines += ["", "## Instruction", ""] + [f"- {p}" for p in instruction_problems]
    if bad:
        lines += ["", f"## First offending examples ({min(len(bad), cfg.report_examples)} of {len(bad)})", "",
                  "| example | soft tokens (found / expected) | supervised span | problem |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['example_id']} | {r['image_tokens']} / {r['expected_image_tokens']} | "
                  f"`{r['supervised_text']!r}` | {r['problem']} |" for r in bad[: cfg.report_examples]]
    return "\n".join(lines) + "\n"


def _max_length_fix(checked: list[dict], max_length: int) -> str:
    """The one value that fits every example, when some do not (a long class list makes a long instruction)."""
    longest = max((r["sequence_length"] for r in checked), default=0)
    if longest <= max_length:
        return ""
    return (f"\nFix: set max_length >= {longest} (the longest sequence checked), or shorten the instruction or "
            "lower image_token_budget")


def validate_token_boundaries(dataset_dir: str | Path, output_dir: str | Path, cfg: ValidateConfig) -> dict:
    """Check every example; write records.jsonl, report.md and metrics.json; raise when any is wrong."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    manifest = data_lib.read_manifest(dataset_dir)
    family = model_family(cfg.base_model)
    processor = load_processor(cfg.base_model, family, cfg.image_token_budget if family == "gemma4" else None)
    encoder = PromptEncoder(processor, family, manifest["instruction"])
    instruction_problems = check_instruction(manifest["instruction"], manifest["classes"])
    checked: list[dict] = []
    for split in cfg.splits:
        records = data_lib.read_split(dataset_dir, split)
        if cfg.sample is not None and cfg.sample < len(records):
            records = random.Random(cfg.seed).sample(records, cfg.sample)
        for k, rec in enumerate(records, 1):
            row = check_example(encoder, data_lib.load_image(dataset_dir, rec), rec, cfg.max_length)
            checked.append({"split": split, **row})
            if k % 100 == 0:
                log.info("%s: %d/%d checked", split, k, len(records))
    with open(output / "records.jsonl", "w") as f:
        for row in checked:
            f.write(json.dumps(row) + "\n")
    (output / "report.md").write_text(_report(checked, instruction_problems, cfg, family))
    bad = [r for r in checked if not r["ok"]]
    counts = [r["expected_image_tokens"] for r in checked]
    metrics = {"examples_checked": len(checked), "problems": len(bad), "instruction_problems": len(instruction_problems),
               "min_image_tokens": min(counts), "max_image_tokens": max(counts),
               "distinct_image_token_counts": len(set(counts)),
               "max_sequence_length": max(r["sequence_length"] for r in checked)}
    (output / "metrics.json").write_text(json.dumps(metrics, indent=1))
    log.info("checked %d examples: %d problem(s); soft tokens per image %d..%d", len(checked), len(bad),
             metrics["min_image_tokens"], metrics["max_image_tokens"])
    if bad or instruction_problems:
        shown = "\n".join(f"- {r['example_id']} ({r['split']}): {r['problem']}" for r in bad[:20])
        more = f"\n... and {len(bad) - 20} more (see records.jsonl)" if len(bad) > 20 else ""
        raise TokenBoundaryError(
            f"token-boundary validation failed for {len(bad)} of {len(checked)} example(s)"
            + (f" and the instruction ({'; '.join(instruction_problems)})" if instruction_problems else "")
            + (":\n" + shown + more if bad else "") + _max_length_fix(checked, cfg.max_length)
            + f"\nReport: {output / 'report.md'}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    return run_step(argv, prog="petqlora.gemma.validate_token_boundaries", description=__doc__.split("\n\n")[0],
                    config_cls=ValidateConfig, step=validate_token_boundaries, refused=(TokenBoundaryError,))


if __name__ == "__main__":
    sys.exit(main())
