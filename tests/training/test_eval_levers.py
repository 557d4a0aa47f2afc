"""``evaluate_levers`` on the tiny pipeline: the arms share their seeds, best-of-N picks the closest of all N (by a
known descriptor at the seam), the face-detail arm re-scores detailed images, and the whole thing runs end to end
with the real face models too (on the tiny model no face is found: every figure reads n/a)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.training.concepts import load_pipe
from tests.training.photos import astronaut
from tests.training.test_compose import face_ti
from training.compose import Composer
from training.eval_levers import ARMS, evaluate_levers
from training.face_detail import FaceDetailSettings
from training.faces import FaceBox

SMALL = dict(steps=3, size=64)
DETAIL = FaceDetailSettings(resolution=64, steps=4, strength=0.5)
REFERENCE = np.zeros(128)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipe(tiny_model_dir)


@pytest.fixture(scope="module")
def composer(pipe):
    c = Composer(pipe, slots=8, lora_cache=2)
    yield c
    c.evict_all()


def centre_colour(img: Image.Image) -> np.ndarray:
    """The seam's descriptor: the mean colour of the image's centre (where the given face box is), so a face
    detail pass moves it and every image has a known distance to REFERENCE."""
    a = np.asarray(img, dtype=np.float64)[24:40, 24:40] / 255.0
    v = np.zeros(128)
    v[:3] = a.mean(axis=(0, 1))
    return v


def small_face(img: Image.Image) -> FaceBox:
    return FaceBox(26, 26, 38, 38, 1.0)  # 12 px in 64: 0.19 of the image, under the 0.25 threshold


def test_arms_share_seeds_and_best_of_picks_the_closest(pipe, composer):
    report = evaluate_levers(pipe, composer, face_ti(81), reference=REFERENCE, prompts=["at the stadium"], k=2,
                             best_of=3, detail=DETAIL, seed=10, describe=centre_colour, find_face=small_face,
                             **SMALL)
    assert [a.name for a in report.arms] == list(ARMS)
    assert report.seeds == [10, 11]
    base, best, det, both = (report.arm(n) for n in ARMS)
    assert [i.seed for i in base.images] == [10, 11] == [i.seed for i in det.images]
    assert {i.seed for i in best.images} <= set(range(10, 16)) and len(best.images) == 2
    assert [i.seed for i in both.images] == [i.seed for i in best.images]
    # Best-of-N is the k closest of all N candidates, which include the baseline's: never worse than it.
    assert best.images[0].distance <= best.images[1].distance <= max(i.distance for i in base.images)
    assert best.distance_mean <= base.distance_mean and best.likeness_mean >= base.likeness_mean
    # The detail pass ran on every image and changed what the seam measures.
    assert all(i.detailed for i in det.images + both.images) and not any(i.detailed for i in base.images)
    assert [i.distance for i in det.images] != [i.distance for i in base.images]
    assert base.face_rate == 1.0 and all(a.seconds_per_image > 0 for a in report.arms)
    assert best.seconds_per_image > base.seconds_per_image and det.seconds_per_image > base.seconds_per_image
    text = report.format()
    assert "best of 3" in text and "best-of-N + face detail" in text
    assert json.loads(report.to_json())["arms"][0]["name"] == "baseline"


def test_levers_off_leave_only_their_arms(pipe, composer):
    report = evaluate_levers(pipe, composer, face_ti(82), reference=REFERENCE, prompts=["a portrait"], k=1,
                             best_of=1, detail=None, describe=centre_colour, **SMALL)
    assert [a.name for a in report.arms] == ["baseline"]
    with pytest.raises(ValueError, match="at least 1"):
        evaluate_levers(pipe, composer, face_ti(82), reference=REFERENCE, k=0)


def test_end_to_end_with_the_real_face_models(pipe, composer):
    report = evaluate_levers(pipe, composer, face_ti(83), photos=[astronaut()], prompts=["a portrait"], k=1,
                             best_of=2, detail=DETAIL, **SMALL)
    assert report.notes == [] and len(report.arms) == 4
    for arm in report.arms:  # random tiny weights draw no face: a miss everywhere, the pass does not run
        assert arm.face_rate == 0.0 and arm.match_rate == 0.0 and arm.distance_mean is None
        assert not any(i.detailed for i in arm.images)
    assert "n/a" in report.format()
    gray = evaluate_levers(pipe, composer, face_ti(83), photos=[Image.new("RGB", (128, 128), "gray")],
                           prompts=["a portrait"], k=1, best_of=1, detail=None, **SMALL)
    assert gray.notes and "no reference identity" in gray.notes[0]
