"""The scene classifier: preprocessing, the Xception model, training and batched inference.

Importing this package does not import TensorFlow; only `model`, `engine` and
`training` do, and only inside the functions that build or run the network.
"""

from shared.classifier.labels import CLASSES

__all__ = ["CLASSES"]
