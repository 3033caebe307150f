"""Pictures of a training run: the confusion matrix and the loss/accuracy curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(report: dict[str, Any], path: Path, title: str) -> None:
    plt = _pyplot()
    classes = report["classes"]
    matrix = report["confusion_matrix"]
    figure, axes = plt.subplots(figsize=(6.5, 5.5), dpi=110)
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    axes.set_xticks(range(len(classes)), classes, rotation=35, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"{title}: accuracy {report['accuracy']:.3f} (n={report['n']})")
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            colour = "white" if value > peak / 2 else "black"
            axes.text(j, i, str(value), ha="center", va="center", color=colour, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_training_curves(
    history: dict[str, list[float]],
    best_epoch: int,
    path: Path,
    title: str = "Head training on cached Xception features",
) -> None:
    plt = _pyplot()
    epochs = range(1, len(history["loss"]) + 1)
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for axes, metric, label in (
        (loss_axes, "loss", "loss"),
        (accuracy_axes, "accuracy", "accuracy"),
    ):
        axes.plot(epochs, history[metric], label="train", marker="o", markersize=3)
        axes.plot(epochs, history[f"val_{metric}"], label="validation", marker="o", markersize=3)
        axes.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label="kept epoch")
        axes.set_xlabel("epoch")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
