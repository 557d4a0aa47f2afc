"""Face detection with dlib (torch-free): the models, loaded once, and where the faces in a photo are.

dlib's HOG frontal face detector, the 5-point shape predictor and the ResNet face-recognition model (from
``face_recognition_models``) are loaded once, lazily, under a lock (about 0.4 s); inference is serialised by
:data:`INFERENCE_LOCK` too, as dlib's network objects are not safe to share between threads.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

# Detection runs on a copy whose longest side is at most this (faces stay ≥ 40 px there for any usable photo).
DETECT_MAX_SIDE = 800
# A second detection counts as a second person only if it is this large relative to the main face (by area)
# and the detector is this sure of it. The HOG detector fires weakly (score < 0.2 without upsampling) on a
# region of the astronaut's suit the same size as her face; two real faces score > 1.
SECOND_FACE_AREA_RATIO = 0.3
SECOND_FACE_MIN_SCORE = 0.5

INFERENCE_LOCK = threading.Lock()
_load_lock = threading.Lock()
_loaded: tuple[Any, Any, Any] | None = None


@dataclass(frozen=True)
class FaceBox:
    """A detected face in image pixels (dlib's box: roughly eyebrows to chin), with the detector's score."""

    left: float
    top: float
    right: float
    bottom: float
    score: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.left + self.right) / 2, (self.top + self.bottom) / 2)

    def scaled(self, factor: float) -> FaceBox:
        return FaceBox(
            self.left * factor, self.top * factor, self.right * factor, self.bottom * factor, self.score
        )


def models() -> tuple[Any, Any, Any]:
    """(detector, shape predictor, face encoder), loaded on first use and shared by every thread."""
    global _loaded
    if _loaded is None:
        with _load_lock:
            if _loaded is None:
                _loaded = _load()
    return _loaded


def _load() -> tuple[Any, Any, Any]:
    import dlib  # on first use, like the models: importing the selfie checks costs the bot nothing

    started = time.perf_counter()
    folder = _models_dir()
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(folder / "shape_predictor_5_face_landmarks.dat"))
    encoder = dlib.face_recognition_model_v1(str(folder / "dlib_face_recognition_resnet_model_v1.dat"))
    log.info("face models loaded in %.2f s", time.perf_counter() - started)
    return detector, predictor, encoder


def _models_dir() -> Path:
    # Locate face_recognition_models' data without importing it: its __init__ imports pkg_resources, which
    # recent setuptools no longer ship.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face_recognition_models is not installed (pip install face_recognition_models)")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def warm_up() -> None:
    """Load the face models now (e.g. at bot start-up) instead of on the first photo."""
    models()


def work_copy(img: Image.Image) -> tuple[np.ndarray, float]:
    """The photo as a contiguous uint8 RGB array whose longest side is at most DETECT_MAX_SIDE, and the factor
    from work pixels to photo pixels."""
    factor = 1.0
    longest = max(img.size)
    if longest > DETECT_MAX_SIDE:
        size = (
            max(1, round(img.width * DETECT_MAX_SIDE / longest)),
            max(1, round(img.height * DETECT_MAX_SIDE / longest)),
        )
        factor = img.width / size[0]
        img = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8)), factor


def detect(work: np.ndarray) -> list[tuple[Any, float]]:
    """dlib rectangles with scores ≥ 0 on the work copy: without upsampling first (fast, and the most
    discriminating), then with one upsampling for faces under 80 px. Best score first. Hold INFERENCE_LOCK."""
    detector, _, _ = models()
    for upsample in (0, 1):
        rects, scores, _ = detector.run(work, upsample, 0.0)
        found = sorted(zip(rects, scores, strict=True), key=lambda rs: -rs[1])
        if found:
            return found
    return []


def to_box(rect: Any, score: float, factor: float) -> FaceBox:
    """A dlib rectangle on the work copy as a FaceBox in photo pixels."""
    return FaceBox(rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1, float(score)).scaled(factor)


def detect_faces(img: Image.Image) -> list[FaceBox]:
    """Every face the detector is reasonably sure of, in photo pixels, best score first."""
    work, factor = work_copy(img)
    with INFERENCE_LOCK:
        found = detect(work)
    return [to_box(r, s, factor) for r, s in found]


def dominant(boxes: list[FaceBox]) -> tuple[FaceBox, list[FaceBox]]:
    """The main face (best score among faces not much smaller than the largest) and the other detections that
    count as another person (comparable size and a confident score)."""
    largest = max(b.area for b in boxes)
    main = max((b for b in boxes if b.area >= SECOND_FACE_AREA_RATIO * largest), key=lambda b: b.score)
    others = [
        b
        for b in boxes
        if b is not main and b.area >= SECOND_FACE_AREA_RATIO * main.area and b.score >= SECOND_FACE_MIN_SCORE
    ]
    return main, others
