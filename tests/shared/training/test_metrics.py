from __future__ import annotations

import numpy as np

from shared.training.metrics import classification_report, format_report


def test_report_on_a_known_confusion() -> None:
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 0])
    report = classification_report(y_true, y_pred, ("a", "b", "c"))
    assert report["n"] == 6
    assert report["accuracy"] == round(4 / 6, 4)
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert report["per_class"]["a"] == {
        "precision": 0.6667,
        "recall": 0.6667,
        "f1": 0.6667,
        "support": 3,
    }
    assert report["per_class"]["b"]["precision"] == 0.6667
    assert report["per_class"]["b"]["recall"] == 1.0
    assert report["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    text = format_report(report)
    assert "accuracy 0.6667 on 6 images" in text
