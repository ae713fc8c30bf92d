"""metrics.classification_result against hand-computed values, plus properties that hold for any input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from petqlora.evaluation.metrics import ClassificationResult, classification_result

CLASSES = ["cat", "dog", "fox"]
# Seven examples; one answer is "unparseable" (outside the classes) and "fox" is never predicted.
Y_TRUE = ["cat", "cat", "cat", "cat", "dog", "dog", "fox"]
Y_PRED = ["cat", "cat", "cat", "dog", "dog", "unparseable", "dog"]
# Confusion matrix (rows true, cols predicted cat/dog/fox); "unparseable" is in no column:
#   cat: 3 1 0   (support 4)
#   dog: 0 1 0   (support 2; its row sums to 1)
#   fox: 0 1 0   (support 1)
# cat: TP 3, predicted 3        -> P = 3/3 = 1,   R = 3/4, F1 = 2*1*(3/4)/(1+3/4) = 6/7
# dog: TP 1, predicted 1+1+1=3  -> P = 1/3,       R = 1/2, F1 = 2*(1/3)*(1/2)/(1/3+1/2) = (1/3)/(5/6) = 2/5
# fox: TP 0, never predicted    -> P = 0 (zero_division=0), R = 0/1 = 0, F1 = 0
# accuracy = (3+1+0)/7 = 4/7; macro-F1 = (6/7 + 2/5 + 0)/3 = (30/35 + 14/35)/3 = 44/105


def test_hand_computed_example() -> None:
    r = classification_result(Y_TRUE, Y_PRED, CLASSES)
    assert r.n == 7
    assert r.accuracy == pytest.approx(4 / 7)
    assert r.macro_f1 == pytest.approx(44 / 105)
    assert r.top3_accuracy is None
    assert r.confusion_matrix == [[3, 1, 0], [0, 1, 0], [0, 1, 0]]
    expected = [
        ("cat", 1.0, 3 / 4, 6 / 7, 4),
        ("dog", 1 / 3, 1 / 2, 2 / 5, 2),
        ("fox", 0.0, 0.0, 0.0, 1),
    ]
    assert [row["label"] for row in r.per_class] == CLASSES
    for row, (label, p, rec, f1, support) in zip(r.per_class, expected):
        assert row == {
            "label": label,
            "precision": pytest.approx(p),
            "recall": pytest.approx(rec),
            "f1": pytest.approx(f1),
            "support": support,
        }


def test_class_with_no_examples_counts_zero_in_macro_f1() -> None:
    # "fox" has no true examples and is never predicted: P = R = F1 = 0, and it still counts in the mean.
    # cat and dog are perfect (F1 1 each): macro-F1 = (1 + 1 + 0)/3 = 2/3, accuracy = 1.
    r = classification_result(["cat", "dog"], ["cat", "dog"], CLASSES)
    assert r.accuracy == 1.0
    assert r.macro_f1 == pytest.approx(2 / 3)
    assert r.per_class[2] == {"label": "fox", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_top3_by_hand_with_ties_and_minus_inf() -> None:
    classes = ["a", "b", "c", "d"]
    scores = np.array(
        [
            [0.0, -1.0, -2.0, -3.0],  # true a: top-3 = a, b, c -> hit
            [0.0, -1.0, -2.0, -3.0],  # true d: ranked last -> miss
            [-np.inf, -np.inf, -np.inf, -5.0],  # true d: the only finite score ranks first -> hit
            [0.0, 0.0, 0.0, 0.0],  # true d: all tied, ties go to the earlier class -> a, b, c -> miss
        ]
    )
    r = classification_result(["a", "d", "d", "d"], ["a", "a", "d", "a"], classes, scores)
    assert r.top3_accuracy == pytest.approx(2 / 4)
    assert r.accuracy == pytest.approx(2 / 4)


def test_top3_with_fewer_than_three_classes_is_one() -> None:
    scores = np.array([[0.0, -9.0], [0.0, -9.0]])
    r = classification_result(["x", "y"], ["x", "x"], ["x", "y"], scores)
    assert r.top3_accuracy == 1.0


def test_to_dict_is_json_and_independent() -> None:
    r = classification_result(Y_TRUE, Y_PRED, CLASSES, np.zeros((7, 3)))
    d = r.to_dict()
    assert set(d) == {"accuracy", "macro_f1", "top3_accuracy", "per_class", "confusion_matrix", "n"}
    assert json.loads(json.dumps(d)) == d
    d["confusion_matrix"][0][0] = 99
    d["per_class"][0]["f1"] = -1
    assert r.confusion_matrix[0][0] == 3 and r.per_class[0]["f1"] == pytest.approx(6 / 7)
    assert r.classes == CLASSES


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(y_true=[], y_pred=[], classes=CLASSES), "y_true is empty"),
        (dict(y_true=["cat"], y_pred=["cat", "dog"], classes=CLASSES), "one prediction per example"),
        (dict(y_true=["cat"], y_pred=["cat"], classes=[]), "classes must be a non-empty"),
        (dict(y_true=["cat"], y_pred=["cat"], classes=["cat", "cat"]), "classes must be unique"),
        (dict(y_true=["cat"], y_pred=["cat"], classes=["cat", ""]), "non-empty strings"),
        (dict(y_true=["wolf"], y_pred=["cat"], classes=CLASSES), "y_true holds labels not in classes"),
        (dict(y_true=["cat"], y_pred=[None], classes=CLASSES), r"y_pred\[0\] is None"),
        (dict(y_true="cat", y_pred="cat", classes=CLASSES), "y_true must be a list"),
        (dict(y_true=["cat"], y_pred=["cat"], classes=CLASSES, scores=np.zeros((1, 2))), "scores has shape"),
        (dict(y_true=["cat"], y_pred=["cat"], classes=CLASSES, scores=np.array([[0, np.nan, 0]])), "NaN"),
    ],
)
def test_bad_input_raises_one_value_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        classification_result(**kwargs)


# --- properties -------------------------------------------------------------------------------------------

_names = st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=6, unique=True)


@st.composite
def _labelled(draw: st.DrawFn) -> tuple[list[str], list[str], list[str], np.ndarray]:
    classes = draw(_names)
    n = draw(st.integers(1, 40))
    y_true = draw(st.lists(st.sampled_from(classes), min_size=n, max_size=n))
    # Predictions may fall outside the classes, as greedy generation can.
    y_pred = draw(st.lists(st.sampled_from([*classes, "\x00unparseable"]), min_size=n, max_size=n))
    seed = draw(st.integers(0, 2**31 - 1))
    scores = np.random.default_rng(seed).normal(size=(n, len(classes)))
    return classes, y_true, y_pred, scores


@settings(max_examples=200)
@given(_labelled())
def test_properties(case: tuple[list[str], list[str], list[str], np.ndarray]) -> None:
    classes, y_true, y_pred, scores = case
    r = classification_result(y_true, y_pred, classes, scores)
    cm = np.array(r.confusion_matrix)
    assert isinstance(r, ClassificationResult)
    assert r.accuracy == pytest.approx(np.trace(cm) / r.n)
    assert r.accuracy == pytest.approx(np.mean([t == p for t, p in zip(y_true, y_pred)]))
    assert 0.0 <= r.macro_f1 <= 1.0
    assert 0.0 <= r.top3_accuracy <= 1.0
    assert r.macro_f1 == pytest.approx(np.mean([row["f1"] for row in r.per_class]))
    # Rows add up to the support less the answers that named no class.
    outside = [sum(1 for t, p in zip(y_true, y_pred) if t == c and p not in classes) for c in classes]
    assert cm.sum(axis=1).tolist() == [row["support"] - o for row, o in zip(r.per_class, outside)]
    assert sum(row["support"] for row in r.per_class) == r.n
    for row in r.per_class:
        for key in ("precision", "recall", "f1"):
            assert 0.0 <= row[key] <= 1.0 and not math.isnan(row[key])
    # Top-3 accuracy is at least top-1 accuracy of the same scores.
    top1 = float(np.mean(np.argmax(scores, axis=1) == [classes.index(t) for t in y_true]))
    assert r.top3_accuracy >= top1 - 1e-12


@settings(max_examples=100)
@given(_names.flatmap(lambda cs: st.tuples(st.just(cs), st.permutations(cs))))
def test_perfect_predictions_score_one(case: tuple[list[str], list[str]]) -> None:
    classes, order = case
    # Every class appears at least once, so no class has zero support.
    y = list(order) + list(order[:2])
    r = classification_result(y, list(y), classes)
    assert r.accuracy == 1.0
    assert r.macro_f1 == pytest.approx(1.0)
    assert all(row["precision"] == row["recall"] == row["f1"] == 1.0 for row in r.per_class)
    assert np.array(r.confusion_matrix).sum() == len(y)
