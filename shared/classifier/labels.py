"""The six scene classes, in the fixed order of the model's outputs."""

from __future__ import annotations

CLASSES: tuple[str, ...] = ("buildings", "forest", "glacier", "mountain", "sea", "street")
