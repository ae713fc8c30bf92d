"""The report's loss curve: a logarithmic loss axis (ticks, geometry, the linear fallback for a loss of 0),
the validation loss beside the training loss, and what the report's caption says about them."""

from __future__ import annotations

import re

import numpy as np
import pytest

from petqlora.evaluation.metrics import classification_result
from petqlora.evaluation.report_charts import log_ticks, svg_loss_curve
from petqlora.evaluation.report_html import html_report
from petqlora.evaluation.report_table import ModelRow


def _report(loss_curve, val_loss_curve=None) -> str:
    y = ["beagle", "pug"]
    return html_report(rows=[ModelRow("tiny", 0.5, 0.5, 1.0, 1.0)], classes=y,
                       finetuned=classification_result(y, y, y), loss_curve=loss_curve,
                       val_loss_curve=val_loss_curve, title="t", registered=False, reason="not registered: no")


def _polyline(page: str, name: str) -> list[tuple[float, float]]:
    points = re.search(rf'<polyline class="{name}" points="([^"]*)"', page).group(1)
    return [tuple(float(v) for v in pair.split(",")) for pair in points.split()]


def test_the_loss_axis_is_logarithmic() -> None:
    # Ten times less loss is the same height wherever it happens: 1 -> 0.1 as tall as 0.1 -> 0.01.
    page = _report([(1, 1.0), (2, 0.1), (3, 0.01)])
    (_, y1), (_, y2), (_, y3) = _polyline(page, "training")
    assert y2 - y1 == pytest.approx(y3 - y2, abs=0.15) and y3 > y2 > y1
    assert "loss (log scale)" in page and "loss axis logarithmic" in page
    labels = re.findall(r'class="tick">([^<]+)</text>', svg_loss_curve([(1, 3.2), (144, 0.05)])[0])
    assert labels[:7] == ["0.05", "0.1", "0.2", "0.5", "1", "2", "5"]  # then the step ticks


@pytest.mark.parametrize(("lo", "hi", "ticks"), [
    (0.05, 3.25, [0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]),
    (0.5, 0.9, [0.5, 0.6, 0.7, 0.8, 0.9]),
    (1e-4, 30, [1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0, 100.0]),
    (0.52, 0.58, [0.52, 0.54, 0.56, 0.58]),
])
def test_log_ticks_cover_the_range_with_round_values(lo, hi, ticks) -> None:
    assert log_ticks(lo, hi) == ticks


def test_a_zero_loss_falls_back_to_a_linear_axis() -> None:
    page = _report([(1, 0.5), (2, 0.0)])
    assert "loss axis linear: a loss of 0 has no logarithm" in page and "log scale" not in page
    assert all(np.isfinite(_polyline(page, "training")).ravel())


def test_the_validation_loss_is_drawn_where_it_exists() -> None:
    page = _report([(10, 2.5), (20, 1.25), (30, 0.625)], val_loss_curve=[(15, 1.5), (30, 0.9)])
    val, train = _polyline(page, "validation"), _polyline(page, "training")
    assert len(val) == 2 and val[1][0] == train[2][0]  # same step, same x
    # On the same scale: a loss of 0.9 is drawn between 1.25 and 0.625 (SVG's y grows downwards).
    assert train[1][1] < val[1][1] < train[2][1]
    assert "validation loss 0.9 at step 30 (2 evaluated)" in page and ">validation</text>" in page


def test_html_single_point_and_flat_loss_curve_draw() -> None:
    assert "1 logged training value: loss 1 at step 5;" in _report([(5, 1.0)])
    for curve in ([(5, 1.0)], [(0, 2.0), (10, 2.0)]):
        page = _report(curve)
        points = re.search(r'<polyline class="training" points="([^"]*)"', page).group(1)
        coords = [float(v) for pair in points.split() for v in pair.split(",")]
        assert len(coords) == 2 * len(curve) and all(np.isfinite(coords))
