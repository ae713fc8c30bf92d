"""The self-contained HTML report of the evaluate step for the Vertex AI pipeline UI: the decision in one
sentence, the comparison table, the loss curve (report_charts), the confusion matrix heat map and per-class
scores (report_confusion), and the run details.

Vertex renders HTML artifacts in a sandboxed iframe, so the report loads nothing: CSS is inline, the loss
curve is an SVG drawn here, and there is no JavaScript.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence

from petqlora import __version__
from petqlora.evaluation import report_confusion
from petqlora.evaluation.metrics import ClassificationResult
from petqlora.evaluation.report_charts import svg_loss_curve
from petqlora.evaluation.formats import format_f1, format_percent
from petqlora.evaluation.report_table import (ModelRow, decision_sentence, table_columns, validate_decision,
                                              validate_model_version, validate_rows)
from petqlora.train.loss_curve import validate_loss_curve

# ---------------------------------------------------------------------------------------------------------
# HTML report.

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:24px;
  color:#202124;background:#fff;font-size:14px;line-height:1.45}
h1{font-size:22px;margin:0 0 14px}
h2{font-size:17px;margin:30px 0 10px;padding-bottom:4px;border-bottom:1px solid #dadce0}
p{margin:6px 0}
.muted{color:#5f6368}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
table.data th,table.data td{padding:5px 12px;border-bottom:1px solid #e8eaed;text-align:right}
table.data th{background:#f8f9fa;font-weight:600}
table.data .text{text-align:left}
table.data td.best{font-weight:700}
.decision{padding:10px 14px;border-radius:6px;border-left:6px solid;max-width:900px}
.decision.yes{background:#e6f4ea;border-color:#188038}
.decision.no{background:#fef7e0;border-color:#f29900}
.decision.pending{background:#e8f0fe;border-color:#1a73e8}
svg.loss .tick{font-size:11px;fill:#5f6368}
svg.loss .axis{font-size:12px;fill:#3c4043}
ul{margin:4px 0;padding-left:22px}
table.details th{text-align:left;font-weight:600;white-space:nowrap}
table.details td{text-align:left;word-break:break-all}
""" + report_confusion.CSS


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _comparison_html(rows: list[ModelRow]) -> str:
    cols = table_columns(rows)
    # Bold the best score of each quality column so the winner is visible at a glance.
    best: dict[str, float] = {
        "Accuracy": max(r.accuracy for r in rows),
        "Macro-F1": max(r.macro_f1 for r in rows),
    }
    top3s = [r.top3_accuracy for r in rows if r.top3_accuracy is not None]
    if top3s:
        best["Top-3"] = max(top3s)
    value_of = {"Accuracy": "accuracy", "Macro-F1": "macro_f1", "Top-3": "top3_accuracy"}
    head = "".join(f'<th class="{"text" if i == 0 else ""}">{_e(h)}</th>' for i, (h, _) in enumerate(cols))
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, (h, values) in enumerate(cols):
            cls = "text" if j == 0 else ""
            if h in best and getattr(row, value_of[h]) == best[h] and len(rows) > 1:
                cls = "best"
            cells.append(f'<td class="{cls}">{_e(values[i])}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _extra_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _check_inputs(rows, classes, finetuned, curves, title, registered, reason, model_version, extra):
    """html_report's arguments checked, in order; returns the rows, classes and the (train, validation) curves
    as it uses them."""
    rows = validate_rows(rows)
    validate_decision(registered, reason)
    validate_model_version(registered, model_version)
    if not isinstance(title, str) or not title.strip():
        raise ValueError("title must be a non-empty string; name the run or the model")
    if not isinstance(finetuned, ClassificationResult):
        raise ValueError(
            f"finetuned must be a ClassificationResult, got {type(finetuned).__name__}; "
            "pass metrics.classification_result(...) of the fine-tuned model"
        )
    if not isinstance(classes, Sequence) or isinstance(classes, str) or list(classes) != finetuned.classes:
        raise ValueError(
            f"classes {list(classes)[:5] if isinstance(classes, Sequence) else classes!r}... do not match the "
            f"fine-tuned result's classes {finetuned.classes[:5]!r}...; pass the same list, in the same order, "
            "that was given to classification_result"
        )
    train, val = (None if c is None else validate_loss_curve(c, allow_empty=True) for c in curves)
    if extra is not None and (not isinstance(extra, dict) or not all(isinstance(k, str) for k in extra)):
        raise ValueError(
            "extra must be a dict with string keys, or None; e.g. {'base model': 'google/gemma-4-31b-it'}"
        )
    return rows, list(classes), (train, val)


def _loss_html(train: list[tuple[int, float]] | None, val: list[tuple[int, float]] | None) -> str:
    if not train:
        return '<p class="muted">No training loss was recorded for this run.</p>'
    svg, is_log = svg_loss_curve(train, val or None)
    (s0, v0), (s1, v1) = train[0], train[-1]
    if len(train) == 1:
        notes = [f"1 logged training value: loss {v0:.4g} at step {s0}"]
    else:
        notes = [f"{len(train)} logged training values; loss {v0:.4g} at step {s0} \u2192 {v1:.4g} at step {s1}",
                 "loss axis logarithmic: the late steps' changes stay visible" if is_log
                 else "loss axis linear: a loss of 0 has no logarithm"]
    if val:
        notes.append(f"validation loss {val[-1][1]:.4g} at step {val[-1][0]} ({len(val)} evaluated)")
    else:
        notes.append("no validation loss was recorded")
    return svg + f'\n<p class="muted">{_e("; ".join(notes))}.</p>'


def _details_html(extra: dict | None) -> str:
    if not extra:
        return ""
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_extra_value(v))}</td></tr>" for k, v in extra.items())
    return f'<h2>Run details</h2><table class="data details"><tbody>{body}</tbody></table>'


