"""The self-contained HTML report of the evaluate step for the Vertex AI pipeline UI: the decision, the
comparison table, the training loss as an SVG curve, the confusion matrix heat map and per-class scores.

Vertex renders HTML artifacts in a sandboxed iframe, so the report loads nothing: CSS is inline, the loss
curve is an SVG drawn here, and there is no JavaScript.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence

from petqlora import __version__
from petqlora.evaluation.metrics import ClassificationResult
from petqlora.evaluation.report_table import (ModelRow, format_f1, format_percent, table_columns, validate_decision,
                                              validate_rows)
from petqlora.train.loss_curve import validate_loss_curve


def _nice_ticks(lo: float, hi: float, *, integer: bool = False, target: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k) that cover [lo, hi]."""
    raw = (hi - lo) / max(target - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1.0, float(round(step)))
    first = math.floor(lo / step + 1e-9) * step
    last = math.ceil(hi / step - 1e-9) * step
    n = int(round((last - first) / step))
    return [first + i * step for i in range(n + 1)]


def _tick_label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{value:.{decimals}f}"


def _svg_loss_curve(curve: list[tuple[int, float]]) -> str:
    width, height = 760, 300
    left, right, top, bottom = 64, 20, 14, 46
    steps = [s for s, _ in curve]
    losses = [v for _, v in curve]
    x_lo, x_hi = min(steps), max(steps)
    if x_lo == x_hi:  # a single logged step still needs a non-empty axis
        x_lo, x_hi = max(0, x_lo - 1), x_hi + 1
    y_lo, y_hi = min(losses), max(losses)
    if y_lo == y_hi:
        pad = max(abs(y_lo) * 0.1, 0.1)
        y_lo, y_hi = y_lo - pad, y_hi + pad
    xt = _nice_ticks(x_lo, x_hi, integer=True)
    yt = _nice_ticks(y_lo, y_hi)
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]
    pw, ph = width - left - right, height - top - bottom

    def px(step: float) -> float:
        return left + (step - x0) / (x1 - x0) * pw

    def py(loss: float) -> float:
        return top + (1 - (loss - y0) / (y1 - y0)) * ph

    parts = [
        f'<svg class="loss" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        'aria-label="Training loss by step">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#dadce0"/>',
    ]
    ystep = yt[1] - yt[0] if len(yt) > 1 else 1.0
    for t in yt:
        y = py(t)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#eceff1"/>')
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_tick_label(t, ystep)}</text>'
        )
    for t in xt:
        x = px(t)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#eceff1"/>')
        parts.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle" class="tick">{int(t)}</text>')
    points = " ".join(f"{px(s):.1f},{py(v):.1f}" for s, v in curve)
    parts.append(f'<polyline points="{points}" fill="none" stroke="#1a73e8" stroke-width="2"/>')
    if len(curve) <= 60:  # markers (with hover values) help on short curves and clutter long ones
        for s, v in curve:
            parts.append(
                f'<circle cx="{px(s):.1f}" cy="{py(v):.1f}" r="3" fill="#1a73e8">'
                f"<title>step {s}: loss {v:.4g}</title></circle>"
            )
    parts.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle" class="axis">step</text>'
        f'<text x="16" y="{top + ph / 2:.1f}" text-anchor="middle" class="axis" '
        f'transform="rotate(-90 16 {top + ph / 2:.1f})">training loss</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


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
.scroll{overflow-x:auto;padding-bottom:6px}
table.cm{font-size:10.5px}
table.cm td{width:22px;min-width:22px;height:20px;padding:0;text-align:center;border:1px solid #fff}
table.cm td.zero{color:#c8cbcf}
table.cm td.other{border-left:2px solid #9aa0a6}
table.cm td.support{color:#5f6368;padding:0 6px;width:auto}
table.cm th{font-weight:400}
table.cm th.row{text-align:right;padding:0 6px 0 0;white-space:nowrap}
table.cm th.col{vertical-align:bottom;padding:0 0 4px 0}
table.cm th.col div{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap;margin:0 auto}
table.cm th.corner{text-align:right;vertical-align:bottom;padding:0 6px 4px 0;color:#5f6368}
.swatch{display:inline-block;width:14px;height:14px;vertical-align:-2px;margin:0 4px 0 10px;border-radius:2px}
.track{display:inline-block;width:80px;height:9px;background:#e8eaed;border-radius:2px;vertical-align:middle}
.bar{display:block;height:9px;background:#1a73e8;border-radius:2px}
svg.loss .tick{font-size:11px;fill:#5f6368}
svg.loss .axis{font-size:12px;fill:#3c4043}
ul{margin:4px 0;padding-left:22px}
"""

# Row-normalised share -> colour; correct (diagonal) in blue and confusions in red so errors stand out.
_DIAG_RGB = (26, 95, 180)
_OFF_RGB = (200, 55, 45)
_MIN_TINT = 0.12  # any non-zero cell is visibly tinted, even 1 error in 100


def _tint(share: float, rgb: tuple[int, int, int]) -> str:
    t = 0.0 if share <= 0 else _MIN_TINT + (1 - _MIN_TINT) * min(share, 1.0)
    r, g, b = (round(255 + (c - 255) * t) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


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


def _confusion_html(classes: list[str], result: ClassificationResult) -> str:
    cm = result.confusion_matrix
    supports = [row["support"] for row in result.per_class]
    # Predictions outside the classes are in no column; show them so every row adds up to its support.
    other = [supports[i] - sum(cm[i]) for i in range(len(classes))]
    show_other = any(other)
    head = ['<th class="corner">true \u2193 / predicted \u2192</th>']
    head += [f'<th class="col"><div>{_e(c)}</div></th>' for c in classes]
    if show_other:
        head.append('<th class="col"><div>(not a class)</div></th>')
    head.append('<th class="col"><div>support</div></th>')
    body = []
    for i, true in enumerate(classes):
        total = supports[i]
        cells = [f'<th class="row">{_e(true)}</th>']
        for j, pred in enumerate(classes + (["(not a class)"] if show_other else [])):
            count = cm[i][j] if j < len(classes) else other[i]
            share = count / total if total else 0.0
            extra = " other" if j == len(classes) else ""
            if count == 0:
                cells.append(f'<td class="zero{extra}">0</td>')
                continue
            bg = _tint(share, _DIAG_RGB if i == j else _OFF_RGB)
            fg = "#fff" if share > 0.5 else "#202124"
            tip = f"true: {true}\npredicted: {pred}\n{count} of {total} ({share * 100:.1f}%)"
            cells.append(
                f'<td class="{extra.strip()}" style="background:{bg};color:{fg}" title="{_e(tip)}">{count}</td>'
            )
        cells.append(f'<td class="support">{total}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    legend = (
        '<p class="muted">Rows: true class; columns: predicted class; each cell holds the count. Shade = share '
        "of the row (the true class's examples)"
        f'<span class="swatch" style="background:{_tint(1.0, _DIAG_RGB)}"></span>correct'
        f'<span class="swatch" style="background:{_tint(0.5, _OFF_RGB)}"></span>confused'
        + (". \u201c(not a class)\u201d counts answers that named no class." if show_other else ".")
        + "</p>"
    )
    return (
        legend
        + f'<div class="scroll"><table class="cm"><thead><tr>{"".join(head)}</tr></thead>'
        + f'<tbody>{"".join(body)}</tbody></table></div>'
    )


def _confusion_summary_html(classes: list[str], result: ClassificationResult) -> str:
    cm = result.confusion_matrix
    pairs = sorted(
        ((cm[i][j], i, j) for i in range(len(classes)) for j in range(len(classes)) if i != j and cm[i][j]),
        key=lambda p: (-p[0], p[1], p[2]),
    )[:5]
    weakest = sorted(result.per_class, key=lambda r: (r["f1"], r["label"]))[:5]
    out = ["<p><strong>Most frequent confusions</strong> (true \u2192 predicted):</p>"]
    if pairs:
        out.append(
            "<ul>"
            + "".join(f"<li>{_e(classes[i])} \u2192 {_e(classes[j])}: {c}</li>" for c, i, j in pairs)
            + "</ul>"
        )
    else:
        out.append('<p class="muted">none: every prediction that named a class was correct.</p>')
    out.append(
        "<p><strong>Lowest F1:</strong> "
        + ", ".join(f"{_e(r['label'])} ({r['f1']:.3f})" for r in weakest)
        + "</p>"
    )
    return "".join(out)


def _per_class_html(result: ClassificationResult) -> str:
    body = []
    for r in result.per_class:
        bar = f'<span class="track"><span class="bar" style="width:{r["f1"] * 100:.0f}%"></span></span>'
        body.append(
            f'<tr><td class="text">{_e(r["label"])}</td><td>{r["precision"]:.3f}</td><td>{r["recall"]:.3f}</td>'
            f'<td>{r["f1"]:.3f}</td><td class="text">{bar}</td><td>{r["support"]}</td></tr>'
        )
    return (
        '<p class="muted">Precision of a class that was never predicted is 0 (as scikit-learn with '
        "zero_division=0). Macro-F1 is the unweighted mean of the F1 column.</p>"
        '<table class="data"><thead><tr><th class="text">Class</th><th>Precision</th><th>Recall</th>'
        '<th>F1</th><th class="text"></th><th>Support</th></tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table>'
    )


def _extra_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _check_inputs(rows, classes, finetuned, loss_curve, title, registered, reason, extra):
    """html_report's arguments checked, in order; returns the rows, classes and loss curve as it uses them."""
    rows = validate_rows(rows)
    validate_decision(registered, reason)
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
    curve = None if loss_curve is None else validate_loss_curve(loss_curve, allow_empty=True)
    if extra is not None and (not isinstance(extra, dict) or not all(isinstance(k, str) for k in extra)):
        raise ValueError(
            "extra must be a dict with string keys, or None; e.g. {'base model': 'google/gemma-4-31b-it'}"
        )
    return rows, list(classes), curve


def _loss_html(curve: list[tuple[int, float]] | None) -> str:
    if not curve:
        return '<p class="muted">No training loss was recorded for this run.</p>'
    (s0, v0), (s1, v1) = curve[0], curve[-1]
    return "\n".join([
        _svg_loss_curve(curve),
        f'<p class="muted">{len(curve)} logged value{"s" if len(curve) > 1 else ""}; '
        f"loss {v0:.4g} at step {s0} \u2192 {v1:.4g} at step {s1}.</p>",
    ])


def html_report(
    *,
    rows: list[ModelRow],
    classes: list[str],
    finetuned: ClassificationResult,
    loss_curve: list[tuple[int, float]] | None,
    title: str,
    registered: bool,
    reason: str,
    extra: dict | None = None,
) -> str:
    """One self-contained HTML page: decision, comparison table, loss curve, confusion matrix heat map and
    per-class scores of the fine-tuned model, and any ``extra`` run details (key -> value).

    ``classes`` must be the class order of ``finetuned``. An empty or None ``loss_curve`` is reported as
    "not recorded". All text is HTML-escaped; nothing is loaded from outside the file.
    """
    rows, classes, curve = _check_inputs(rows, classes, finetuned, loss_curve, title, registered, reason, extra)
    decision_cls, decision_word = ("yes", "Registered") if registered else ("no", "Not registered")
    top3 = "" if finetuned.top3_accuracy is None else f", top-3 accuracy {format_percent(finetuned.top3_accuracy)}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<div class="decision {decision_cls}"><strong>{decision_word}.</strong> {_e(reason)}</div>',
        "<h2>Comparison on the held-out split</h2>",
        _comparison_html(rows),
        f'<p class="muted">Fine-tuned model: {finetuned.n} examples, accuracy {format_percent(finetuned.accuracy)}, '
        f"macro-F1 {format_f1(finetuned.macro_f1)}{top3}. Peak memory is the process peak of the kind shown.</p>",
        "<h2>Training loss</h2>",
        _loss_html(curve),
        "<h2>Confusion matrix of the fine-tuned model</h2>",
        _confusion_html(classes, finetuned),
        _confusion_summary_html(classes, finetuned),
        "<h2>Per-class scores of the fine-tuned model</h2>",
        _per_class_html(finetuned),
    ]
    if extra:
        body = "".join(
            f'<tr><th class="text">{_e(k)}</th><td class="text">{_e(_extra_value(v))}</td></tr>'
            for k, v in extra.items()
        )
        parts += ["<h2>Run details</h2>", f'<table class="data"><tbody>{body}</tbody></table>']
    parts.append(f'<p class="muted" style="margin-top:28px">Generated by petqlora {_e(__version__)}.</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
