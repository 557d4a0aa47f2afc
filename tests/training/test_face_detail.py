"""The face-detail pass on the tiny pipeline (real diffusers img2img) and a real face found by dlib: only the
pixels inside the feathered face region change, a big face is left alone unless "always", the concept is
composed for the pass and the pipeline restored, and the result says what ran."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from kitbooth.errors import InvalidInput, JobCancelled
from tests.training.concepts import load_pipe
from tests.training.photos import astronaut
from tests.training.test_compose import face_ti
from training.compose import Composer, ConceptUse
from training.face_detail import FaceDetailSettings, detail_prompt, face_detail, main_face
from training.faces import FaceBox
from training.models import load_base_pipeline
from training.png_metadata import a1111_parameters

FAST = dict(resolution=64, steps=4, strength=0.5)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipe(tiny_model_dir)


@pytest.fixture(scope="module")
def composer(pipe):
    c = Composer(pipe, slots=8, lora_cache=2)
    yield c
    c.evict_all()


def arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.any(arr(a) != arr(b), axis=-1)


def in_image(result, size) -> np.ndarray:
    """The result's blend mask placed in image coordinates (0 outside the crop)."""
    full = np.zeros((size[1], size[0]), dtype=np.uint8)
    left, top, right, bottom = result.region
    full[top:bottom, left:right] = np.asarray(result.mask)
    return full


def test_small_face_is_redrawn_only_inside_the_feathered_region(pipe):
    photo = astronaut()  # dlib's face is ~87 px in 512: 0.17 of the image, under the 0.25 default
    (r,) = face_detail(pipe, [photo], detail_prompt(None), seeds=[3], settings=FaceDetailSettings(**FAST))
    assert r.ran and r.reason == "detailed" and r.box is not None
    left, top, right, bottom = r.region
    assert right - left == bottom - top == round(2.3 * max(r.box.width, r.box.height))
    assert left <= r.box.left and top <= r.box.top and right >= r.box.right and bottom >= r.box.bottom
    diff = changed(photo, r.image)
    mask = in_image(r, photo.size)
    assert diff.sum() > 0.3 * (mask == 255).sum()  # the face really was redrawn
    assert not np.any(diff & (mask == 0))  # and nothing else: bit-identical outside the feathered region
    assert np.all(mask[:, :left] == 0) and np.all(mask[bottom:, :] == 0)
    assert r.image.size == photo.size and r.image.mode == "RGB"
    assert (r.strength, r.steps, r.denoising_steps, r.seed) == (0.5, 4, 2, 3)


def test_same_seed_same_result_other_seed_other_face(pipe):
    s = FaceDetailSettings(**FAST)
    a, b, c = face_detail(pipe, [astronaut()] * 3, "a face", seeds=[1, 1, 2], settings=s)
    assert np.abs(arr(a.image) - arr(b.image)).max() <= 2  # batch numerics
    assert np.abs(arr(a.image) - arr(c.image)).max() > 5


def test_big_face_left_alone_unless_always(pipe):
    close_up = astronaut().crop((130, 40, 330, 240))  # the face is ~0.43 of the image
    s = FaceDetailSettings(**FAST)
    (r,) = face_detail(pipe, [close_up], "a face", seeds=[0], settings=s)
    assert not r.ran and r.reason.startswith("face large enough") and r.region is None
    assert np.array_equal(arr(r.image), arr(close_up)) and r.parameters() == {}
    (r,) = face_detail(pipe, [close_up], "a face", seeds=[0], settings=FaceDetailSettings(always=True, **FAST))
    assert r.ran and changed(close_up, r.image).any()
    assert not np.any(changed(close_up, r.image) & (in_image(r, close_up.size) == 0))


def test_no_face_is_left_alone():
    gray = Image.new("RGB", (128, 128), "gray")
    (r,) = face_detail(None, [gray], "a face", seeds=[0], settings=FaceDetailSettings(always=True))
    assert not r.ran and r.reason == "no face found" and np.array_equal(arr(r.image), arr(gray))


