"""The training loss curve: the check of a (step, loss) list, and the loss_curve.png that training writes.

Kept free of torch (matplotlib is imported only to draw): the evaluation report imports the check to read
a training run's curve in the slim pipeline image.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from numbers import Integral, Real
from pathlib import Path


def _is_finite_number(x: object) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(float(x))


def validate_loss_curve(loss_curve: object, *, allow_empty: bool) -> list[tuple[int, float]]:
    """The curve as (int step, float loss) pairs with increasing steps; raises naming the first bad entry."""
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
            ok = isinstance(step, Integral) and not isinstance(step, bool) and step >= 0 and _is_finite_number(loss)
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


def loss_curve_png(loss_curve: list[tuple[int, float]], path: str | os.PathLike) -> None:
    """Write the training loss by step as a PNG (matplotlib, Agg), creating the parent folder."""
    curve = validate_loss_curve(loss_curve, allow_empty=False)
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
