"""Model v2: fine-tune Xception's block 14 with the head, from cached maps of the layer before it.

The base runs once per image, up to `add_11` (10x10x1024); those maps are cached
(float16). Block 14's two separable convolutions and the head then train on the
cache, with random horizontal flips of the maps and block 14's batch-norm
statistics frozen. The epoch is chosen on the validation split.

TensorFlow and Keras are imported inside functions: this module is for training.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

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
    return np.concatenate(parts) if parts else np.zeros((0, 6), np.float32)


def fit(
    network: Network,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: FineTuneConfig,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train block 14 + head; keep the weights of the epoch with the best validation accuracy."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    block_vars, head_vars = network.trained_variables()
    block_opt = keras.optimizers.Adam(config.block_learning_rate)
    head_opt = keras.optimizers.Adam(config.head_learning_rate)
    block_opt.build(block_vars)
    head_opt.build(head_vars)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    top = network.top

    @tf.function(reduce_retracing=True)  # type: ignore[untyped-decorator]
    def step(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            logits = top(x, training=True)
            loss = loss_fn(y, logits)
        grads = tape.gradient(loss, block_vars + head_vars)
        block_opt.apply_gradients(zip(grads[: len(block_vars)], block_vars, strict=True))
        head_opt.apply_gradients(zip(grads[len(block_vars) :], head_vars, strict=True))
        hits = tf.argmax(logits, axis=1) == tf.cast(y, tf.int64)
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
            loss, right = step(x, y_train[picked].astype(np.int64))
            losses.append(float(loss))
            correct += int(right)
        logits = logits_of(top, x_val)
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
            best, best_epoch, best_weights = (val_accuracy, val_loss), epoch, top.get_weights()
    top.set_weights(best_weights)
    seconds = (time.perf_counter() - started) / max(config.epochs, 1)
    return FitResult(best_epoch, history, round(seconds, 1))