def _trials_html(trials: dict | None) -> str:
    if not trials:
        return ""
    from petqlora.trials.report import trials_html

    return trials_html(trials["trials"], trials["winner"])


def html_report(
    *,
    rows: list[ModelRow],
    classes: list[str],
    finetuned: ClassificationResult,
    loss_curve: list[tuple[int, float]] | None,
    title: str,
    registered: bool,
    reason: str,
    model_version: str | None = None,
    val_loss_curve: list[tuple[int, float]] | None = None,
    extra: dict | None = None,
    trials: dict | None = None,
) -> str:
    """One self-contained HTML page: the decision in one sentence, comparison table, a sweep's trials table
    (``trials``: select_trial's selection), run details (``extra``,
    key -> value), loss curve (validation loss too when given), confusion matrix heat map and per-class scores
    of the fine-tuned model.

    ``model_version`` is the version created, or None (not registered, or registration still to come: the
    sentence says so). ``classes`` must be the class order of ``finetuned``. An empty or None ``loss_curve``
    is reported as "not recorded". All text is HTML-escaped; nothing is loaded from outside the file.
    """
    rows, classes, (train, val) = _check_inputs(rows, classes, finetuned, (loss_curve, val_loss_curve), title,
                                                registered, reason, model_version, extra)
    kind = "no" if not registered else ("yes" if model_version is not None else "pending")
    head, _, why = decision_sentence(registered, reason, model_version).partition(": ")
    top3 = "" if finetuned.top3_accuracy is None else f", top-3 accuracy {format_percent(finetuned.top3_accuracy)}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<div class="decision {kind}"><strong>{_e(head)}:</strong> {_e(why)}</div>',
        "<h2>Comparison on the held-out split</h2>",
        _comparison_html(rows),
        f'<p class="muted">Fine-tuned model: {finetuned.n} examples, accuracy {format_percent(finetuned.accuracy)}, '
        f"macro-F1 {format_f1(finetuned.macro_f1)}{top3}. Peak memory is the process peak of the kind shown.</p>",
        _trials_html(trials),
        _details_html(extra),
        "<h2>Loss</h2>",
        _loss_html(train, val),
        "<h2>Confusion matrix of the fine-tuned model</h2>",
        report_confusion.confusion_html(classes, finetuned),
        report_confusion.confusion_summary_html(classes, finetuned),
        "<h2>Per-class scores of the fine-tuned model</h2>",
        report_confusion.per_class_html(finetuned),
        f'<p class="muted" style="margin-top:28px">Generated by petqlora {_e(__version__)}.</p>',
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"
