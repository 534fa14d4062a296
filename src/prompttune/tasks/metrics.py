"""Classification metrics over class indices."""

from __future__ import annotations

from collections.abc import Sequence


def accuracy(preds: Sequence[int], golds: Sequence[int]) -> float:
    return sum(int(p == g) for p, g in zip(preds, golds, strict=True)) / max(len(golds), 1)


def macro_f1(preds: Sequence[int], golds: Sequence[int], num_classes: int) -> float:
    """Mean F1 over classes; a class never predicted nor present scores 0, as in scikit-learn."""
    f1s = []
    for c in range(num_classes):
        tp = sum(1 for p, g in zip(preds, golds, strict=True) if p == c and g == c)
        fp = sum(1 for p, g in zip(preds, golds, strict=True) if p == c and g != c)
        fn = sum(1 for p, g in zip(preds, golds, strict=True) if p != c and g == c)
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / max(num_classes, 1)
