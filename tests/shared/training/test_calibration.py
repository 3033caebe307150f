"""Temperature scaling: it changes how sure the model says it is, never what it predicts."""

from __future__ import annotations

import numpy as np

from shared.classifier.loaded import softmax
from shared.training.calibration import (
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)


def _overconfident(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a model right about 80 % of the time that claims near-certainty."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, n)
    predicted = np.where(rng.random(n) < 0.8, labels, rng.integers(0, 6, n))
    logits = rng.normal(0, 1, (n, 6))
    logits[np.arange(n), predicted] += 8.0
    return logits, labels


def test_the_fitted_temperature_lowers_nll_and_calibration_error() -> None:
    logits, labels = _overconfident()
    temperature = fit_temperature(logits, labels)
    assert temperature > 1.5  # overconfident logits are softened
    assert negative_log_likelihood(logits, labels, temperature) < negative_log_likelihood(
        logits, labels, 1.0
    )
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits, temperature), labels)
    assert before > 0.1
    assert after < before / 3
    assert (softmax(logits, temperature).argmax(1) == logits.argmax(1)).all()


def test_a_calibrated_model_keeps_a_temperature_near_one() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (6000, 6))
    labels = np.array([rng.choice(6, p=p) for p in softmax(logits)])
    assert 0.85 < fit_temperature(logits, labels) < 1.15
