"""The per-class parts of the HTML report: the confusion matrix heat map, the most frequent confusions, the
classes with the lowest F1 and the per-class scores table.

Legibility at Oxford-IIIT Pet's 37 classes, as checked in a browser 1280 px wide: zero cells are left blank
(1,300 grey zeros buried the few errors), a single error in a class is tinted strongly enough to see,
column headers are the class names turned vertically and shortened past COLUMN_LABEL_CHARS (the full name
is the header's tooltip and the row label), the true-class labels stay in view when the matrix scrolls
sideways (a narrower panel, or more classes), and the row under the pointer is highlighted.
"""

from __future__ import annotations

import html

from petqlora.evaluation.metrics import ClassificationResult

# Row-normalised share -> colour; correct (diagonal) in blue and confusions in red so errors stand out.
DIAG_RGB = (26, 95, 180)
OFF_RGB = (200, 55, 45)
DIAG_MIN_TINT = 0.12
OFF_MIN_TINT = 0.35  # one error in 20 (5%) must be visible at a glance, not a faint pink
# Confusions are shaded by the square root of their share: 5% and 20% of a class then differ visibly
# (a linear scale gave them nearly the same pink).
OFF_POWER = 0.5
COLUMN_LABEL_CHARS = 18  # longer column names are shortened (a 26-character name makes the header ~150 px tall)
CELL_PX = 24  # width and height of a count cell
TOP_CONFUSIONS = 8

CSS = f"""
.scroll{{overflow-x:auto;padding-bottom:6px;max-width:100%}}
table.cm{{font-size:11px;border-collapse:separate;border-spacing:0}}
table.cm td{{width:{CELL_PX}px;min-width:{CELL_PX}px;height:{CELL_PX - 2}px;padding:0;text-align:center;
  border-right:1px solid #f1f3f4;border-bottom:1px solid #f1f3f4}}
table.cm td.off{{font-weight:700}}
table.cm td.other{{border-left:2px solid #9aa0a6}}
table.cm td.support{{color:#5f6368;padding:0 6px;width:auto;border:none}}
table.cm th{{font-weight:400}}
table.cm th.row{{text-align:right;padding:0 8px 0 0;white-space:nowrap;position:sticky;left:0;background:#fff;
  z-index:1}}
table.cm tbody tr:hover th.row{{background:#e8f0fe;font-weight:600}}
table.cm tbody tr:hover td{{border-bottom-color:#8ab4f8}}
table.cm th.col{{vertical-align:bottom;padding:0 0 4px 0}}
table.cm th.col div{{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap;margin:0 auto}}
table.cm th.corner{{text-align:right;vertical-align:bottom;padding:0 8px 4px 0;color:#5f6368;position:sticky;
  left:0;background:#fff;z-index:1}}
.swatch{{display:inline-block;width:14px;height:14px;vertical-align:-2px;margin:0 4px 0 10px;border-radius:2px}}
.track{{display:inline-block;width:80px;height:9px;background:#e8eaed;border-radius:2px;vertical-align:middle}}
.bar{{display:block;height:9px;background:#1a73e8;border-radius:2px}}
"""

NOT_A_CLASS = "(not a class)"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def tint_level(share: float, min_tint: float, power: float = 1.0) -> float:
    """How far from white to the full colour a cell holding ``share`` of its row is: 0 at 0, 1 at 1, at least
    ``min_tint`` for any non-zero share."""
    return 0.0 if share <= 0 else min_tint + (1 - min_tint) * min(share, 1.0) ** power


