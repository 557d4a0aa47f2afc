"""Test photos built in code from one real face: scikit-image's bundled ``astronaut()`` (512×512, Eileen Collins).

Every function returns the bytes of an upload (what a Discord attachment would hold). Others may import this
module; keep it free of pytest and of anything heavy (Pillow, numpy and scikit-image only).
"""

from __future__ import annotations

import functools
import io
import zlib
from struct import pack

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

# The astronaut's face in the 512×512 original (dlib's box is about (179, 83)-(266, 170)).
FACE_CENTER = (222, 127)


@functools.cache
def astronaut() -> Image.Image:
    """The bundled real face photo as an RGB PIL image (512×512). Callers must not mutate it."""
    from skimage import data

    return Image.fromarray(data.astronaut()).convert("RGB")


def encode(img: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        params.setdefault("quality", 92)
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


# ---- good photos ---------------------------------------------------------------------------------------------


def astronaut_jpeg(quality: int = 92) -> bytes:
    return encode(astronaut(), "JPEG", quality=quality)


def astronaut_png() -> bytes:
    return encode(astronaut(), "PNG")


def astronaut_webp() -> bytes:
    return encode(astronaut(), "WEBP", quality=90)


def rotated(degrees: float) -> bytes:
    """A small in-plane rotation about the face (a tilted head); corners filled black."""
    img = astronaut().rotate(
        degrees, resample=Image.Resampling.BICUBIC, center=FACE_CENTER, fillcolor=(0, 0, 0)
    )
    return encode(img)


def brighter(factor: float) -> bytes:
    return encode(ImageEnhance.Brightness(astronaut()).enhance(factor))


def cropped(box: tuple[int, int, int, int] = (60, 0, 460, 400)) -> bytes:
    """A tighter framing (still contains the face)."""
    return encode(astronaut().crop(box))


def scaled(factor: float) -> bytes:
    img = astronaut()
    size = (round(img.width * factor), round(img.height * factor))
    return encode(img.resize(size, Image.Resampling.LANCZOS))


def mirrored() -> bytes:
    return encode(astronaut().transpose(Image.Transpose.FLIP_LEFT_RIGHT))


def distinct_good_set() -> list[tuple[str, bytes]]:
    """Five uploads of the one real face that are *not* duplicates of each other (different framing, tilt,
    mirror, exposure): the happy path of ``check_selfies``."""
    return [
        ("IMG_0001.JPG", astronaut_jpeg()),
        ("IMG_0002.JPG", rotated(8)),
        ("IMG_0003.JPG", mirrored()),
        ("IMG_0004.JPG", encode(ImageEnhance.Brightness(astronaut().crop((40, 10, 420, 390))).enhance(1.15))),
        (
            "IMG_0005.PNG",
            encode(
                astronaut()
                .rotate(-7, resample=Image.Resampling.BICUBIC, center=FACE_CENTER)
                .transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                "PNG",
            ),
        ),
    ]


# ---- format conversions that must be accepted ----------------------------------------------------------------


def cmyk_jpeg() -> bytes:
    return encode(astronaut().convert("CMYK"), "JPEG")


def palette_png() -> bytes:
    return encode(astronaut().convert("P", palette=Image.Palette.ADAPTIVE, colors=256), "PNG")


def rgba_png(alpha: int = 255) -> bytes:
    """The astronaut with an alpha channel; the border is fully transparent (composited over white)."""
    img = astronaut().convert("RGBA")
    a = Image.new("L", img.size, alpha)
    ImageDraw.Draw(a).rectangle((0, 0, img.width - 1, 15), fill=0)
    img.putalpha(a)
    return encode(img, "PNG")


def single_frame_gif() -> bytes:
    return encode(astronaut().convert("P", palette=Image.Palette.ADAPTIVE), "GIF")


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    """The astronaut stored sideways with an EXIF orientation tag that says how to upright it, as phones do.

    Orientation 6 means "rotate 90° clockwise to display", so the stored pixels are the upright photo turned 90°
    counter-clockwise; 8 is the opposite. Upright, the result equals the original astronaut.
    """
    img = astronaut()
    stored = {
        6: img.transpose(Image.Transpose.ROTATE_90),  # PIL's ROTATE_90 is counter-clockwise
        8: img.transpose(Image.Transpose.ROTATE_270),
        3: img.transpose(Image.Transpose.ROTATE_180),
    }[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", exif=exif.tobytes())


def sideways_jpeg_without_exif() -> bytes:
    """The same sideways pixels but no orientation tag: the face lies on its side."""
    return encode(astronaut().transpose(Image.Transpose.ROTATE_90), "JPEG")


# ---- photos the face rules must refuse ------------------------------------------------------------------------


def no_face(size: tuple[int, int] = (512, 512), seed: int = 0) -> bytes:
    """Smooth coloured noise: an image, but no face."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 32, size[0] // 32, 3), dtype=np.uint8)
    return encode(Image.fromarray(small).resize(size, Image.Resampling.BICUBIC))


def cat() -> bytes:
    """A real photo without a human face (scikit-image's chelsea the cat)."""
    from skimage import data

    return encode(Image.fromarray(data.chelsea()))


def two_faces() -> bytes:
    """Two astronaut heads side by side at the same size (two people in one frame)."""
    head = astronaut().crop((90, 0, 360, 300))
    canvas = Image.new("RGB", (head.width * 2, head.height), (128, 128, 128))
    canvas.paste(head, (0, 0))
    canvas.paste(head.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (head.width, 0))
    return encode(canvas)


def tiny_face(canvas: int = 800, factor: float = 0.6) -> bytes:
    """The astronaut shrunk into a big plain canvas: the face is found but is a small part of the photo."""
    img = astronaut()
    small = img.resize((round(img.width * factor), round(img.height * factor)), Image.Resampling.LANCZOS)
    big = Image.new("RGB", (canvas, canvas), (200, 205, 210))
    big.paste(small, ((canvas - small.width) // 2, (canvas - small.height) // 2))
    return encode(big)


def blurred(radius: float = 3.0) -> bytes:
    return encode(astronaut().filter(ImageFilter.GaussianBlur(radius)))


# ---- files the decoder must refuse ----------------------------------------------------------------------------


def empty() -> bytes:
    return b""


def text_file() -> bytes:
    """What a user gets when renaming notes.txt to photo.png."""
    return b"These are my notes, not a photo.\nLine two.\n" * 4


def too_small(size: tuple[int, int] = (200, 150)) -> bytes:
    return encode(astronaut().resize(size, Image.Resampling.LANCZOS))


@functools.cache
def decompression_bomb(side: int = 20_000) -> bytes:
    """A 1-bit PNG that declares side×side pixels (400 MP at the default) and compresses to a few KB."""
    return encode(Image.new("1", (side, side), 0), "PNG", optimize=True)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width``×``height`` RGB pixels, followed by a tiny (wrong) IDAT: the header
    lies, as a hostile file's would. Costs nothing to build at any size."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return pack(">I", len(body)) + kind + body + pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def animated_gif(frames: int = 3) -> bytes:
    base = astronaut().resize((300, 300))
    images = [ImageEnhance.Brightness(base).enhance(0.7 + 0.2 * i).convert("P") for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return buf.getvalue()


def animated_webp(frames: int = 2) -> bytes:
    base = astronaut().resize((300, 300))
    images = [ImageEnhance.Brightness(base).enhance(0.8 + 0.2 * i) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, format="WEBP", save_all=True, append_images=images[1:], duration=100)
    return buf.getvalue()


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: max(1, int(len(data) * keep))]
