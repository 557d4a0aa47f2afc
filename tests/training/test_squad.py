"""Squad photos in the library (issue 15): the deterministic layout fallback, faces in reading order, and the
per-face pass in which each face is redone with its own concept only and no other face's pixels move."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.training.concepts import load_pipe
from tests.training.test_compose import face_ti
from training.compose import Composer, ConceptUse
from training.face_detail import FaceDetailSettings, FaceJob, detail_faces, detail_prompt
from training.faces import FaceBox
from training.squad import HEAD_TOP, column_boxes, scene_request, squad_faces

FAST = FaceDetailSettings(resolution=64, steps=4, strength=0.5, always=True)


def test_the_fallback_layout_is_n_equal_columns_one_face_each():
    boxes = column_boxes((300, 200), 3)
    assert [(b.left, b.right) for b in boxes] == [(25.0, 75.0), (125.0, 175.0), (225.0, 275.0)]
    assert all(b.top == HEAD_TOP * 200 and b.height == 50.0 for b in boxes)
    img = Image.new("RGB", (300, 200))
    assert squad_faces(img, 3, lambda _i: []) == (boxes, "columns")  # no face found (the tiny model)


def test_detected_faces_are_the_largest_in_reading_order():
    right, left, small, mid = (FaceBox(200, 10, 260, 70, 1.0), FaceBox(10, 30, 70, 90, 2.0),
                               FaceBox(150, 0, 160, 10, 3.0), FaceBox(100, 20, 150, 70, 0.5))
    found, how = squad_faces(Image.new("RGB", (300, 200)), 3, lambda _i: [right, left, small, mid])
    assert how == "detected" and found == [left, mid, right]


def test_the_scene_names_the_count_and_no_face():
    req = scene_request("lifting the cup", 3, concepts=[], seed=1, width=64, height=64, steps=2, guidance=7.0,
                        kit_words="red shirt", style_words=None)
    from training.generation_request import build_request_prompt

    text = build_request_prompt(req).text
    assert text.startswith("a photo of three football players wearing red shirt, standing side by side")
    assert "lifting the cup" in text and "person" not in text


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipe(tiny_model_dir)


@pytest.mark.slow
def test_each_face_is_redone_with_its_own_concept_and_no_other_face_moves(pipe):
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (64, 128, 3), dtype=np.uint8))
    boxes = column_boxes(picture.size, 2)
    composer = Composer(pipe, slots=8, lora_cache=2)
    a, b = ConceptUse("a", face_ti(1, name="face")), ConceptUse("b", face_ti(2, name="face"))  # same trigger words
    jobs = [FaceJob(box, detail_prompt("<kb-face-0> <kb-face-1>"), [use]) for box, use in zip(boxes, (a, b),
                                                                                           strict=True)]
    first, last = detail_faces(pipe, picture, jobs, seed=5, settings=FAST, composer=composer)
    before, after_first, final = (np.asarray(x, np.int16) for x in (picture, first.image, last.image))

    def inside(box: FaceBox) -> tuple[slice, slice]:
        return slice(int(box.top), int(np.ceil(box.bottom))), slice(int(box.left), int(np.ceil(box.right)))

    assert np.any(after_first[inside(boxes[0])] != before[inside(boxes[0])])  # face 0 was redrawn
    assert np.array_equal(after_first[inside(boxes[1])], before[inside(boxes[1])])  # ...and face 1 untouched
    assert np.any(final[inside(boxes[1])] != before[inside(boxes[1])])  # then face 1, by its own pass
    assert np.array_equal(final[inside(boxes[0])], after_first[inside(boxes[0])])  # which left face 0 alone
    # Face 0 depends on its own concept only: swapping face 1's concept changes nothing in face 0.
    jobs_swapped = [jobs[0], FaceJob(boxes[1], jobs[1].prompt, [a])]
    first2, _ = detail_faces(pipe, picture, jobs_swapped, seed=5, settings=FAST, composer=composer)
    assert np.allclose(np.asarray(first2.image, np.int16), after_first, atol=1)