def tint(level: float, rgb: tuple[int, int, int]) -> str:
    r, g, b = (round(255 + (c - 255) * level) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def column_labels(classes: list[str], limit: int = COLUMN_LABEL_CHARS) -> list[str]:
    """Column header texts: names longer than ``limit`` cut to ``limit - 1`` characters and an ellipsis,
    unless two would then read the same (then every name is kept whole)."""
    short = [c if len(c) <= limit else c[: limit - 1].rstrip() + "\u2026" for c in classes]
    return short if len(set(short)) == len(set(classes)) else list(classes)


def confusion_html(classes: list[str], result: ClassificationResult) -> str:
    cm = result.confusion_matrix
    supports = [row["support"] for row in result.per_class]
    # Predictions outside the classes are in no column; show them so every row adds up to its support.
    other = [supports[i] - sum(cm[i]) for i in range(len(classes))]
    show_other = any(other)
    columns = classes + ([NOT_A_CLASS] if show_other else [])
    labels = column_labels(classes) + ([NOT_A_CLASS] if show_other else [])
    head = ['<th class="corner">true \u2193 / predicted \u2192</th>']
    head += [f'<th class="col" title="{_e(full)}"><div>{_e(label)}</div></th>' for full, label in zip(columns, labels)]
    head.append('<th class="col"><div>support</div></th>')
    body = []
    for i, true in enumerate(classes):
        total = supports[i]
        cells = [f'<th class="row">{_e(true)}</th>']
        for j, pred in enumerate(columns):
            count = cm[i][j] if j < len(classes) else other[i]
            kind = "diag" if i == j else "off"
            extra = " other" if j == len(classes) else ""
            if count == 0:
                cells.append(f'<td class="zero{extra}"></td>')
                continue
            share = count / total if total else 0.0
            level = tint_level(share, DIAG_MIN_TINT) if i == j else tint_level(share, OFF_MIN_TINT, OFF_POWER)
            bg = tint(level, DIAG_RGB if i == j else OFF_RGB)
            fg = "#fff" if level > 0.6 else "#202124"
            tip = f"true: {true}\npredicted: {pred}\n{count} of {total} ({share * 100:.1f}%)"
            cells.append(f'<td class="{kind}{extra}" style="background:{bg};color:{fg}" title="{_e(tip)}">'
                         f"{count}</td>")
        cells.append(f'<td class="support">{total}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    legend = (
        '<p class="muted">Rows: true class; columns: predicted class; each cell holds the count, and a blank '
        "cell is 0. Shade = share of the row (the true class's examples)"
        f'<span class="swatch" style="background:{tint(1.0, DIAG_RGB)}"></span>correct'
        f'<span class="swatch" style="background:{tint(tint_level(0.2, OFF_MIN_TINT, OFF_POWER), OFF_RGB)}">'
        "</span>confused. "
        "Hover a cell for its classes and share; shortened column names are whole in their tooltip and in "
        "the row labels."
        + (f" \u201c{NOT_A_CLASS}\u201d counts answers that named no class." if show_other else "")
        + "</p>"
    )
    return (
        legend
        + f'<div class="scroll"><table class="cm"><thead><tr>{"".join(head)}</tr></thead>'
        + f'<tbody>{"".join(body)}</tbody></table></div>'
    )


def top_confusions(classes: list[str], result: ClassificationResult, n: int = TOP_CONFUSIONS) -> list[tuple]:
    """(count, true index, predicted index) of the ``n`` most frequent confusions between classes."""
    cm = result.confusion_matrix
    pairs = ((cm[i][j], i, j) for i in range(len(classes)) for j in range(len(classes)) if i != j and cm[i][j])
    return sorted(pairs, key=lambda p: (-p[0], p[1], p[2]))[:n]


def confusion_summary_html(classes: list[str], result: ClassificationResult) -> str:
    supports = [row["support"] for row in result.per_class]
    pairs = top_confusions(classes, result)
    out = ["<p><strong>Most frequent confusions</strong> (true \u2192 predicted):</p>"]
    if pairs:
        rows = "".join(
            f'<tr><td class="text">{_e(classes[i])}</td><td class="text">{_e(classes[j])}</td><td>{c}</td>'
            f"<td>{c / supports[i] * 100:.0f}%</td></tr>"
            for c, i, j in pairs
        )
        out.append('<table class="data confusions"><thead><tr><th class="text">True class</th>'
                   '<th class="text">Predicted as</th><th>Count</th><th>Share of the true class</th></tr></thead>'
                   f"<tbody>{rows}</tbody></table>")
    else:
        out.append('<p class="muted">none: every prediction that named a class was correct.</p>')
    # Only classes with something to improve: a list of perfect scores is not a list of weak classes.
    weakest = sorted((r for r in result.per_class if r["f1"] < 1.0), key=lambda r: (r["f1"], r["label"]))[:5]
    if weakest:
        out.append("<p><strong>Lowest F1:</strong> "
                   + ", ".join(f"{_e(r['label'])} ({r['f1']:.3f})" for r in weakest) + "</p>")
    else:
        out.append("<p><strong>Lowest F1:</strong> none below 1.000: every class is classified perfectly.</p>")
    return "".join(out)


def per_class_html(result: ClassificationResult) -> str:
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
