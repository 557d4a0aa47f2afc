"""Cheap measures of an uploaded photo: how sharp the face is, and whether it is a near copy of another one.
Torch-free."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from training.face_detection import FaceBox

# Sharpness: variance of the Laplacian over the variance of the intensities, on the face resized to 64×64.
BLUR_SIZE = 64
# Near-identical photos: 256-bit difference hash of the whole (uprighted) photo within this many bits.
# Re-encoding, rescaling and brightness changes measure 0-10 bits; a 4° rotation or a re-framing 50+.
DUPLICATE_HASH_BITS = 20
# ... and aspect ratios (log of width/height) this close: a crop of a photo is a new photo.
DUPLICATE_ASPECT = 0.05


def sharpness(img: Image.Image, box: FaceBox) -> float:
    """Variance of the Laplacian over the variance of the intensities of the face, resized to 64×64: a
    size- and contrast-independent measure of fine detail (0 flat or very blurred, 0.2-0.3 a sharp face)."""
    left, top = max(0, round(box.left)), max(0, round(box.top))
    right, bottom = min(img.width, round(box.right)), min(img.height, round(box.bottom))
    if right - left < 2 or bottom - top < 2:
        return 0.0
    crop = img.crop((left, top, right, bottom))  # clamped: padding would add false edges
    g = np.asarray(
        crop.convert("L").resize((BLUR_SIZE, BLUR_SIZE), Image.Resampling.BILINEAR), dtype=np.float64
    )
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    var = float(g.var())
    return float(lap.var()) / var if var > 1e-6 else 0.0


def image_hash(img: Image.Image) -> np.ndarray:
    """256-bit difference hash of the whole image (bool array): stable under re-encoding, resizing and
    brightness changes; different after a crop, a rotation or a mirror."""
    g = np.asarray(img.convert("L").resize((17, 16), Image.Resampling.BILINEAR), dtype=np.int16)
    return (g[:, 1:] > g[:, :-1]).ravel()


@dataclass(frozen=True)
class Likeness:
    """What two photos are compared by to call one a near copy of the other."""

    hash: np.ndarray
    aspect: float

    @classmethod
    def of(cls, img: Image.Image) -> Likeness:
        return cls(image_hash(img), math.log(img.width / img.height))

    def near_copy_of(self, other: Likeness) -> bool:
        return (abs(self.aspect - other.aspect) < DUPLICATE_ASPECT
                and int(np.count_nonzero(self.hash != other.hash)) <= DUPLICATE_HASH_BITS)
