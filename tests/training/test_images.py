"""training.images: every upload becomes an upright RGB image or an ImageRejected with a human reason."""

from __future__ import annotations

import io
import random
import warnings

import numpy as np
import pytest
from PIL import Image

from kitbooth.errors import InvalidInput, UserFacingError
from tests.training import photos
from training.images import (
    ImageRejected,
    caption_from_filename,
    center_square,
    encode_png,
    load_image,
    to_rgb,
)


def diff(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel value (0-255)."""
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


# ---- accepted -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        photos.astronaut_jpeg,
        photos.astronaut_png,
        photos.astronaut_webp,
        photos.single_frame_gif,
        photos.cmyk_jpeg,
        photos.palette_png,
        photos.rgba_png,
    ],
    ids=lambda f: f.__name__,
)
def test_formats_and_modes_become_rgb_of_the_same_picture(make):
    img = load_image(make(), name="x")
    assert img.mode == "RGB"
    assert img.size == (512, 512)
    # The same picture, not an inverted CMYK or a black-backed alpha image (rows 0-15 are transparent in rgba).
    assert diff(img.crop((0, 16, 512, 512)), photos.astronaut().crop((0, 16, 512, 512))) < 8


def test_alpha_is_composited_over_white():
    img = load_image(photos.rgba_png())
    assert np.asarray(img.crop((0, 0, 512, 16))).min() == 255  # fully transparent strip → white
    assert diff(img.crop((0, 16, 512, 512)), photos.astronaut().crop((0, 16, 512, 512))) < 1


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_orientation_is_applied(orientation):
    raw = photos.exif_rotated_jpeg(orientation)
    stored = Image.open(io.BytesIO(raw))
    assert stored.getexif()[0x0112] == orientation
    img = load_image(raw)
    assert img.size == (512, 512)
    assert diff(img, photos.astronaut()) < 6  # uprighted: equals the original up to JPEG noise
    sideways = load_image(photos.sideways_jpeg_without_exif())
    assert diff(sideways, photos.astronaut()) > 30  # and that is a real difference, not a symmetric picture


def test_exif_rotation_swaps_the_minimum_size_check():
    # 300×200 stored with orientation 6 is shown as 200×300: the reason names the size the user sees.
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = photos.encode(photos.astronaut().resize((300, 200)), "JPEG", exif=exif.tobytes())
    with pytest.raises(ImageRejected, match=r"too small \(200×300\)"):
        load_image(raw)


def test_multi_picture_jpeg_from_a_phone_is_a_still_photo():
    buf = io.BytesIO()
    img = photos.astronaut()
    img.save(buf, "MPO", save_all=True, append_images=[img.resize((256, 256))])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    assert diff(load_image(buf.getvalue()), img) < 6


def test_sixteen_bit_and_grey_modes():
    arr = (np.linspace(0, 65535, 300 * 300).reshape(300, 300)).astype(np.uint16)
    raw = photos.encode(Image.fromarray(arr), "PNG")
    img = load_image(raw)
    assert img.mode == "RGB" and img.size == (300, 300)
    assert np.asarray(img)[-1, -1, 0] > 240 and np.asarray(img)[0, 0, 0] < 10
    la = Image.new("LA", (300, 300), (100, 0))
    assert to_rgb(la).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(photos.encode(Image.new("L", (300, 300), 77), "PNG")).getpixel((5, 5)) == (77, 77, 77)


# ---- refused, with a human reason -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (photos.empty, "the file is empty"),
        (photos.text_file, "not an image — send a JPEG or PNG photo"),
        (lambda: b"GIF89a" + b"\x00" * 3, "not an image"),
        (photos.too_small, "too small (200×150) — send a photo at least 256 px on each side"),
        (lambda: photos.too_small((256, 255)), "too small (256×255)"),
        (photos.decompression_bomb, "too large"),
        (lambda: photos.png_header_only(30_000, 30_000), "too large"),
        (lambda: photos.png_header_only(8_000, 6_000), "the image is too large (8000×6000)"),
        (lambda: photos.png_header_only(100_000, 1), "too small (100000×1)"),
        (photos.animated_gif, "animated images aren't supported — send a still photo"),
        (photos.animated_webp, "animated images aren't supported — send a still photo"),
        (lambda: photos.truncated(photos.astronaut_jpeg(), 0.5), "the file is damaged or incomplete"),
        (lambda: photos.truncated(photos.astronaut_png(), 0.5), "the file is damaged or incomplete"),
        (lambda: photos.truncated(photos.astronaut_png(), 0.02), "the file is damaged or incomplete"),
        (lambda: photos.truncated(photos.astronaut_webp(), 0.5), "damaged or incomplete"),
        (lambda: photos.astronaut_jpeg()[:30], "the file is damaged or incomplete"),
    ],
    ids=[
        "empty",
        "text-renamed-png",
        "gif-magic-only",
        "too-small",
        "one-pixel-short",
        "bomb-1bit-20000px",
        "header-30000px",
        "header-48MP",
        "header-100000x1",
        "animated-gif",
        "animated-webp",
        "truncated-jpeg",
        "truncated-png",
        "png-signature-only",
        "truncated-webp",
        "jpeg-header-only",
    ],
)
def test_refusals_carry_a_human_reason(make, reason):
    with pytest.raises(ImageRejected) as info:
        load_image(make(), name="photo.png")
    assert reason in info.value.reason
    assert isinstance(info.value, InvalidInput) and isinstance(info.value, UserFacingError)
    assert str(info.value).startswith("photo.png: ")


def test_header_is_checked_before_pixels_are_decoded():
    # The header declares 48 MP but the pixel data is a 64-byte stub: reaching the decoder would say "damaged";
    # saying "too large" proves the size was judged from the header alone.
    with pytest.raises(ImageRejected, match="too large"):
        load_image(photos.png_header_only(8_000, 6_000))
    with pytest.raises(ImageRejected, match="damaged"):
        load_image(photos.png_header_only(600, 600))


def test_pillow_bomb_warning_is_caught_even_when_warnings_are_errors():
    # 10000×9000 = 90 MP: above Pillow's warning threshold (89 MP), below its error threshold.
    cap = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageRejected, match="too large"):
            load_image(photos.png_header_only(10_000, 9_000))
    assert cap == Image.MAX_IMAGE_PIXELS  # the global cap was not touched


def test_byte_and_pixel_caps_are_parameters():
    raw = photos.astronaut_png()
    with pytest.raises(ImageRejected, match="too large"):
        load_image(raw, max_bytes=len(raw) - 1)
    with pytest.raises(ImageRejected, match="too large"):
        load_image(raw, max_pixels=512 * 512 - 1)
    with pytest.raises(ImageRejected, match="at least 600 px"):
        load_image(raw, min_side=600)
    assert load_image(raw, max_bytes=len(raw), max_pixels=512 * 512, min_side=512).size == (512, 512)


def test_a_script_is_not_an_image():
    with pytest.raises(ImageRejected, match="not an image"):
        load_image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 600 600\nshowpage\n")


# ---- fuzz: nothing but ImageRejected (or a good image) for any bytes ------------------------------------------


def _fuzz_inputs() -> list[bytes]:
    rng = random.Random(1234)
    jpeg, png, webp, gif = (
        photos.encode(photos.astronaut().resize((300, 300)), fmt) for fmt in ("JPEG", "PNG", "WEBP", "GIF")
    )
    out: list[bytes] = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))) for _ in range(60)]
    for valid in (jpeg, png, webp, gif):
        for _ in range(12):
            cut = rng.randrange(1, len(valid))
            out.append(valid[:cut])
        for _ in range(12):
            flipped = bytearray(valid)
            for _ in range(rng.randrange(1, 8)):
                pos = rng.randrange(len(flipped))
                flipped[pos] = rng.randrange(256)
            out.append(bytes(flipped))
        for _ in range(4):  # a valid header then garbage
            out.append(valid[:64] + bytes(rng.randrange(256) for _ in range(200)))
    return out


def test_fuzzed_bytes_raise_only_image_rejected():
    outcomes = {"rejected": 0, "decoded": 0}
    for data in _fuzz_inputs():
        try:
            img = load_image(data, min_side=64)
        except ImageRejected as e:
            assert e.reason and "\n" not in e.reason
            outcomes["rejected"] += 1
        else:
            assert img.mode == "RGB"
            outcomes["decoded"] += 1
    assert outcomes["rejected"] > 60


# ---- helpers --------------------------------------------------------------------------------------------------


def test_encode_png_round_trips():
    img = photos.astronaut()
    raw = encode_png(img)
    assert raw.startswith(b"\x89PNG")
    assert diff(load_image(raw), img) == 0


def test_center_square():
    wide = photos.astronaut().resize((800, 400))
    sq = center_square(wide, 256)
    assert sq.size == (256, 256)
    # The middle of the wide picture: its left edge is x=200 of the 800-wide image.
    ref = wide.crop((200, 0, 600, 400)).resize((256, 256), Image.Resampling.LANCZOS)
    assert diff(sq, ref) < 2
    assert center_square(photos.astronaut(), 512).size == (512, 512)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("IMG_1234.JPG", ""),
        ("PXL_20251125_101010123.jpg", ""),
        ("WhatsApp Image 2025-01-02 at 10.11.12.jpeg", ""),
        ("home-kit_2025.png", "home kit"),
        ("Arsenal Away Kit.webp", "arsenal away kit"),
        ("C:\\Users\\me\\retro_style.png", "retro style"),
        ("{evil}.png", "evil"),
        ("", ""),
    ],
)
def test_caption_from_filename(name, words):
    assert caption_from_filename(name) == words
