"""The comparison table of the evaluate step, as a console table and a Markdown summary: ModelRow (one
approach's scores), the number formats shared with the HTML report, and the checks of rows and decision."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real

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


# ---------------------------------------------------------------------------------------------------------
# Formatting shared by the three outputs, so the console, Markdown and HTML show the same numbers.


def format_seconds(seconds: float) -> str:
    """45.2 s, 12m 05s, 2h 03m: short enough for a table column, exact enough to compare runs."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    total = int(round(seconds))
    if total < 3600:
        return f"{total // 60}m {total % 60:02d}s"
    return f"{total // 3600}h {(total % 3600) // 60:02d}m"


def format_percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share * 100:.1f}%"


def format_f1(value: float) -> str:
    return f"{value:.3f}"


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
    text = " ".join(str(text).split())  # a newline would end a table row
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in text)


def validate_decision(registered: object, reason: object) -> None:
    if not isinstance(registered, bool):
        raise ValueError(f"registered must be True or False, got {registered!r}; pass the decision's bool")
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("reason must be a non-empty sentence; say why the model was or was not registered")


def markdown_summary(
    rows: list[ModelRow],
    *,
    registered: bool,
    model_version: str | None,
    reason: str,
    dataset_hash: str | None = None,
) -> str:
    """A Markdown comparison table and the registration decision.

    ``model_version`` is the registry version that was created: required when ``registered`` is True and
    must be None when it is False, so the summary never names a version that does not exist.
    """
    rows = validate_rows(rows)
    validate_decision(registered, reason)
    if registered and (not isinstance(model_version, str) or not model_version.strip()):
        raise ValueError(
            f"model_version is {model_version!r} but registered=True; pass the registry version that was created"
        )
    if not registered and model_version is not None:
        raise ValueError(
            f"model_version is {model_version!r} but registered=False; pass None (no version was created)"
        )
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
    if registered:
        decision = f"**Decision: registered** as model version `{model_version}`. Reason: {_md(reason)}"
    else:
        decision = f"**Decision: not registered.** Reason: {_md(reason)}"
    out = ["## Evaluation results", "", head, align, *body, "", decision]
    if dataset_hash is not None:
        out += ["", f"Dataset hash: `{dataset_hash}`"]
    return "\n".join(out) + "\n"
