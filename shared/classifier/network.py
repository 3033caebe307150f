"""The network, built with Keras: Xception's base, the head, and the fine-tuned form.

Serving builds it only for the fp32 reference form (`model.load_classifier`);
training builds it to fine-tune (`shared.training`). Both import it from here, and
it imports neither. Keras is imported inside functions: importing this module
costs nothing a worker without TensorFlow lacks.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

from shared.classifier.labels import CLASSES
from shared.errors import ModelError

FEATURE_DIM = 2048  # channels of Xception's last block, the head's input
WEIGHTS_HINT = "e.g. ../shared/models/xception_imagenet_notop.weights.h5"


# The end of block 13, (10, 10, 1024) maps at 299x299: Keras names it add_11 in a fresh
# process and add_23, add_35... in later models of the same one, so it is found as
# block 14's input, and this name is only what the cache key records.
CUT_LAYER = "add_11"
BLOCK_14 = (
    "block14_sepconv1",
    "block14_sepconv1_bn",
    "block14_sepconv1_act",
    "block14_sepconv2",
    "block14_sepconv2_bn",
    "block14_sepconv2_act",
)
TRAINED_CONVOLUTIONS = ("block14_sepconv1", "block14_sepconv2")


def base_weights_identity(weights: str) -> str:
    """`imagenet`, `none`, or the sha256 of a weights file: what the manifest records."""
    if weights in {"imagenet", "none"}:
        return weights
    path = Path(weights)
    if not path.is_file():
        raise ModelError(f"BASE_WEIGHTS file {weights!r} does not exist")
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def build_base(weights: str, input_size: int) -> Any:
    """Xception without its top, frozen, ending in global average pooling (2048 features)."""
    import keras

    source: str | None = None if weights == "none" else weights
    if source not in {None, "imagenet"} and not Path(weights).is_file():
        raise ModelError(
            f"BASE_WEIGHTS file {weights!r} does not exist; set BASE_WEIGHTS to an Xception "
            f"no-top weights file ({WEIGHTS_HINT})"
        )
    try:
        base = keras.applications.Xception(
            include_top=False,
            weights=source,
            input_shape=(input_size, input_size, 3),
            pooling="avg",
        )
    except Exception as exc:  # Keras raises bare ValueErrors and URL errors here
        if source == "imagenet":
            raise ModelError(
                f"cannot download the ImageNet base weights ({exc}); offline, set BASE_WEIGHTS "
                f"to a local copy ({WEIGHTS_HINT}). Serving the shipped model needs none: "
                "use INFERENCE_PRECISION=auto"
            ) from exc
        raise ModelError(f"cannot load Xception base weights {weights!r}: {exc}") from exc
    base.trainable = False
    return base


def build_head(dense_units: int, dropout: float, n_classes: int = len(CLASSES)) -> Any:
    """GAP features -> Dense(relu) -> Dropout -> Dense logits."""
    import keras

    features = keras.Input(shape=(FEATURE_DIM,), name="features")
    x = keras.layers.Dense(dense_units, activation="relu", name="dense")(features)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    logits = keras.layers.Dense(n_classes, name="logits")(x)
    return keras.Model(features, logits, name="head")


def compose(base: Any, head: Any) -> Any:
    import keras

    image = keras.Input(shape=base.input_shape[1:], name="image")
    logits = head(base(image, training=False))
    return keras.Model(image, logits, name="intel_xception")


class Network:
    """Xception with a head; block 14 and the head are the parts fine-tuning changes."""

    def __init__(self, base_weights: str, input_size: int, dense_units: int, dropout: float):
        import keras

        self.xception = build_base(base_weights, input_size)
        self.head = build_head(dense_units, dropout)
        self.cut = self.xception.get_layer(BLOCK_14[0]).input
        self.map_shape: tuple[int, ...] = tuple(int(d) for d in self.cut.shape[1:])
        maps = keras.Input(shape=self.map_shape, name="maps")
        x = maps
        for name in BLOCK_14:
            x = self.xception.get_layer(name)(x)
        x = self.xception.layers[-1](x)  # global average pooling (its name varies)
        self.top = keras.Model(maps, self.head(x), name="block14_head")
        for name in BLOCK_14:
            layer = self.xception.get_layer(name)
            # Batch norms keep ImageNet's statistics: a frozen Keras 3 BatchNormalization
            # runs in inference mode even in a training step.
            layer.trainable = name in TRAINED_CONVOLUTIONS
        self.head.trainable = True

    def up_to_cut(self) -> Any:
        import keras

        return keras.Model(self.xception.input, self.cut)

    def complete(self) -> Any:
        import keras

        image = keras.Input(shape=self.xception.input_shape[1:], name="image")
        return keras.Model(image, self.head(self.xception(image, training=False)))

    def trained_variables(self) -> tuple[list[Any], list[Any]]:
        block = [
            v
            for name in TRAINED_CONVOLUTIONS
            for v in self.xception.get_layer(name).trainable_weights
        ]
        return block, list(self.head.trainable_weights)

    def save_top(self, path: Path) -> None:
        self.top.save_weights(path)

    def load_top(self, path: Path) -> None:
        if not path.is_file():
            raise ModelError(f"fine-tuned weights {str(path)!r} are missing")
        self.top.load_weights(path)