def test_face_at_the_image_edge_is_tapered_at_inner_crop_edges(pipe):
    canvas = Image.new("RGB", (96, 96), (120, 130, 140))
    box = FaceBox(0, 30, 40, 70, 1.0)  # a (given) face against the left edge, filling most of the height
    (r,) = face_detail(pipe, [canvas], "a face", seeds=[0], settings=FaceDetailSettings(always=True, **FAST),
                       find_face=lambda img: box)
    left, top, right, bottom = r.region
    assert left == 0 and right - left == 92 and top in (0, 4)
    m = np.asarray(r.mask)
    assert np.all(m[:, -1] == 0)  # right edge of the crop is inside the image: no seam there
    assert m[:, 0].max() > 0  # the left one is the image's edge: the face may reach it
    assert not np.any(changed(canvas, r.image) & (in_image(r, canvas.size) == 0))


def test_concept_is_composed_for_the_pass_and_the_pipeline_restored(pipe, composer):
    art = face_ti(71)
    prompt = detail_prompt(art.trigger)
    assert prompt == "a close-up photo of <kb-face-0> <kb-face-1> person, face, detailed"
    s = FaceDetailSettings(**FAST)
    before = face_detail(pipe, [astronaut()], prompt, seeds=[5], settings=s)[0].image
    mine = face_detail(pipe, [astronaut()], prompt, seeds=[5], settings=s, composer=composer,
                       concepts=[ConceptUse("alice", art)])[0].image
    after = face_detail(pipe, [astronaut()], prompt, seeds=[5], settings=s)[0].image
    assert np.abs(arr(mine) - arr(before)).max() > 5  # the concept's vectors took part
    assert np.array_equal(arr(before), arr(after))  # and the pipeline is the base one again
    assert composer._active is None


def test_parameters_record_what_ran(pipe):
    (r,) = face_detail(pipe, [astronaut()], "a face", seeds=[0], settings=FaceDetailSettings(**FAST))
    extra = r.parameters()
    b = r.box
    assert extra == {"Face detail": "img2img",
                     "Face detail box": f"{round(b.left)} {round(b.top)} {round(b.right)} {round(b.bottom)}",
                     "Face detail strength": 0.5, "Face detail steps": 4}
    text = a1111_parameters("p", "n", steps=20, cfg=7, seed=0, size=(512, 512), model="tiny", extra=extra)
    assert "Face detail: img2img, Face detail box: " in text and "Face detail strength: 0.5" in text


def test_cancel_between_steps(pipe):
    with pytest.raises(JobCancelled):
        face_detail(pipe, [astronaut()], "a face", seeds=[0], settings=FaceDetailSettings(**FAST),
                    should_stop=lambda: True)


def test_main_face_finds_the_real_face():
    box = main_face(astronaut())
    assert box is not None and 150 < box.center[0] < 300 and 60 < box.center[1] < 200
    assert main_face(Image.new("RGB", (128, 128), "gray")) is None


def test_settings_are_checked():
    with pytest.raises(InvalidInput, match="strength"):
        FaceDetailSettings(strength=0)
    with pytest.raises(InvalidInput, match="multiple of 8"):
        FaceDetailSettings(resolution=100)
    with pytest.raises(ValueError, match="one seed per image"):
        face_detail(None, [astronaut()], "a face", seeds=[])
    assert FaceDetailSettings(steps=2, strength=0.3).schedule_steps == 4  # int(4 × 0.3) = 1 step runs


def test_half_precision_pipeline_stays_half(tiny_model_dir):
    """Production keeps the pipeline resident in fp16 on CUDA; bf16 on CPU runs the same path: the img2img view
    shares the half modules (no fp32 copy) and the pass still touches only the face region."""
    half = load_base_pipeline(tiny_model_dir, device="cpu", dtype=torch.bfloat16, safety_checker=False)
    half.set_progress_bar_config(disable=True)
    composer = Composer(half, slots=8, lora_cache=2)
    photo = astronaut()
    (r,) = face_detail(half, [photo], "a face", seeds=[0], settings=FaceDetailSettings(**FAST), composer=composer,
                       concepts=[ConceptUse("alice", face_ti(72))])
    assert r.ran and changed(photo, r.image).any()
    assert not np.any(changed(photo, r.image) & (in_image(r, photo.size) == 0))
    assert half.unet.dtype == half.vae.dtype == half.text_encoder.dtype == torch.bfloat16
