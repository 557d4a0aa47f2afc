"""Who is in a photo: dlib's 128-d face descriptors and the same-person rule. Torch-free.

Two faces are the same person when their descriptors are closer than :data:`IDENTITY_THRESHOLD` (dlib's usual
threshold). :func:`find_identity_outliers` is a pure function of descriptors: the seam where the rule is tested
with synthetic ones, since only one real face photo ships with the test dependencies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from training.face_detection import INFERENCE_LOCK, detect, dominant, models, to_box, work_copy

IDENTITY_THRESHOLD = 0.6


def descriptor(work: np.ndarray, rect: Any) -> np.ndarray:
    """The 128-d descriptor of the face at dlib rectangle ``rect`` of a work copy. Hold INFERENCE_LOCK."""
    _, predictor, encoder = models()
    shape = predictor(work, rect)
    return np.asarray(encoder.compute_face_descriptor(work, shape), dtype=np.float64)


def face_descriptor(img: Image.Image) -> np.ndarray | None:
    """The 128-d descriptor of the dominant (largest, confidently detected) face in ``img``, for evaluation; None
    when there is no face."""
    work, _ = work_copy(img)
    with INFERENCE_LOCK:
        found = detect(work)
        if not found:
            return None
        boxes = [to_box(r, s, 1.0) for r, s in found]
        main, _ = dominant(boxes)  # the same choice as the selfie checks (a weak false positive never wins)
        return descriptor(work, found[boxes.index(main)][0])


def descriptor_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


def find_identity_outliers(
    descriptors: Sequence[np.ndarray], threshold: float = IDENTITY_THRESHOLD
) -> set[int]:
    """Positions (0-based) of the descriptors that are not the consensus person.

    The consensus is the medoid's neighbourhood: the descriptor with the most others within ``threshold`` (ties:
    the smallest mean distance), plus every descriptor within ``threshold`` of it. When that group is not a strict
    majority (say two photos of one person and two of another) nobody can tell which person is the user, and every
    position is returned.
    """
    n = len(descriptors)
    if n <= 1:
        return set()
    d = np.stack([np.asarray(x, dtype=np.float64) for x in descriptors])
    dist = np.linalg.norm(d[:, None, :] - d[None, :, :], axis=-1)
    close = dist < threshold
    counts = close.sum(axis=1)  # includes itself
    mean_dist = dist.sum(axis=1) / (n - 1)
    medoid = min(range(n), key=lambda i: (-counts[i], mean_dist[i]))
    members = {i for i in range(n) if close[medoid, i]}
    if len(members) * 2 <= n:
        return set(range(n))
    return set(range(n)) - members
