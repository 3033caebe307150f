"""Random horizontal flip, zoom and shear, for extra training views of each image."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Augmentation:
    zoom: float = 0.2  # scale drawn from [1 - zoom, 1 + zoom]
    shear_degrees: float = 10.0  # shear angle drawn from [-shear, +shear]
    flip: bool = True

    def apply(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        width, height = image.size
        if self.flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        scale = float(rng.uniform(1.0 - self.zoom, 1.0 + self.zoom))
        shear = math.tan(math.radians(float(rng.uniform(-self.shear_degrees, self.shear_degrees))))
        # Inverse affine map (output -> input) about the centre: zoom in when scale > 1.
        cx, cy = width / 2, height / 2
        a, b, d, e = 1 / scale, shear / scale, 0.0, 1 / scale
        c = cx - a * cx - b * cy
        f = cy - d * cx - e * cy
        return image.transform(
            image.size, Image.Transform.AFFINE, (a, b, c, d, e, f), Image.Resampling.BILINEAR
        )
