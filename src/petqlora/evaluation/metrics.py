"""Classification metrics for the evaluate step: accuracy, macro-F1, top-3 accuracy, per-class scores and
the confusion matrix, computed with numpy alone so the slim pipeline image needs no scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Top-k for the ranked metric; 3 is what the report and the Vertex UI show.
TOP_K = 3


@dataclass(frozen=True)
class ClassificationResult:
    """Scores of one model on one labelled split; every list is in the order of `classes`."""

    accuracy: float
    macro_f1: float
    top3_accuracy: float | None
    per_class: list[dict]  # [{"label", "precision", "recall", "f1", "support"}] in class order
    confusion_matrix: list[list[int]]  # rows = true class, cols = predicted class
    n: int

    @property
    def classes(self) -> list[str]:
        """Class names in the order of `per_class` and of the confusion matrix."""
        return [row["label"] for row in self.per_class]

    def to_dict(self) -> dict:
        """A JSON-serialisable copy (plain floats, ints and lists) for metrics files and the UI."""
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "top3_accuracy": self.top3_accuracy,
            "per_class": [dict(row) for row in self.per_class],
            "confusion_matrix": [list(row) for row in self.confusion_matrix],
            "n": self.n,
        }


def _validate(
    y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str], scores: np.ndarray | None
) -> None:
    if not isinstance(classes, Sequence) or isinstance(classes, str) or len(classes) == 0:
        raise ValueError("classes must be a non-empty list of class names; pass the label list of the split")
    bad = [c for c in classes if not isinstance(c, str) or not c]
    if bad:
        raise ValueError(f"classes must hold non-empty strings, got {bad[:5]!r}; pass the label names")
    if len(set(classes)) != len(classes):
        dupes = sorted({c for c in classes if list(classes).count(c) > 1})
        raise ValueError(f"classes must be unique, {dupes[:5]!r} appear more than once; de-duplicate the list")
    for name, seq in (("y_true", y_true), ("y_pred", y_pred)):
        if not isinstance(seq, Sequence) or isinstance(seq, str):
            raise ValueError(f"{name} must be a list of strings, got {type(seq).__name__}; pass a list")
    if len(y_true) == 0:
        raise ValueError("y_true is empty; metrics need at least one labelled example, check the split")
    if len(y_true) != len(y_pred):
        raise ValueError(
            f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}; pass one prediction per example"
        )
    non_str = [i for i, p in enumerate(y_pred) if not isinstance(p, str)]
    if non_str:
        raise ValueError(
            f"y_pred[{non_str[0]}] is {y_pred[non_str[0]]!r}, not a string; map failed parses to a string "
            "such as 'unparseable' (it then counts as wrong)"
        )
    known = set(classes)
    unknown = sorted({str(t) for t in y_true if t not in known})
    if unknown:
        raise ValueError(
            f"y_true holds labels not in classes: {unknown[:5]!r}; every true label must be one of classes, "
            "pass the split's full label list"
        )
    if scores is not None:
        arr = np.asarray(scores)
        if arr.shape != (len(y_true), len(classes)):
            raise ValueError(
                f"scores has shape {arr.shape}, expected (n, n_classes) = ({len(y_true)}, {len(classes)}); "
                "pass one score per class per example, columns in class order"
            )
        if not np.issubdtype(arr.dtype, np.number) or np.isnan(arr).any() or np.isposinf(arr).any():
            raise ValueError(
                "scores must be real numbers without NaN or +inf (-inf is allowed for impossible classes); "
                "check the log-likelihood computation"
            )


def classification_result(
    y_true: list[str],
    y_pred: list[str],
    classes: list[str],
    scores: np.ndarray | None = None,
) -> ClassificationResult:
    """Score predictions against true labels.

    Conventions (the same as scikit-learn with ``labels=classes, zero_division=0``):

    - The precision of a class that is never predicted is 0.0; the recall of a class with no true
      examples is 0.0; F1 is 0.0 when precision + recall is 0.
    - Macro-F1 is the unweighted mean of per-class F1 over ALL of ``classes``, so a class absent from
      ``y_true`` and never predicted contributes 0 and pulls macro-F1 below 1.
    - A prediction that is not one of ``classes`` (e.g. ``"unparseable"`` from greedy generation) counts as
      wrong and appears in no column of the confusion matrix: a row then sums to less than its support.
    - ``scores`` is an ``(n, n_classes)`` array of per-class scores (higher is better, e.g. log-likelihoods),
      columns in class order. Top-3 accuracy is the share of examples whose true class is among the 3
      highest scores (all of them when there are fewer than 3 classes); ties go to the earlier class.
      Without ``scores`` it is None.
    """
    _validate(y_true, y_pred, classes, scores)
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    n = len(y_true)
    true_idx = np.array([index[t] for t in y_true], dtype=np.int64)
    # -1 marks a prediction outside the classes: wrong, and in no column.
    pred_idx = np.array([index.get(p, -1) for p in y_pred], dtype=np.int64)

    in_classes = pred_idx >= 0
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (true_idx[in_classes], pred_idx[in_classes]), 1)

    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = np.bincount(true_idx, minlength=k)
    # np.divide with `where` leaves 0.0 where the denominator is 0: the zero_division=0 convention.
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support.astype(np.float64), out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)

    top3: float | None = None
    if scores is not None:
        arr = np.asarray(scores, dtype=np.float64)
        # Stable sort of the negated scores: highest first, ties kept in class order.
        ranked = np.argsort(-arr, axis=1, kind="stable")[:, : min(TOP_K, k)]
        top3 = float((ranked == true_idx[:, None]).any(axis=1).mean())

    per_class = [
        {
            "label": c,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, c in enumerate(classes)
    ]
    return ClassificationResult(
        accuracy=float(tp.sum() / n),
        macro_f1=float(f1.mean()),
        top3_accuracy=top3,
        per_class=per_class,
        confusion_matrix=cm.tolist(),
        n=n,
    )
