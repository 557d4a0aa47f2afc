"""Best-of-N by identity: ordering by a known score (descriptors at the seam), face-less candidates last, the
reference of real selfies, and the stored form of the reference."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.training.photos import astronaut, distinct_good_set, no_face
from training.images import load_image
from training.rerank import (
    LIKENESS_SCALE,
    decode_reference,
    encode_reference,
    likeness,
    mean_descriptor,
    reference_descriptor,
    rerank,
    score_candidates,
)

REF = np.zeros(128)


def at_distance(d: float) -> np.ndarray:
    v = np.zeros(128)
    v[0] = d
    return v


def seam(distances: list[float | None]):
    """Candidates (tiny images, told apart by their size) and a ``describe`` that answers a known descriptor for
    each: ``distances[i]`` from the reference, or no face."""
    images = [Image.new("RGB", (8 + i, 8)) for i in range(len(distances))]
    by_width = {8 + i: (None if d is None else at_distance(d)) for i, d in enumerate(distances)}
    return images, lambda img: by_width[img.width]


def test_orders_by_distance_and_keeps_k():
    images, describe = seam([0.9, 0.2, 0.55, 0.4])
    ranked = rerank(images, REF, 2, describe=describe)
    assert [r.index for r in ranked] == [1, 3]
    assert ranked[0].distance == pytest.approx(0.2) and ranked[0].likeness == pytest.approx(1 - 0.2 / 1.2)
    assert all(r.same_person for r in ranked)
    assert [r.index for r in rerank(images, REF, describe=describe)] == [1, 3, 2, 0]


def test_faceless_candidates_rank_last_in_their_order():
    images, describe = seam([None, 1.5, None, 0.3, 2.0])
    ranked = rerank(images, REF, describe=describe)
    assert [r.index for r in ranked] == [3, 1, 4, 0, 2]
    # Strangers beyond the scale all read likeness 0, but are still ordered by distance, above face-less ones.
    assert [r.likeness for r in ranked[1:3]] == [0.0, 0.0]
    assert [r.face_found for r in ranked] == [True, True, True, False, False]
    assert ranked[-1].likeness is None and ranked[-1].distance is None and not ranked[-1].same_person


def test_ties_keep_the_candidates_order():
    images, describe = seam([0.4, 0.4, 0.1, 0.4])
    assert [r.index for r in rerank(images, REF, describe=describe)] == [2, 0, 1, 3]
    assert rerank(images, REF, 0, describe=describe) == []


def test_likeness_scale_reads_the_threshold_as_one_half():
    assert pytest.approx(1.2) == LIKENESS_SCALE
    assert likeness(0.0) == 1.0 and likeness(0.6) == pytest.approx(0.5) and likeness(5.0) == 0.0


def test_scores_keep_the_candidates_order():
    images, describe = seam([0.5, None, 0.1])
    assert [(r.index, r.face_found) for r in score_candidates(images, REF, describe=describe)] == [
        (0, True), (1, False), (2, True)
    ]


def test_bad_descriptors_are_refused():
    images, _ = seam([0.1])
    with pytest.raises(ValueError, match="128 finite numbers"):
        rerank(images, np.zeros(64))
    with pytest.raises(ValueError, match="128 finite numbers"):
        rerank(images, REF, describe=lambda img: np.full(128, np.nan))
    with pytest.raises(ValueError, match="at least 0"):
        rerank(images, REF, -1, describe=lambda img: REF)


def test_reference_of_real_selfies_ranks_the_real_face_first():
    selfies = [load_image(data, name=name) for name, data in distinct_good_set()]
    ref = reference_descriptor(selfies)
    assert ref is not None and ref.shape == (128,)
    candidates = [load_image(no_face()), ImageOps.mirror(astronaut()),
                  Image.new("RGB", (256, 256), "gray")]
    ranked = rerank(candidates, ref, 2)
    assert [r.index for r in ranked] == [1, 0]
    assert ranked[0].same_person and ranked[0].likeness > 0.5
    assert not ranked[1].face_found


def test_reference_is_the_mean_of_the_faces_found():
    a, b = at_distance(0.2), at_distance(0.6)
    images, describe = seam([0.2, None, 0.6])
    assert np.allclose(reference_descriptor(images, describe=describe), at_distance(0.4))
    assert np.allclose(mean_descriptor([a, b]), at_distance(0.4))
    assert reference_descriptor(images[1:2], describe=describe) is None
    assert mean_descriptor([]) is None


def test_reference_round_trips_through_bytes():
    ref = np.random.default_rng(0).normal(size=128)
    data = encode_reference(ref)
    assert len(data) == 1024 and np.array_equal(decode_reference(data), ref)
    with pytest.raises(ValueError, match="1024 bytes"):
        decode_reference(data[:-8])
    with pytest.raises(ValueError, match="finite"):
        decode_reference(np.full(128, np.inf).tobytes())


def test_rerank_is_torch_free():
    code = "import sys, training.rerank; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
