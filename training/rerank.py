"""Best-of-N by identity: score generated candidates against the user's reference face and keep the k closest.

Torch-free (numpy, Pillow, dlib through :mod:`training.faces`), so the bot could re-rank too.

* **Reference identity**: the mean of the dlib 128-d descriptors of the accepted selfies
  (:func:`reference_descriptor` from photos, :func:`mean_descriptor` from ``PhotoReport.descriptors``). The
  centroid is a steadier target than any single selfie: one photo's lighting or angle no longer decides.
* **Score**: Euclidean distance, the metric dlib's ResNet was trained with (its same-person threshold,
  ``IDENTITY_THRESHOLD`` = 0.6, is a Euclidean distance; cosine is not what the embedding was trained for and
  the descriptors are not unit length). Shown to members as a *likeness* in [0, 1]:
  ``1 - distance / LIKENESS_SCALE`` with ``LIKENESS_SCALE = 2 × 0.6``, clipped at 0. So an identical face is
  1.0, dlib's same-person threshold is exactly 0.5, and d ≥ 1.2 (clearly someone else) is 0.
* **Order**: by distance (not by the clipped likeness, which would tie every stranger at 0); a candidate with no
  face found ranks after every face; ties keep the candidates' order (stable sort).

The descriptor function is a seam: every function takes ``describe(image) -> descriptor | None`` (default
:func:`training.faces.face_descriptor`), which tests replace with known descriptors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from training.faces import IDENTITY_THRESHOLD, descriptor_distance, face_descriptor

__all__ = [
    "DESCRIPTOR_SIZE",
    "LIKENESS_SCALE",
    "Describe",
    "Ranked",
    "likeness",
    "mean_descriptor",
    "reference_descriptor",
    "encode_reference",
    "decode_reference",
    "score_candidates",
    "rerank",
]

log = logging.getLogger(__name__)

DESCRIPTOR_SIZE = 128
# Distance at which the likeness reaches 0: twice dlib's same-person threshold, so the threshold reads as 0.5.
LIKENESS_SCALE = 2 * IDENTITY_THRESHOLD

Describe = Callable[[Image.Image], "np.ndarray | None"]


@dataclass(frozen=True)
class Ranked:
    """One candidate's score. ``index`` is its position in the candidates passed in."""

    index: int
    distance: float | None  # Euclidean distance to the reference; None when no face was found
    likeness: float | None  # 1 - distance / LIKENESS_SCALE, clipped to [0, 1]; None when no face was found

    @property
    def face_found(self) -> bool:
        return self.distance is not None

    @property
    def same_person(self) -> bool:
        """Under dlib's same-person threshold."""
        return self.distance is not None and self.distance < IDENTITY_THRESHOLD


def likeness(distance: float) -> float:
    """The member-facing likeness figure of a descriptor distance (see the module docstring)."""
    return float(min(1.0, max(0.0, 1.0 - distance / LIKENESS_SCALE)))


def _checked(d: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(d, dtype=np.float64).reshape(-1)
    if arr.shape != (DESCRIPTOR_SIZE,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} must be {DESCRIPTOR_SIZE} finite numbers (a dlib face descriptor)")
    return arr


def mean_descriptor(descriptors: Iterable[np.ndarray]) -> np.ndarray | None:
    """The mean of some descriptors (e.g. ``PhotoReport.descriptors.values()``), or None when there are none."""
    arrs = [_checked(d, "each descriptor") for d in descriptors]
    if not arrs:
        return None
    return np.mean(np.stack(arrs), axis=0)


def reference_descriptor(photos: Sequence[Image.Image], *, describe: Describe = face_descriptor) -> np.ndarray | None:
    """The reference identity of accepted selfies: the mean descriptor of those in which a face is found, or
    None when no photo shows a face."""
    return mean_descriptor(d for d in (describe(p) for p in photos) if d is not None)


def encode_reference(reference: np.ndarray) -> bytes:
    """The reference as 1024 bytes (128 little-endian float64) to store under the user's own prefix."""
    return _checked(reference, "the reference").astype("<f8").tobytes()


def decode_reference(data: bytes) -> np.ndarray:
    """Inverse of :func:`encode_reference`; a file of another size or with non-finite numbers is refused."""
    if len(data) != DESCRIPTOR_SIZE * 8:
        raise ValueError(f"a stored face reference is {DESCRIPTOR_SIZE * 8} bytes, not {len(data)}")
    return _checked(np.frombuffer(data, dtype="<f8"), "the stored face reference").copy()


def score_candidates(
    candidates: Sequence[Image.Image], reference: np.ndarray, *, describe: Describe = face_descriptor
) -> list[Ranked]:
    """Every candidate's distance and likeness to ``reference``, in the candidates' order."""
    ref = _checked(reference, "the reference")
    started = time.perf_counter()
    out = []
    for i, img in enumerate(candidates):
        d = describe(img)
        dist = None if d is None else descriptor_distance(_checked(d, "a candidate descriptor"), ref)
        out.append(Ranked(i, dist, None if dist is None else likeness(dist)))
    log.info("scored %d candidates against the reference in %.2f s", len(out), time.perf_counter() - started)
    return out


def rerank(
    candidates: Sequence[Image.Image],
    reference: np.ndarray,
    k: int | None = None,
    *,
    describe: Describe = face_descriptor,
) -> list[Ranked]:
    """The ``k`` candidates closest to ``reference`` (all of them when ``k`` is None), best first; candidates
    with no face found come last, in their original order. Use ``Ranked.index`` to pick the images."""
    if k is not None and k < 0:
        raise ValueError("k must be at least 0")
    scored = score_candidates(candidates, reference, describe=describe)
    ranked = sorted(scored, key=lambda r: (r.distance is None, r.distance if r.distance is not None else 0.0))
    return ranked if k is None else ranked[:k]
