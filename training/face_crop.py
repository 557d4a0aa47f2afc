"""The square training crop around a face and its feathered face mask (for the masked loss). Torch-free."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from training.face_detection import FaceBox

# Square crop: side = this × the face box side, centred a little above the box centre (hair in, chin in).
CROP_SCALE = 2.3
CROP_SHIFT_UP = 0.12


def face_crop_box(box: FaceBox, size: tuple[int, int]) -> tuple[int, int, int]:
    """(left, top, side) of the square training crop around ``box`` in an image of ``size``.

    The square is CROP_SCALE × the face, centred a little above the face centre, shrunk to fit the image when
    that keeps a margin of at least 1.5 × the face, and shifted to stay inside the image. Only when the image is
    too narrow even for that does the square reach past an edge (``_crop_square`` pads by replicating edges).
    """
    width, height = size
    face_side = max(box.width, box.height)
    side = CROP_SCALE * face_side
    fit = min(width, height)
    if side > fit:
        side = max(fit, 1.5 * face_side)
    side_i = max(1, round(side))
    cx, cy = box.center
    cy -= CROP_SHIFT_UP * face_side

    def place(center: float, extent: int) -> int:
        start = round(center - side_i / 2)
        if side_i <= extent:
            return min(max(start, 0), extent - side_i)
        return round((extent - side_i) / 2)

    return place(cx, width), place(cy, height), side_i


def _crop_square(img: Image.Image, left: int, top: int, side: int) -> Image.Image:
    if left >= 0 and top >= 0 and left + side <= img.width and top + side <= img.height:
        return img.crop((left, top, left + side, top + side))
    arr = np.asarray(img)
    pad = (
        (max(0, -top), max(0, top + side - img.height)),
        (max(0, -left), max(0, left + side - img.width)),
        (0, 0),
    )
    arr = np.pad(arr, pad, mode="edge")
    x0, y0 = left + pad[1][0], top + pad[0][0]
    return Image.fromarray(arr[y0 : y0 + side, x0 : x0 + side])


def face_mask(
    box: FaceBox, crop_left: float, crop_top: float, crop_side: float, resolution: int
) -> Image.Image:
    """A feathered ellipse over the face (forehead and some hair included), as an "L" image of
    ``resolution``² aligned with the crop: 255 on the face, 0 far from it."""
    s = resolution / crop_side
    cx, _ = box.center
    w = box.width
    h = box.height
    left = (cx - 0.68 * w - crop_left) * s
    right = (cx + 0.68 * w - crop_left) * s
    top = (box.top - 0.45 * h - crop_top) * s
    bottom = (box.bottom + 0.12 * h - crop_top) * s
    mask = Image.new("L", (resolution, resolution), 0)
    ImageDraw.Draw(mask).ellipse((left, top, right, bottom), fill=255)
    return mask.filter(ImageFilter.GaussianBlur(radius=max(1.0, 0.03 * resolution)))


def crop_face(img: Image.Image, box: FaceBox, resolution: int) -> tuple[Image.Image, Image.Image]:
    """The training crop (``resolution``², Lanczos) and its face mask."""
    left, top, side = face_crop_box(box, img.size)
    crop = _crop_square(img, left, top, side)
    if crop.size != (resolution, resolution):
        crop = crop.resize((resolution, resolution), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return crop, face_mask(box, left, top, side, resolution)
