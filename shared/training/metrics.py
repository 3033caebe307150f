"""Accuracy, per-class precision/recall/F1 and the confusion matrix, in plain numpy."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted ones."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def classification_report(
    y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...] | list[str]
) -> dict[str, Any]:
    matrix = confusion_matrix(np.asarray(y_true), np.asarray(y_pred), len(classes))
    per_class: dict[str, dict[str, float | int]] = {}
    for i, label in enumerate(classes):
        true_positive = int(matrix[i, i])
        predicted = int(matrix[:, i].sum())
        support = int(matrix[i, :].sum())
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": support,
        }
    n = int(matrix.sum())
    return {
        "n": n,
        "accuracy": round(float(np.trace(matrix)) / n, 4) if n else 0.0,
        "classes": list(classes),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a few aligned lines for a terminal."""
    lines = [f"accuracy {report['accuracy']:.4f} on {report['n']} images", ""]
    lines.append(f"{'class':<10} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}")
    for label, row in report["per_class"].items():
        lines.append(
            f"{label:<10} {row['precision']:>9.3f} {row['recall']:>7.3f} "
            f"{row['f1']:>6.3f} {row['support']:>8}"
        )
    classes = report["classes"]
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    lines.append(" " * 10 + "".join(f"{c[:8]:>9}" for c in classes))
    for label, row in zip(classes, report["confusion_matrix"], strict=True):
        lines.append(f"{label:<10}" + "".join(f"{v:>9}" for v in row))
    return "\n".join(lines)
