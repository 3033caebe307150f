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


# Where the trained part starts. Keras names the add layers add_10, add_11 in a fresh
# process and add_22, add_23... in later models of the same one, so each cut is found
# as its block's input, and these names are only what the cache key records.
CUT_LAYERS = {13: "add_10", 14: "add_11"}  # (19, 19, 728) and (10, 10, 1024) at 299x299
BLOCK_14 = (
    "block14_sepconv1",
    "block14_sepconv1_bn",
    "block14_sepconv1_act",
    "block14_sepconv2",
    "block14_sepconv2_bn",
    "block14_sepconv2_act",
)
BLOCK_13 = (
    "block13_sepconv1_act",
    "block13_sepconv1",
    "block13_sepconv1_bn",
    "block13_sepconv2_act",
    "block13_sepconv2",
    "block13_sepconv2_bn",
    "block13_pool",
)
TRAINED_CONVOLUTIONS = {
    14: ("block14_sepconv1", "block14_sepconv2"),
    13: ("block13_sepconv1", "block13_sepconv2", "block14_sepconv1", "block14_sepconv2"),
}


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
    """Xception with a head; fine-tuning changes the blocks from `first_block` on and the head."""

    def __init__(
        self,
        base_weights: str,
        input_size: int,
        dense_units: int,
        dropout: float,
        first_block: int = 14,
    ):
        import keras

        if first_block not in CUT_LAYERS:
            raise ModelError(f"fine-tuning starts at block 13 or 14, not {first_block}")
        self.first_block = first_block
        self.xception = build_base(base_weights, input_size)
        self.head = build_head(dense_units, dropout)
        self.cut = self.cut_of(first_block)
        self.map_shape: tuple[int, ...] = tuple(int(d) for d in self.cut.shape[1:])
        maps = keras.Input(shape=self.map_shape, name="maps")
        x = self._block_13(maps) if first_block == 13 else maps
        for name in BLOCK_14:
            x = self.xception.get_layer(name)(x)
        x = self.xception.layers[-1](x)  # global average pooling (its name varies)
        self.top = keras.Model(maps, self.head(x), name=f"block{first_block}_head")
        trained = TRAINED_CONVOLUTIONS[first_block]
        for layer in self._top_layers():
            # Batch norms keep ImageNet's statistics: a frozen Keras 3 BatchNormalization
            # runs in inference mode even in a training step.
            layer.trainable = layer.name in trained or layer is self._shortcut_13[0]
        self.head.trainable = True

    @property
    def _shortcut_13(self) -> tuple[Any, Any]:
        """Block 13's shortcut: the 1x1 convolution to 1024 channels and its batch norm."""
        add = self.cut_of(14)._keras_history[0]  # the layer that ends block 13
        inputs = [tensor._keras_history[0] for tensor in add._inbound_nodes[0].input_tensors]
        norm = next(layer for layer in inputs if layer.name != BLOCK_13[-1])
        conv = norm._inbound_nodes[0].input_tensors[0]._keras_history[0]
        return conv, norm

    def cut_of(self, block: int) -> Any:
        """The tensor block `block` starts from (what the cache holds for it)."""
        return self.xception.get_layer(BLOCK_13[0] if block == 13 else BLOCK_14[0]).input

    def _block_13(self, maps: Any) -> Any:
        import keras

        conv, norm = self._shortcut_13
        shortcut = norm(conv(maps))
        x = maps
        for name in BLOCK_13:
            x = self.xception.get_layer(name)(x)
        return keras.layers.Add(name="block13_add")([x, shortcut])

    def _top_layers(self) -> list[Any]:
        names = (BLOCK_13 if self.first_block == 13 else ()) + BLOCK_14
        extra = list(self._shortcut_13) if self.first_block == 13 else []
        return [self.xception.get_layer(name) for name in names] + extra

    def through_block_13(self) -> Any:
        """Block 13 alone: the maps cached before it in, block 14's input out."""
        import keras

        maps = keras.Input(shape=tuple(int(d) for d in self.cut_of(13).shape[1:]))
        return keras.Model(maps, self._block_13(maps))

    def up_to_cut(self) -> Any:
        import keras

        return keras.Model(self.xception.input, self.cut)

    def complete(self) -> Any:
        import keras

        image = keras.Input(shape=self.xception.input_shape[1:], name="image")
        return keras.Model(image, self.head(self.xception(image, training=False)))

    def trained_variables(self) -> tuple[list[Any], list[Any]]:
        block = [
            v for layer in self._top_layers() if layer.trainable for v in layer.trainable_weights
        ]
        return block, list(self.head.trainable_weights)

    def save_top(self, path: Path) -> None:
        self.top.save_weights(path)

    def load_top(self, path: Path) -> None:
        if not path.is_file():
            raise ModelError(f"fine-tuned weights {str(path)!r} are missing")
        self.top.load_weights(path)
