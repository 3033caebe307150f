"""Model v2: fine-tune Xception's last block(s) with the head, from cached maps of the layer before.

The base runs once per image, up to `add_11` (10x10x1024; `add_10`, 19x19x728, when
block 13 trains too); those maps are cached (float16). The trained blocks' separable
convolutions and the head then train on the cache, with random horizontal flips of
the maps and the batch-norm statistics frozen. The epoch is chosen on the validation
split. Label smoothing, mixup of maps and an exponential moving average of the
weights are options (off in v2's recipe).

TensorFlow and Keras are imported inside functions: this module is for training.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.classifier.labels import CLASSES
from shared.classifier.network import Network
from shared.training.calibration import negative_log_likelihood
from shared.training.config import FineTuneConfig

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    best_epoch: int
    history: dict[str, list[float]]
    seconds_per_epoch: float


def logits_of(top: Any, maps: np.ndarray, batch_size: int = 128) -> np.ndarray:
    parts = [
        np.asarray(top(maps[start : start + batch_size].astype(np.float32), training=False))
        for start in range(0, len(maps), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, len(CLASSES)), np.float32)


def fit(
    network: Network,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: FineTuneConfig,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    sample_weight: np.ndarray | None = None,
) -> FitResult:
    """Train the top; keep the weights of the epoch with the best validation accuracy."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    block_vars, head_vars = network.trained_variables()
    trained = block_vars + head_vars
    block_opt = keras.optimizers.Adam(config.block_learning_rate)
    head_opt = keras.optimizers.Adam(config.head_learning_rate)
    block_opt.build(block_vars)
    head_opt.build(head_vars)
    loss_fn = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=config.label_smoothing, reduction="none"
    )
    average = _Average(trained, config.ema_decay)
    top = network.top
    n_classes = len(CLASSES)
    weights = np.ones(len(x_train), np.float32) if sample_weight is None else sample_weight

    @tf.function(reduce_retracing=True)  # type: ignore[untyped-decorator]
    def step(x: Any, y: Any, w: Any) -> Any:
        with tf.GradientTape() as tape:
            logits = top(x, training=True)
            loss = tf.reduce_sum(loss_fn(y, logits) * w) / tf.reduce_sum(w)
        grads = tape.gradient(loss, trained)
        block_opt.apply_gradients(zip(grads[: len(block_vars)], block_vars, strict=True))
        head_opt.apply_gradients(zip(grads[len(block_vars) :], head_vars, strict=True))
        average.update()
        hits = tf.argmax(logits, axis=1) == tf.argmax(y, axis=1)
        correct = tf.reduce_sum(tf.cast(hits, tf.int32))
        return loss, correct

    history: dict[str, list[float]] = {
        "loss": [],
        "accuracy": [],
        "val_loss": [],
        "val_accuracy": [],
    }
    best = (-1.0, float("inf"))
    best_epoch, best_weights = 0, top.get_weights()
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        order = rng.permutation(len(x_train))
        losses, correct = [], 0
        for start in range(0, len(order), config.batch_size):
            picked = order[start : start + config.batch_size]
            x = x_train[picked].astype(np.float32)
            flip = rng.random(len(picked)) < 0.5
            x[flip] = x[flip, :, ::-1, :]  # a mirrored scene is the same scene
            y = np.eye(n_classes, dtype=np.float32)[y_train[picked]]
            if config.mixup_alpha > 0:
                x, y = _mixup(x, y, rng, config.mixup_alpha)
            loss, right = step(x, y, weights[picked])
            losses.append(float(loss))
            correct += int(right)
        with average.applied():
            logits = logits_of(top, x_val)
            candidate = top.get_weights()
        val_loss = negative_log_likelihood(logits, y_val, 1.0)
        val_accuracy = float((logits.argmax(axis=1) == y_val).mean())
        figures = {
            "loss": float(np.mean(losses)),
            "accuracy": correct / len(order),
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
        }
        for key, value in figures.items():
            history[key].append(round(value, 5))
        log.info("epoch %d: %s", epoch, figures)
        if on_epoch:
            on_epoch(epoch, figures)
        if (val_accuracy, -val_loss) > (best[0], -best[1]):
            best, best_epoch, best_weights = (val_accuracy, val_loss), epoch, candidate
    top.set_weights(best_weights)
    seconds = (time.perf_counter() - started) / max(config.epochs, 1)
    return FitResult(best_epoch, history, round(seconds, 1))


def _mixup(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Each example blended with another of the batch: maps and one-hot labels alike."""
    mix = rng.beta(alpha, alpha, size=len(x)).astype(np.float32)
    mix = np.maximum(mix, 1 - mix)  # the example keeps the larger part, so its own label leads
    partner = rng.permutation(len(x))
    x = mix[:, None, None, None] * x + (1 - mix[:, None, None, None]) * x[partner]
    y = mix[:, None] * y + (1 - mix[:, None]) * y[partner]
    return x, y


class _Average:
    """An exponential moving average of the trained variables, swapped in to evaluate."""

    def __init__(self, variables: list[Any], decay: float):
        import tensorflow as tf

        self.variables = variables
        self.decay = decay
        self.shadows = [tf.Variable(v, trainable=False) for v in variables] if decay else []

    def update(self) -> None:
        if not self.shadows:
            return
        for shadow, variable in zip(self.shadows, self.variables, strict=True):
            shadow.assign(self.decay * shadow + (1 - self.decay) * variable)

    def applied(self) -> _Swap:
        return _Swap(self)


class _Swap:
    def __init__(self, average: _Average):
        self.average = average
        self.saved: list[Any] = []

    def __enter__(self) -> None:
        if not self.average.shadows:
            return
        self.saved = [v.numpy() for v in self.average.variables]
        for shadow, variable in zip(self.average.shadows, self.average.variables, strict=True):
            variable.assign(shadow)

    def __exit__(self, *exc: object) -> None:
        if not self.average.shadows:
            return
        for saved, variable in zip(self.saved, self.average.variables, strict=True):
            variable.assign(saved)
