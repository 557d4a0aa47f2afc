"""The same-person rule: ``find_identity_outliers`` at its documented seam, on synthetic descriptors, and its
wiring into ``check_selfies`` through ``faces._descriptor`` (one photo's descriptor moved far away), since only
one real face photo ships with the test dependencies."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.training import photos
from training import faces
from training.faces import check_selfies, face_descriptor, find_identity_outliers


@pytest.fixture(scope="module", autouse=True)
def _models():
    faces.warm_up()


def _cluster(rng: np.random.Generator, center: np.ndarray, n: int, spread: float = 0.12) -> list[np.ndarray]:
    """n descriptors around ``center``, each about ``spread`` away from it (same person: pairwise < 0.6)."""
    out = []
    for _ in range(n):
        step = rng.normal(size=128)
        out.append(center + spread * step / np.linalg.norm(step))
    return out


@pytest.fixture
def person_a() -> np.ndarray:
    d = face_descriptor(photos.astronaut())
    assert d is not None
    return d


def _far_from(center: np.ndarray, rng: np.random.Generator, distance: float = 0.9) -> np.ndarray:
    step = rng.normal(size=128)
    return center + distance * step / np.linalg.norm(step)


def test_identity_outlier_is_named(person_a):
    rng = np.random.default_rng(0)
    descriptors = _cluster(rng, person_a, 5)
    descriptors.insert(2, _far_from(person_a, rng))
    assert find_identity_outliers(descriptors) == {2}
    assert find_identity_outliers(descriptors, threshold=2.0) == set()


def test_identity_rule_edge_cases(person_a):
    rng = np.random.default_rng(1)
    b = _far_from(person_a, rng)
    assert find_identity_outliers([]) == set()
    assert find_identity_outliers([person_a]) == set()
    assert find_identity_outliers(_cluster(rng, person_a, 2)) == set()
    assert find_identity_outliers([person_a, b]) == {0, 1}  # two people, no way to tell which is the user
    assert find_identity_outliers(_cluster(rng, person_a, 2) + _cluster(rng, b, 2)) == {0, 1, 2, 3}
    assert find_identity_outliers(_cluster(rng, person_a, 3) + _cluster(rng, b, 2)) == {3, 4}
    c = _far_from(b, rng)
    assert find_identity_outliers(_cluster(rng, person_a, 4) + [b, c]) == {4, 5}


def test_real_variations_of_one_face_are_one_person():
    descriptors = list(check_selfies(photos.distinct_good_set()).descriptors.values())
    assert find_identity_outliers(descriptors) == set()
    dist = [np.linalg.norm(a - b) for a in descriptors for b in descriptors]
    assert max(dist) < 0.4


def test_check_selfies_names_the_different_person(monkeypatch):
    # Seam: faces._descriptor (dlib's ResNet). Photo 3's descriptor is moved 0.9 away, as a stranger's would be.
    real = faces._descriptor
    calls = {"n": 0}
    rng = np.random.default_rng(3)

    def descriptor(work, rect):
        d = real(work, rect)
        calls["n"] += 1
        return _far_from(d, rng) if calls["n"] == 3 else d

    monkeypatch.setattr(faces, "_descriptor", descriptor)
    report = check_selfies(photos.distinct_good_set())
    assert report.verdicts[2].reason == "photo 3: looks like a different person from the others"
    assert [v.accepted for v in report.verdicts] == [True, True, False, True, True]
    assert [p.index for p in report.photos] == [1, 2, 4, 5] and report.ok()
    assert "❌ photo 3: looks like a different person" in report.checklist()


def test_face_descriptor():
    a = face_descriptor(photos.astronaut())
    m = face_descriptor(photos.astronaut().transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert a is not None and m is not None and a.shape == (128,)
    assert 0.0 < np.linalg.norm(a - m) < 0.3
    assert face_descriptor(Image.open(io.BytesIO(photos.no_face()))) is None
