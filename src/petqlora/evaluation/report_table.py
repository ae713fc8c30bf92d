"""The comparison table of the evaluate step, as a console table and a Markdown summary: ModelRow (one
approach's scores) and the checks of rows and decision."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real

from petqlora.evaluation.formats import format_f1, format_percent, format_seconds  # noqa: F401 (callers' names)

MEMORY_KINDS = ("GPU", "CPU RSS")


def _is_real(x: object) -> bool:
    # bool is an int subclass; a True accuracy is a bug, not 1.0.
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(float(x))


@dataclass
class ModelRow:
    """One approach in the comparison: a baseline or the fine-tuned model, scored on the same split."""

    approach: str
    accuracy: float  # share in [0, 1]
    macro_f1: float  # in [0, 1]
    peak_memory_gib: float
    seconds: float  # wall time of the evaluation (or training) that the row describes
    images_per_s: float | None = None
    memory_kind: str = "GPU"  # or "CPU RSS" on a CPU-only run
    top3_accuracy: float | None = None  # share in [0, 1]; None when the model gave no class scores

    def __post_init__(self) -> None:
        if not isinstance(self.approach, str) or not self.approach.strip():
            raise ValueError(f"ModelRow.approach must be a non-empty name, got {self.approach!r}; name the model")
        for name in ("accuracy", "macro_f1", "top3_accuracy"):
            value = getattr(self, name)
            if value is None and name == "top3_accuracy":
                continue
            if not _is_real(value) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(
                    f"ModelRow.{name} of {self.approach!r} is {value!r}; it must be a share in [0, 1] "
                    "(pass 0.873, not 87.3)"
                )
        for name in ("peak_memory_gib", "seconds"):
            value = getattr(self, name)
            if not _is_real(value) or float(value) < 0:
                raise ValueError(
                    f"ModelRow.{name} of {self.approach!r} is {value!r}; it must be a finite number >= 0"
                )
        if self.images_per_s is not None and (not _is_real(self.images_per_s) or self.images_per_s <= 0):
            raise ValueError(
                f"ModelRow.images_per_s of {self.approach!r} is {self.images_per_s!r}; "
                "it must be a finite number > 0, or None when not measured"
            )
        if self.memory_kind not in MEMORY_KINDS:
            raise ValueError(
                f"ModelRow.memory_kind of {self.approach!r} is {self.memory_kind!r}; use one of {MEMORY_KINDS}"
            )


def _memory(row: ModelRow) -> str:
    return f"{row.peak_memory_gib:.1f} GiB {row.memory_kind}"


def _throughput(row: ModelRow) -> str:
    return "n/a" if row.images_per_s is None else f"{row.images_per_s:.2f}"


def validate_rows(rows: object) -> list[ModelRow]:
    if not isinstance(rows, Sequence) or isinstance(rows, str) or len(rows) == 0:
        raise ValueError("rows must be a non-empty list of ModelRow; pass at least the fine-tuned model's row")
    bad = [type(r).__name__ for r in rows if not isinstance(r, ModelRow)]
    if bad:
        raise ValueError(f"rows must hold ModelRow objects, got {bad[0]}; build each row with ModelRow(...)")
    return list(rows)


def table_columns(rows: list[ModelRow]) -> list[tuple[str, list[str]]]:
    """(header, cells) per column; Top-3 and Images/s appear only when some row has them."""
    cols = [
        ("Approach", [r.approach for r in rows]),
        ("Accuracy", [format_percent(r.accuracy) for r in rows]),
        ("Macro-F1", [format_f1(r.macro_f1) for r in rows]),
    ]
    if any(r.top3_accuracy is not None for r in rows):
        cols.append(("Top-3", [format_percent(r.top3_accuracy) for r in rows]))
    cols.append(("Peak memory", [_memory(r) for r in rows]))
    cols.append(("Time", [format_seconds(r.seconds) for r in rows]))
    if any(r.images_per_s is not None for r in rows):
        cols.append(("Images/s", [_throughput(r) for r in rows]))
    return cols


def results_table(rows: list[ModelRow]) -> str:
    """A fixed-width console table, one line per approach; numbers right-aligned, accuracy in percent.

    Approach       | Accuracy | Macro-F1 | Peak memory  | Time
    ---------------+----------+----------+--------------+-------
    Gemma 3 (base) |    61.2% |    0.598 | 18.4 GiB GPU | 12m 05s
    """
    rows = validate_rows(rows)
    cols = table_columns(rows)
    widths = [max(len(h), *(len(c) for c in cells)) for h, cells in cols]

    def line(cells: list[str]) -> str:
        # The first column is text (left-aligned); the others are numbers (right-aligned).
        parts = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return " | ".join(parts).rstrip()

    header = [cols[0][0].ljust(widths[0])] + [h.rjust(w) for (h, _), w in zip(cols[1:], widths[1:])]
    out = [" | ".join(header).rstrip(), "-+-".join("-" * w for w in widths)]
    out += [line([cells[i] for _, cells in cols]) for i in range(len(rows))]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Markdown (Vertex "Markdown" artifact and the run log).

_MD_SPECIAL = "\\`*_[]<>|#"


def _md(text: str) -> str:
    """Escape Markdown syntax so a model name or reason renders as the literal text."""
    return _md_escape(" ".join(str(text).split()))  # a newline would end a table row


def _md_escape(text: str) -> str:
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in text)


def validate_decision(registered: object, reason: object) -> None:
    if not isinstance(registered, bool):
        raise ValueError(f"registered must be True or False, got {registered!r}; pass the decision's bool")
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("reason must be a non-empty sentence; say why the model was or was not registered")


def validate_model_version(registered: bool, model_version: object) -> None:
    """A version only for a registered model; None for a winner means its registration is still to come."""
    if not registered and model_version is not None:
        raise ValueError(
            f"model_version is {model_version!r} but registered=False; pass None (no version was created)"
        )
    if model_version is not None and (
        not isinstance(model_version, str) or not model_version.strip() or any(c in model_version for c in "`\n")
    ):
        raise ValueError(
            f"model_version is {model_version!r}; pass the registry version that was created (one line, no "
            "backticks), or None while register_model has not run yet"
        )


def decision_sentence(registered: bool, reason: str, model_version: str | None, *,
                      version_format=str) -> str:
    """The decision and its reason as one sentence, e.g. "Registered as model version 3: fine-tuned accuracy
    0.800 beats gemma4_baseline 0.600 by 0.200." ``version_format`` renders the version (Markdown: code).

    The reasons of steps.registration_decision open with the decision ("registered: ..."); that opening is
    dropped here so the sentence says it once.
    """
    validate_decision(registered, reason)
    validate_model_version(registered, model_version)
    why = " ".join(reason.split())
    for opening in ("not registered:", "registered:"):
        if why.lower().startswith(opening):
            why = why[len(opening):].strip()
            break
    why = why.rstrip(".") or "no reason given"
    if not registered:
        return f"Not registered: {why}."
    if model_version is None:
        return f"Registration pending (the register_model step creates the version): {why}."
    return f"Registered as model version {version_format(model_version)}: {why}."


def run_details(*, run_id: str, base_model: str, image_token_budget: int, scoring: str, n_eval: int,
                manifest: dict, training: dict, source_fingerprint: str | None = None,
                contrastive: str | None = None) -> dict[str, str]:
    """The report's "Run details", from what the evaluate step reads: the prepared dataset's manifest, the
    training step's metrics.json, and the run's parameters (``contrastive``: the contrastive baseline's line,
    when one was evaluated). Items the inputs do not have are left out."""
    cfg = training.get("config") or {}
    source = manifest.get("source") or {}
    details = {
        "run id": run_id,
        "base model": base_model,
        "dataset hash": manifest.get("dataset_hash"),
        "dataset source": f"{source['uri']} ({source.get('kind', 'unknown kind')})" if source.get("uri") else None,
        "source fingerprint": source_fingerprint,
        "image token budget": f"{image_token_budget} soft tokens per image",
        "evaluation": f"{n_eval} test examples, scoring: {scoring}",
        "contrastive baseline": contrastive,
    }
    if "lora_r" in cfg and "lora_alpha" in cfg:
        targets = training.get("lora_target_modules") or []
        details["LoRA"] = f"rank {cfg['lora_r']}, alpha {cfg['lora_alpha']}, {len(targets)} target modules"
    if training.get("steps") is not None:
        seconds = training.get("train_time_s")
        steps = training["steps"]
        details["training"] = (f"{steps} optimizer step{'' if steps == 1 else 's'} on "
                               f"{training.get('examples', '?')} examples"
                               + (f", {format_seconds(seconds)} in training steps" if seconds is not None else ""))
    order = ("run id", "base model", "dataset hash", "dataset source", "source fingerprint", "LoRA",
             "image token budget", "training", "evaluation", "contrastive baseline")
    return {k: str(details[k]) for k in order if details.get(k) not in (None, "")}


def markdown_summary(
    rows: list[ModelRow],
    *,
    registered: bool,
    model_version: str | None,
    reason: str,
    dataset_hash: str | None = None,
    details: dict[str, str] | None = None,
    trials: dict | None = None,
) -> str:
    """A Markdown comparison table, the registration decision in one sentence, the run details and, for a
    sweep, the trials table (``trials``: select_trial's selection).

    ``model_version`` is the registry version that was created, or None: for a model that was not
    registered, and for a winner whose registration (the register_model step) is still to come, which the
    sentence then says. The summary never names a version that does not exist.
    """
    rows = validate_rows(rows)
    validate_decision(registered, reason)
    validate_model_version(registered, model_version)
    if dataset_hash is not None and (
        not isinstance(dataset_hash, str) or not dataset_hash.strip() or any(c in dataset_hash for c in "`\n")
    ):
        raise ValueError(
            f"dataset_hash is {dataset_hash!r}; it must be a non-empty single-line string without backticks, "
            "or None"
        )
    cols = table_columns(rows)
    head = "| " + " | ".join(h for h, _ in cols) + " |"
    align = "| --- | " + " | ".join("---:" for _ in cols[1:]) + " |"
    body = ["| " + " | ".join(_md(cells[i]) for _, cells in cols) + " |" for i in range(len(rows))]
    # The sentence is escaped, the version is not: it is shown verbatim, as code.
    before, marked, after = decision_sentence(registered, reason, model_version,
                                              version_format=lambda v: "\x00").partition("\x00")
    decision = "**Decision:** " + _md_escape(before) + (f"`{model_version}`" + _md_escape(after) if marked else "")
    out = ["## Evaluation results", "", head, align, *body, "", decision]
    if dataset_hash is not None:
        out += ["", f"Dataset hash: `{dataset_hash}`"]
    if details:
        out += ["", "### Run details", ""] + [f"- {_md(k)}: {_md(v)}" for k, v in details.items()]
    if trials:
        from petqlora.trials.report import trials_markdown

        out += ["", trials_markdown(trials["trials"], trials["winner"]).rstrip("\n")]
    return "\n".join(out) + "\n"
