"""Selfie checks and photo preparation. Torch-free: the bot imports this module.

``check_selfies`` turns an upload of selfies into a ``PhotoReport``: one ``PhotoVerdict`` per photo (accepted or
refused, with a short human reason) and, for the accepted ones, a square face crop at the training resolution
with a feathered face mask for masked loss. It runs in a few hundred ms per photo on one CPU core, so the bot
can show the report before any GPU time is spent.

Rules, in order, per photo: decodable (``training.images.load_image``); not a byte-identical copy; exactly one
dominant face; the face big enough; not blurry; not a near-identical copy of an earlier photo. Then across the
photos: all the same person (``training.face_identity.find_identity_outliers``).

The pieces live in ``training.face_detection`` (dlib), ``training.face_identity``, ``training.face_crop``,
``training.photo_measures`` and ``training.photo_report``; the names the bot uses are re-exported here.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from training.face_crop import crop_face, face_crop_box, face_mask
from training.face_detection import (
    INFERENCE_LOCK,
    FaceBox,
    detect,
    detect_faces,
    dominant,
    to_box,
    warm_up,
    work_copy,
)
from training.face_identity import (
    IDENTITY_THRESHOLD,
    descriptor_distance,
    face_descriptor,
    find_identity_outliers,
)

# Looked up here at call time: tests replace ``faces._descriptor`` to play a stranger's face.
from training.face_identity import descriptor as _descriptor
from training.images import ImageRejected, caption_from_filename, center_square, load_image
from training.photo_measures import Likeness, image_hash, sharpness
from training.photo_report import (
    BLURRY,
    DIFFERENT,
    MAX_FACE_PHOTOS,
    MAX_REFERENCE_PHOTOS,
    MIN_FACE_PHOTOS,
    NO_FACE,
    SAME_AS,
    TOO_MANY,
    TOO_SMALL,
    TWO_PEOPLE,
    PhotoReport,
    PhotoVerdict,
    PreparedPhoto,
    Verdicts,
)

__all__ = [
    "MIN_FACE_PHOTOS",
    "MAX_FACE_PHOTOS",
    "MAX_REFERENCE_PHOTOS",
    "IDENTITY_THRESHOLD",
    "PhotoVerdict",
    "PreparedPhoto",
    "PhotoReport",
    "FaceBox",
    "check_selfies",
    "prepare_reference_photos",
    "face_descriptor",
    "detect_faces",
    "find_identity_outliers",
    "descriptor_distance",
    "sharpness",
    "image_hash",
    "face_crop_box",
    "face_mask",
    "warm_up",
]

log = logging.getLogger(__name__)

# The face (dlib's box: brows to chin) must be at least this many pixels across in the photo, and this
# fraction of the photo's shorter side.
MIN_FACE_PX = 64
MIN_FACE_FRACTION = 0.07
# Sharp faces measure 0.2-0.3; a Gaussian blur of radius 1 px on a 90 px face 0.075, radius 2 px 0.02.
BLUR_MIN_SHARPNESS = 0.04

Refuse = Callable[[int, str, str], None]


@dataclass
class _Candidate:
    index: int
    filename: str
    image: Image.Image
    box: FaceBox
    descriptor: np.ndarray
    likeness: Likeness


def _decoded(photos: Sequence[tuple[str, bytes]], limit: int, refuse: Refuse) -> Iterator[tuple[int, str, Image.Image]]:
    """(index, filename, image) of each photo within ``limit`` that decodes and is not a byte-identical copy of
    an earlier one; the others are refused on the way."""
    seen_bytes: dict[str, int] = {}
    for index, (filename, data) in enumerate(photos, start=1):
        if index > limit:
            refuse(index, filename, TOO_MANY.format(n=limit))
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen_bytes and data:
            refuse(index, filename, SAME_AS.format(n=seen_bytes[digest]))
            continue
        seen_bytes.setdefault(digest, index)
        try:
            img = load_image(data, name=filename)
        except ImageRejected as e:
            refuse(index, filename, e.reason)
            continue
        yield index, filename, img


def _analyse(img: Image.Image) -> tuple[str | None, FaceBox | None, np.ndarray | None]:
    """(refusal reason or None, main face box in photo pixels, descriptor) for one decoded photo."""
    work, factor = work_copy(img)
    with INFERENCE_LOCK:
        found = detect(work)
        if not found:
            return NO_FACE, None, None
        boxes = [to_box(r, s, factor) for r, s in found]
        main, others = dominant(boxes)
        if others:
            return TWO_PEOPLE, main, None
        face_side = max(main.width, main.height)
        if face_side < MIN_FACE_PX or face_side < MIN_FACE_FRACTION * min(img.size):
            return TOO_SMALL, main, None
        if sharpness(img, main) < BLUR_MIN_SHARPNESS:
            return BLURRY, main, None
        rect = found[boxes.index(main)][0]
        return None, main, _descriptor(work, rect)


def _twin(likeness: Likeness, earlier: Sequence[tuple[int, Likeness]]) -> int | None:
    return next((index for index, other in earlier if likeness.near_copy_of(other)), None)


def check_selfies(photos: Sequence[tuple[str, bytes]], *, resolution: int = 512) -> PhotoReport:
    """Check an upload of selfies (``(filename, bytes)`` in upload order) and prepare the accepted ones.

    Never raises for bad photos: each gets a refused verdict with a reason. Photos past MAX_FACE_PHOTOS are
    refused unread. The report's ``photos`` hold a square face crop of ``resolution``² and its face mask.
    """
    started = time.perf_counter()
    verdicts = Verdicts()
    candidates: list[_Candidate] = []
    for index, filename, img in _decoded(photos, MAX_FACE_PHOTOS, verdicts.refuse):
        reason, box, descriptor = _analyse(img)
        if reason is not None or box is None or descriptor is None:
            verdicts.refuse(index, filename, reason or NO_FACE)
            continue
        likeness = Likeness.of(img)
        twin = _twin(likeness, [(c.index, c.likeness) for c in candidates])
        if twin is not None:
            verdicts.refuse(index, filename, SAME_AS.format(n=twin))
            continue
        candidates.append(_Candidate(index, filename, img, box, descriptor, likeness))

    outliers = find_identity_outliers([c.descriptor for c in candidates])
    prepared: list[PreparedPhoto] = []
    descriptors: dict[int, np.ndarray] = {}
    for position, c in enumerate(candidates):
        if position in outliers:
            verdicts.refuse(c.index, c.filename, DIFFERENT)
            continue
        image, mask = crop_face(c.image, c.box, resolution)
        prepared.append(PreparedPhoto(c.index, image, mask, ""))
        descriptors[c.index] = c.descriptor
        verdicts.accept(c.index, c.filename)

    report = PhotoReport(verdicts=verdicts.in_order(), photos=prepared, min_photos=MIN_FACE_PHOTOS, kind="face",
                         descriptors=descriptors)
    log.info("selfies checked: %d photos, %d accepted in %.2f s", len(photos), len(prepared),
             time.perf_counter() - started)
    return report


def prepare_reference_photos(
    photos: Sequence[tuple[str, bytes]],
    *,
    kind: Literal["kit", "style"],
    resolution: int = 512,
) -> PhotoReport:
    """Kit and style photos: no face rules. Decode, drop byte-identical and near-identical copies, centre
    square crop at ``resolution``², and a caption: the file name's words when they mean something, else ""."""
    if kind not in ("kit", "style"):
        raise ValueError(f"kind must be 'kit' or 'style', not {kind!r}")
    verdicts = Verdicts()
    prepared: list[PreparedPhoto] = []
    seen: list[tuple[int, Likeness]] = []
    for index, filename, img in _decoded(photos, MAX_REFERENCE_PHOTOS, verdicts.refuse):
        likeness = Likeness.of(img)
        twin = _twin(likeness, seen)
        if twin is not None:
            verdicts.refuse(index, filename, SAME_AS.format(n=twin))
            continue
        seen.append((index, likeness))
        prepared.append(PreparedPhoto(index, center_square(img, resolution), None, caption_from_filename(filename)))
        verdicts.accept(index, filename)
    return PhotoReport(verdicts=verdicts.in_order(), photos=prepared, min_photos=1, kind=kind)
