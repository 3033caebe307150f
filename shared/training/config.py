"""The training recipes' settings and their defaults, in one place.

The `train` command takes its defaults from here; importing this module costs
no more than the dataclasses (no TensorFlow, no training code).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.training.augment import Augmentation


@dataclass(frozen=True)
class FineTuneConfig:
    """Model v2: block 14 and the head, fine-tuned on cached maps.

    The other options default to off (v2's recipe); `levers` measured each of them,
    and v3's candidate is `first_block=13, label_smoothing=0.1` (docs/model.md).
    """

    batch_size: int = 32
    epochs: int = 5
    block_learning_rate: float = 1e-4
    head_learning_rate: float = 1e-3
    dense_units: int = 100
    dropout: float = 0.2
    seed: int = 42
    first_block: int = 14  # 13: blocks 13 and 14 train, from maps cached before block 13
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0  # 0: off; else maps and labels mixed with Beta(a, a) weights
    ema_decay: float = 0.0  # 0: off; else validation and the result use the weights' EMA


@dataclass(frozen=True)
class ReleaseConfig:
    """Model v2's whole recipe: splits, fine-tuning, calibration and the INT8 form."""

    input_size: int = 299
    validation_fraction: float = 0.15
    test_fraction: float = 0.15
    calibration_images: int = 300
    map_batch_size: int = 16
    finetune: FineTuneConfig = field(default_factory=FineTuneConfig)


@dataclass(frozen=True)
class TrainConfig:
    """Model v1, the frozen-base recipe (`train --frozen-base`)."""

    input_size: int = 299
    batch_size: int = 16
    epochs: int = 20
    learning_rate: float = 1e-3
    dense_units: int = 100
    dropout: float = 0.2
    validation_fraction: float = 0.2
    seed: int = 42
    augment_views: int = 0
    augmentation: Augmentation = field(default_factory=Augmentation)
