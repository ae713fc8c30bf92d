"""The loss curve of the HTML report, drawn as inline SVG (the report loads nothing): training loss per
logged step and, where the trainer recorded one, the validation loss, on a logarithmic loss axis.

Why logarithmic: a fine-tuning loss falls by one or two orders of magnitude in its first tens of steps and
then moves by hundredths; on a linear axis everything after step 20 of 144 is a flat line at the bottom.
"""

from __future__ import annotations

import math
from collections.abc import Callable

Curve = list[tuple[int, float]]

WIDTH, HEIGHT = 760, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 20, 14, 46
TRAIN_COLOR, VAL_COLOR = "#1a73e8", "#e8710a"
MAX_MARKERS = 60  # markers (with hover values) help on short curves and clutter long ones


def nice_ticks(lo: float, hi: float, *, integer: bool = False, target: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k apart) from one <= lo to one >= hi."""
    raw = (hi - lo) / max(target - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1.0, float(round(step)))
    first = math.floor(lo / step + 1e-9) * step
    last = math.ceil(hi / step - 1e-9) * step
    n = int(round((last - first) / step))
    return [first + i * step for i in range(n + 1)]


def log_ticks(lo: float, hi: float, *, most: int = 10) -> list[float]:
    """Ticks of a logarithmic axis from one <= lo to one >= hi (0 < lo <= hi): at most ``most``, and at
    least 4 unless the range is a sliver.

    The densest of 1..9, 1-2-5 or 1 times a power of ten that has at most ``most`` ticks; a range too narrow
    for four such values (0.52 to 0.58) gets evenly spaced round values instead.
    """
    if not 0 < lo <= hi:
        raise ValueError(f"log_ticks needs 0 < lo <= hi, got lo={lo!r}, hi={hi!r}")
    if lo == hi:  # one value: a short axis around it
        lo, hi = lo * 0.9, hi * 1.1
    k0, k1 = math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1
    for mantissas in ((1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 5), (1,)):
        values = sorted(float(f"{m * 10.0 ** k:.6g}") for k in range(k0, k1 + 1) for m in mantissas)
        first = max(v for v in values if v <= lo * (1 + 1e-9))
        last = min(v for v in values if v >= hi * (1 - 1e-9))
        ticks = [v for v in values if first <= v <= last]
        if len(ticks) < 4:
            break  # sparser sets only have fewer
        if len(ticks) <= most or mantissas == (1,):
            return ticks
    ticks = [float(f"{t:.6g}") for t in nice_ticks(lo, hi)]
    return ticks if ticks[0] > 0 else ticks[1:]


def tick_label(value: float) -> str:
    return f"{value:.3g}"


def _y_scale(curves: list[Curve]) -> tuple[list[float], Callable[[float], float], bool]:
    """(ticks, loss -> fraction of the plot height from the bottom, logarithmic?)"""
    losses = [v for curve in curves for _, v in curve]
    lo, hi = min(losses), max(losses)
    if lo > 0:
        ticks = log_ticks(lo, hi)
        a, b = math.log(ticks[0]), math.log(ticks[-1])
        return ticks, lambda v: (math.log(v) - a) / (b - a), True
    # A loss of exactly 0 has no logarithm: a linear axis then.
    if lo == hi:
        pad = max(abs(lo) * 0.1, 0.1)
        lo, hi = lo - pad, hi + pad
    ticks = nice_ticks(lo, hi)
    return ticks, lambda v: (v - ticks[0]) / (ticks[-1] - ticks[0]), False


def _polyline(curve: Curve, px, py, color: str, name: str, markers: bool) -> list[str]:
    points = " ".join(f"{px(s):.1f},{py(v):.1f}" for s, v in curve)
    parts = [f'<polyline class="{name}" points="{points}" fill="none" stroke="{color}" stroke-width="2"/>']
    if markers:
        parts += [f'<circle cx="{px(s):.1f}" cy="{py(v):.1f}" r="3" fill="{color}">'
                  f"<title>step {s}: {name} loss {v:.4g}</title></circle>" for s, v in curve]
    return parts


def svg_loss_curve(train: Curve, val: Curve | None = None) -> tuple[str, bool]:
    """The SVG of the training (and validation) loss by step; returns (svg, whether the loss axis is log)."""
    curves = [train] + ([val] if val else [])
    steps = [s for curve in curves for s, _ in curve]
    x_lo, x_hi = min(steps), max(steps)
    if x_lo == x_hi:  # a single logged step still needs a non-empty axis
        x_lo, x_hi = max(0, x_lo - 1), x_hi + 1
    xt = nice_ticks(x_lo, x_hi, integer=True)
    yt, y_share, is_log = _y_scale(curves)
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(step: float) -> float:
        return LEFT + (step - xt[0]) / (xt[-1] - xt[0]) * pw

    def py(loss: float) -> float:
        return TOP + (1 - y_share(loss)) * ph

    axis = "loss (log scale)" if is_log else "loss"
    parts = [
        # Scales down with its container (a narrow Vertex panel) and never beyond its drawn size.
        f'<svg class="loss" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        'style="max-width:100%;height:auto" role="img" '
        f'aria-label="Training loss by step{", log scale" if is_log else ""}">',
        f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#fff" stroke="#dadce0"/>',
    ]
    for t in yt:
        y = py(t)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + pw}" y2="{y:.1f}" stroke="#eceff1"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{tick_label(t)}</text>')
    for t in xt:
        x = px(t)
        parts.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + ph}" stroke="#eceff1"/>')
        parts.append(f'<text x="{x:.1f}" y="{TOP + ph + 16}" text-anchor="middle" class="tick">{int(t)}</text>')
    parts += _polyline(train, px, py, TRAIN_COLOR, "training", len(train) <= MAX_MARKERS)
    if val:
        parts += _polyline(val, px, py, VAL_COLOR, "validation", True)
        parts.append(_legend(LEFT + pw - 150, TOP + 10))
    parts.append(
        f'<text x="{LEFT + pw / 2:.1f}" y="{HEIGHT - 8}" text-anchor="middle" class="axis">optimizer step</text>'
        f'<text x="16" y="{TOP + ph / 2:.1f}" text-anchor="middle" class="axis" '
        f'transform="rotate(-90 16 {TOP + ph / 2:.1f})">{axis}</text>'
    )
    parts.append("</svg>")
    return "".join(parts), is_log


def _legend(x: float, y: float) -> str:
    rows = [(TRAIN_COLOR, "training"), (VAL_COLOR, "validation")]
    return "".join(
        f'<line x1="{x}" y1="{y + 16 * i}" x2="{x + 22}" y2="{y + 16 * i}" stroke="{color}" stroke-width="2"/>'
        f'<text x="{x + 28}" y="{y + 16 * i + 4}" class="tick">{name}</text>'
        for i, (color, name) in enumerate(rows)
    )
