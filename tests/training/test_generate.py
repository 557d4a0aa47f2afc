"""Generation on the tiny pipeline: cross-user batching, seeds, previews, cancel, safety, PNG metadata."""

from __future__ import annotations

import io

import numpy as np
import pytest
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
from PIL import Image

from kitbooth.errors import InvalidInput, JobCancelled
from tests.training.test_compose import FakeArtifact, face_ti, lora_state
from training.compose import Composer, ConceptUse
from training.generate import GenerationRequest, generate, upscale, vary
from training.pipeline_calls import encode_text
from training.png_metadata import IPTC_TRAINED_ALGORITHMIC

SMALL = dict(width=64, height=64, steps=4)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return StableDiffusionPipeline.from_pretrained(tiny_model_dir, local_files_only=True)


@pytest.fixture(scope="module")
def composer(pipe):
    return Composer(pipe, slots=8, lora_cache=4)


def arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def test_cross_user_batch_equals_each_alone(pipe, composer, tiny_model_dir):
    kit = FakeArtifact("kit", "lora", ["<kb-kit-0>"], None, lora_state(60, tiny_model_dir))
    ra = GenerationRequest("at the stadium", [ConceptUse("alice", face_ti(61)), ConceptUse("kit", kit)],
                           seed=5, count=2, kit_words="home kit", **SMALL)
    rb = GenerationRequest("at the stadium", [ConceptUse("bob", face_ti(62))], seed=5, count=1, **SMALL)
    steps = []
    batch = generate(pipe, composer, [ra, rb], progress=lambda s, t, im: steps.append((s, t, im)),
                     preview_every_s=0.0)
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert [len(x) for x in batch] == [2, 1]
    assert [im.seed for im in batch[0]] == [5, 6]
    assert [s for s, _, _ in steps] == [1, 2, 3, 4] and all(t == 4 for _, t, _ in steps)
    assert all(isinstance(im, Image.Image) for _, _, im in steps)
    assert "<kb-face-0> <kb-face-1> person wearing <kb-kit-0> home kit" in batch[0][0].prompt

    alone_a1 = generate(pipe, composer, [GenerationRequest(ra.prompt, ra.concepts, seed=6, count=1,
                                                           kit_words="home kit", **SMALL)])[0][0]
    alone_b = generate(pipe, composer, [rb])[0][0]
    assert np.abs(arr(batch[0][1].image) - arr(alone_a1.image)).max() <= 2  # uint8 rounding of batch numerics
    assert np.abs(arr(batch[1][0].image) - arr(alone_b.image)).max() <= 2
    assert np.abs(arr(batch[0][0].image) - arr(batch[1][0].image)).max() > 5  # same seed, different users


def test_png_carries_parameters_and_ai_mark(pipe, composer):
    out = generate(pipe, composer, [GenerationRequest("waving", [ConceptUse("c", face_ti(70))], seed=42,
                                                      guidance=6.5, **SMALL)])[0][0]
    png = Image.open(io.BytesIO(out.png))
    params = png.text["parameters"]
    lines = params.split("\n")
    assert lines[0] == out.prompt and lines[1].startswith("Negative prompt: lowres")
    for part in ["Steps: 4", "Sampler: DPM++ 2M Karras", "CFG scale: 6.5", "Seed: 42", "Size: 64x64",
                 "Model: tiny-model"]:
        assert part in lines[2]
    assert png.text["ai_generated"] == "true" and png.text["Software"].startswith("KitBooth")
    assert png.text["DigitalSourceType"] == IPTC_TRAINED_ALGORITHMIC
    assert "trainedAlgorithmicMedia" in png.text["XML:com.adobe.xmp"]
    assert not out.nsfw and out.notice is None


def test_cancel_stops_and_restores(pipe, composer, tiny_model_dir):
    before = encode_text(pipe, ["a photo"])
    kit = FakeArtifact("kit", "lora", [], None, lora_state(61, tiny_model_dir))
    calls = []
    req = GenerationRequest("x", [ConceptUse("f", face_ti(80)), ConceptUse("k2", kit)], **SMALL)
    with pytest.raises(JobCancelled):
        generate(pipe, composer, [req], should_stop=lambda: len(calls) >= 2,
                 progress=lambda s, t, im: calls.append(s))
    assert calls == [1, 2]
    assert composer._active is None
    assert (encode_text(pipe, ["a photo"]) == before).all()


def test_safety_checker_blacks_out_flagged_images(pipe, composer):
    out = generate(pipe, composer, [GenerationRequest("x", [], count=2, **SMALL)],
                   safety_checker=lambda images: [True, False])[0]
    assert out[0].nsfw and not out[1].nsfw
    assert arr(out[0].image).max() == 0 and arr(out[1].image).max() > 0


def test_upscale_skipped_cleanly_without_upscaler_and_lanczos_helper(pipe, composer):
    img = generate(pipe, composer, [GenerationRequest("x", [], upscale=True, **SMALL)])[0][0]
    assert img.image.size == (64, 64) and not img.upscaled
    big = upscale(pipe, img.image, prompt="a <kb-face-0> person", seed=3)
    assert big.image.size == (128, 128) and "Upscaler: Lanczos" in big.parameters
    assert "<kb-" not in big.prompt


def test_vary_is_img2img_from_the_picked_image(pipe, composer):
    req = GenerationRequest("x", [ConceptUse("v", face_ti(90))], seed=1, **SMALL)
    first = generate(pipe, composer, [req])[0][0]
    v = vary(req, first.image, strength=0.5)
    assert v.seed != req.seed and v.init_image is first.image
    out = generate(pipe, composer, [v])[0][0]
    assert out.image.size == (64, 64) and "Denoising strength: 0.5" in out.parameters
    again = generate(pipe, composer, [v])[0][0]
    assert np.array_equal(arr(out.image), arr(again.image))  # deterministic


def test_vary_with_few_steps_still_denoises(pipe, composer):
    """2 steps × strength 0.35 rounds down to 0 denoising steps in diffusers' img2img: the schedule is lengthened
    so one step runs, the picture changes, and the PNG records a schedule A1111 would replay the same way."""
    req = GenerationRequest("x", [], seed=1, width=64, height=64, steps=2)
    first = generate(pipe, composer, [req])[0][0]
    steps = []
    v = vary(req, first.image)
    out = generate(pipe, composer, [v], progress=lambda s, t, im: steps.append((s, t)))[0][0]
    assert steps == [(1, 1)]
    assert np.abs(arr(out.image) - arr(first.image)).max() > 5
    assert "Steps: 3," in out.parameters and "Denoising strength: 0.35" in out.parameters


def test_request_validation():
    with pytest.raises(InvalidInput):
        GenerationRequest("x", count=5)
    with pytest.raises(InvalidInput):
        GenerationRequest("x", width=500)
