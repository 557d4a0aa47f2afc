"""Decoding and validation of uploaded images. Torch-free (the bot imports it through ``training.faces``).

``load_image`` is the one door through which user bytes become pixels: it reads the header first and refuses
anything too big, animated, too small or broken *before* decoding pixels, and it only ever raises
``ImageRejected`` (a ``UserFacingError``) for bad bytes, with a short reason meant for the user.
"""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from kitbooth.errors import InvalidInput

__all__ = [
    "ImageRejected",
    "load_image",
    "encode_png",
    "center_square",
    "to_rgb",
    "caption_from_filename",
]

# Formats we open. A whitelist, not "everything Pillow has a plugin for": some plugins shell out (EPS runs
# Ghostscript) or parse rarely-fuzzed containers. MPO (a phone JPEG with a depth map or preview) opens through
# the JPEG plugin.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

_NOT_AN_IMAGE = "not an image — send a JPEG or PNG photo"


class ImageRejected(InvalidInput):
    """An uploaded file that cannot be used as a photo. ``reason`` is short, lower-case, for the user."""

    def __init__(self, reason: str, *, name: str = ""):
        self.reason = reason
        self.name = name
        super().__init__(f"{name}: {reason}" if name else reason)


def load_image(
    data: bytes,
    *,
    name: str = "",
    max_bytes: int = 20_000_000,
    min_side: int = 256,
    max_pixels: int = 40_000_000,
) -> Image.Image:
    """Decode uploaded bytes into an upright RGB image, or raise ``ImageRejected`` with a human reason.

    Checks, in order: size in bytes, the format (header only), the declared dimensions (before any pixel is
    decoded, so a decompression bomb costs nothing), animation, the minimum side; then decodes, applies the
    EXIF orientation and flattens CMYK / palette / grey / alpha (composited over white) to RGB.
    """
    if not data:
        raise ImageRejected("the file is empty", name=name)
    if len(data) > max_bytes:
        raise ImageRejected(
            f"the file is too large ({len(data) / 1e6:.0f} MB) — send a photo under {max_bytes / 1e6:.0f} MB",
            name=name,
        )
    try:
        return _decode(data, name=name, min_side=min_side, max_pixels=max_pixels)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own cap (on at Image.open) fired before ours could look at the size.
        raise ImageRejected("the image is far too large — send an ordinary photo", name=name) from e
    except UnidentifiedImageError as e:
        raise ImageRejected(_NOT_AN_IMAGE, name=name) from e
    except (
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        IndexError,
        KeyError,
        TypeError,
        struct.error,
        zlib.error,
        MemoryError,
        RuntimeError,
        AttributeError,
        ZeroDivisionError,
        OverflowError,
    ) as e:
        # Truncated or corrupt data surfaces from the decoders as any of these.
        raise ImageRejected("the file is damaged or incomplete — send the photo again", name=name) from e


def _decode(data: bytes, *, name: str, min_side: int, max_pixels: int) -> Image.Image:
    im = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageRejected("the file is damaged or incomplete — send the photo again", name=name)
    if width * height > max_pixels:
        raise ImageRejected(
            f"the image is too large ({width}×{height}) — send a photo under {max_pixels / 1e6:.0f} megapixels",
            name=name,
        )
    # is_animated stops at the second frame (n_frames would walk them all). MPO's extra frames are a preview or
    # a depth map, not animation: frame 0 is the photo.
    if getattr(im, "is_animated", False) and im.format != "MPO":
        raise ImageRejected("animated images aren't supported — send a still photo", name=name)
    # EXIF orientation 5-8 swaps width and height: judge the size the user sees.
    if _exif_orientation(im) in (5, 6, 7, 8):
        width, height = height, width
    if min(width, height) < min_side:
        raise ImageRejected(
            f"too small ({width}×{height}) — send a photo at least {min_side} px on each side", name=name
        )
    # Decode strictly: a truncated file is an error here, never a half-grey picture.
    if isinstance(im, ImageFile.ImageFile):
        im.load()
    return to_rgb(_upright(im))


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the pixels as stored rather than refusing them."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # malformed EXIF raises all sorts (SyntaxError, struct.error, KeyError, ...)
        return im


def _exif_orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block must not reject a good photo; exif_transpose copes the same way
        return 1


def to_rgb(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any mode → RGB. Transparency (alpha, LA, palette with a transparent index) is composited over white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")  # keeps a transparent palette index as alpha
    elif im.mode.startswith("I") or im.mode == "F":  # 16/32-bit grey (scientific PNG/TIFF)
        arr = np.asarray(im, dtype=np.float64)
        peak = float(arr.max()) if arr.size else 0.0
        if peak > 255:
            arr = arr * (255.0 / (65535.0 if peak <= 65535 else peak))
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return im.convert("RGB")  # CMYK (Pillow inverts Adobe CMYK JPEGs itself), L, 1, YCbCr, LAB, HSV


def encode_png(img: Image.Image) -> bytes:
    """Lossless PNG bytes of ``img`` (metadata dropped)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def center_square(img: Image.Image, size: int) -> Image.Image:
    """The largest centred square of ``img``, resized to ``size``×``size`` (for kit and style photos)."""
    width, height = img.size
    side = min(width, height)
    left = (width - side) // 2
    top = (height - side) // 2
    square = img.crop((left, top, left + side, top + side))
    if square.size != (size, size):
        square = square.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return square


_CAMERA_WORDS = frozenset(
    [
        "img",
        "image",
        "dsc",
        "dscn",
        "dcim",
        "pxl",
        "mvimg",
        "vid",
        "photo",
        "pic",
        "picture",
        "screenshot",
        "screen",
        "shot",
        "signal",
        "whatsapp",
        "wa",
        "snapchat",
        "telegram",
        "edited",
        "copy",
        "export",
        "scaled",
        "final",
        "jpg",
        "jpeg",
        "png",
        "webp",
        "heic",
        "at",
        "from",
        "on",
    ]
)


def caption_from_filename(name: str) -> str:
    """Words from an upload's file name usable in a caption ("home-kit_2025.png" → "home kit"), or "" for
    camera names (IMG_1234.JPG, PXL_20251125_..., WhatsApp Image 2025-...) that carry no meaning.
    Tokens holding digits and camera/app words are dropped."""
    stem = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    tokens = re.split(r"[^A-Za-z0-9]+", stem)
    words = [t.lower() for t in tokens if len(t) > 1 and t.isalpha() and t.lower() not in _CAMERA_WORDS]
    return " ".join(words)[:60].strip()
