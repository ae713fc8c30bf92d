"""Human-readable results of the evaluate step: a console table, a Markdown summary and one self-contained
HTML report for the Vertex AI pipeline UI, plus the loss-curve PNG written by training.

Vertex renders HTML artifacts in a sandboxed iframe, so the report loads nothing: CSS is inline, the loss
curve is an SVG drawn here, and there is no JavaScript.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

from petqlora import __version__
from petqlora.evaluation.metrics import ClassificationResult

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


def _pct(share: float | None) -> str:
    return "n/a" if share is None else f"{share * 100:.1f}%"


def _f1(value: float) -> str:
    return f"{value:.3f}"


def _memory(row: ModelRow) -> str:
    return f"{row.peak_memory_gib:.1f} GiB {row.memory_kind}"


def _throughput(row: ModelRow) -> str:
    return "n/a" if row.images_per_s is None else f"{row.images_per_s:.2f}"


def _validate_rows(rows: object) -> list[ModelRow]:
    if not isinstance(rows, Sequence) or isinstance(rows, str) or len(rows) == 0:
        raise ValueError("rows must be a non-empty list of ModelRow; pass at least the fine-tuned model's row")
    bad = [type(r).__name__ for r in rows if not isinstance(r, ModelRow)]
    if bad:
        raise ValueError(f"rows must hold ModelRow objects, got {bad[0]}; build each row with ModelRow(...)")
    return list(rows)


def _columns(rows: list[ModelRow]) -> list[tuple[str, list[str]]]:
    """(header, cells) per column; Top-3 and Images/s appear only when some row has them."""
    cols = [
        ("Approach", [r.approach for r in rows]),
        ("Accuracy", [_pct(r.accuracy) for r in rows]),
        ("Macro-F1", [_f1(r.macro_f1) for r in rows]),
    ]
    if any(r.top3_accuracy is not None for r in rows):
        cols.append(("Top-3", [_pct(r.top3_accuracy) for r in rows]))
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
    rows = _validate_rows(rows)
    cols = _columns(rows)
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


def _validate_decision(registered: object, reason: object) -> None:
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
    rows = _validate_rows(rows)
    _validate_decision(registered, reason)
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
    cols = _columns(rows)
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


# ---------------------------------------------------------------------------------------------------------
# Loss curve.


def _validate_loss_curve(loss_curve: object, *, allow_empty: bool) -> list[tuple[int, float]]:
    if not isinstance(loss_curve, Sequence) or isinstance(loss_curve, str):
        raise ValueError(
            f"loss_curve must be a list of (step, loss) pairs, got {type(loss_curve).__name__}; "
            "pass the trainer's logged losses"
        )
    if not loss_curve and not allow_empty:
        raise ValueError("loss_curve is empty; there is nothing to plot, log the loss at least once")
    out: list[tuple[int, float]] = []
    for i, pair in enumerate(loss_curve):
        ok = isinstance(pair, Sequence) and len(pair) == 2
        if ok:
            step, loss = pair
            ok = isinstance(step, Integral) and not isinstance(step, bool) and step >= 0 and _is_real(loss)
        if not ok:
            raise ValueError(
                f"loss_curve[{i}] is {pair!r}; each entry must be (step: int >= 0, loss: finite float)"
            )
        if out and step <= out[-1][0]:
            raise ValueError(
                f"loss_curve steps must increase, but step {step} follows {out[-1][0]} at index {i}; "
                "sort by step and keep the last value of a repeated step (e.g. after a resumed run)"
            )
        out.append((int(step), float(loss)))
    return out


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


def loss_curve_png(loss_curve: list[tuple[int, float]], path: str | os.PathLike) -> None:
    """Write the training loss by step as a PNG (matplotlib, Agg), creating the parent folder."""
    curve = _validate_loss_curve(loss_curve, allow_empty=False)
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"path must be a file path, got {path!r}; pass where the PNG should be written")
    # Figure + FigureCanvasAgg instead of pyplot: no global backend switch, nothing left open.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    marker = "o" if len(curve) <= 60 else None  # markers help on short curves and clutter long ones
    ax.plot([s for s, _ in curve], [v for _, v in curve], color="#1a73e8", marker=marker, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(True, color="#eceff1")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")


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
    cols = _columns(rows)
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
    rows = _validate_rows(rows)
    _validate_decision(registered, reason)
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
    classes = list(classes)
    curve = None if loss_curve is None else _validate_loss_curve(loss_curve, allow_empty=True)
    if extra is not None and (not isinstance(extra, dict) or not all(isinstance(k, str) for k in extra)):
        raise ValueError(
            "extra must be a dict with string keys, or None; e.g. {'base model': 'google/gemma-4-31b-it'}"
        )

    decision_cls, decision_word = ("yes", "Registered") if registered else ("no", "Not registered")
    top3 = "" if finetuned.top3_accuracy is None else f", top-3 accuracy {_pct(finetuned.top3_accuracy)}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<div class="decision {decision_cls}"><strong>{decision_word}.</strong> {_e(reason)}</div>',
        "<h2>Comparison on the held-out split</h2>",
        _comparison_html(rows),
        f'<p class="muted">Fine-tuned model: {finetuned.n} examples, accuracy {_pct(finetuned.accuracy)}, '
        f"macro-F1 {_f1(finetuned.macro_f1)}{top3}. Peak memory is the process peak of the kind shown.</p>",
        "<h2>Training loss</h2>",
    ]
    if curve:
        (s0, v0), (s1, v1) = curve[0], curve[-1]
        parts.append(_svg_loss_curve(curve))
        parts.append(
            f'<p class="muted">{len(curve)} logged value{"s" if len(curve) > 1 else ""}; '
            f"loss {v0:.4g} at step {s0} \u2192 {v1:.4g} at step {s1}.</p>"
        )
    else:
        parts.append('<p class="muted">No training loss was recorded for this run.</p>')
    parts += [
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
