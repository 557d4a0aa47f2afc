"""Selfie checks and photo preparation, with dlib. Torch-free: the bot imports this module.

``check_selfies`` turns an upload of selfies into a ``PhotoReport``: one ``PhotoVerdict`` per photo (accepted or
refused, with a short human reason) and, for the accepted ones, a square face crop at the training resolution
with a feathered face mask for masked loss. It runs in a few hundred ms per photo on one CPU core, so the bot
can show the report before any GPU time is spent.

Rules, in order, per photo: decodable (``training.images.load_image``); not a byte-identical copy; exactly one
dominant face; the face big enough; not blurry; not a near-identical copy of an earlier photo. Then across the
photos: all the same person (``find_identity_outliers``, the seam where the rule is tested with synthetic
descriptors, since only one real face photo ships with the test dependencies).

Models (dlib's HOG frontal face detector, the 5-point shape predictor and the ResNet face-recognition model from
``face_recognition_models``) are loaded once, lazily, under a lock; inference is serialised by a lock too, as
dlib's network object is not safe to share between threads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from training.images import ImageRejected, caption_from_filename, center_square, load_image

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

MIN_FACE_PHOTOS = 4
MAX_FACE_PHOTOS = 10
MAX_REFERENCE_PHOTOS = 20

# Same person when the 128-d descriptors are closer than this (dlib's usual threshold).
IDENTITY_THRESHOLD = 0.6
# Detection runs on a copy whose longest side is at most this (faces stay ≥ 40 px there for any usable photo).
DETECT_MAX_SIDE = 800
# A second detection counts as a second person only if it is this large relative to the main face (by area)
# and the detector is this sure of it. The HOG detector fires weakly (score < 0.2 without upsampling) on a
# region of the astronaut's suit the same size as her face; two real faces score > 1.
SECOND_FACE_AREA_RATIO = 0.3
SECOND_FACE_MIN_SCORE = 0.5
# The face (dlib's box: brows to chin) must be at least this many pixels across in the photo, and this
# fraction of the photo's shorter side.
MIN_FACE_PX = 64
MIN_FACE_FRACTION = 0.07
# Sharpness: variance of the Laplacian over the variance of the intensities, on the face resized to 64×64.
# Sharp faces measure 0.2-0.3; a Gaussian blur of radius 1 px on a 90 px face 0.075, radius 2 px 0.02.
BLUR_SIZE = 64
BLUR_MIN_SHARPNESS = 0.04
# Near-identical photos: 256-bit difference hash of the whole (uprighted) photo within this many bits.
# Re-encoding, rescaling and brightness changes measure 0-10 bits; a 4° rotation or a re-framing 50+.
DUPLICATE_HASH_BITS = 20
# Square crop: side = this × the face box side, centred a little above the box centre (hair in, chin in).
CROP_SCALE = 2.3
CROP_SHIFT_UP = 0.12

_OK = "ok"
_NO_FACE = "no face found — use a clear, front-facing photo"
_TWO_PEOPLE = "two people — crop it to just you"
_TOO_SMALL = "face too small — take a closer photo or crop it around your face"
_BLURRY = "too blurry — use a sharp, well-lit photo"
_DIFFERENT = "looks like a different person from the others"
_TOO_MANY = "too many photos — only the first {n} are used"


# ---- public data ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhotoVerdict:
    index: int  # 1-based position in the upload
    filename: str
    accepted: bool
    reason: str  # "photo 3: no face found — ..." or "photo 1: ok"


@dataclass
class PreparedPhoto:
    index: int  # 1-based position in the upload
    image: Image.Image  # RGB, resolution × resolution
    mask: Image.Image | None  # "L", same size, 255 on the face, feathered; None for kits and styles
    # Words describing this photo, without the trigger ("arsenal home kit"), or "" when nothing is known. The
    # trainer appends them to its caption templates for the kind (training.data.expand_captions:
    # "a photo of a {} football kit, arsenal home kit"); a caption holding "{}" or "{trigger}" is used as is.
    caption: str


@dataclass
class PhotoReport:
    verdicts: list[PhotoVerdict]
    photos: list[PreparedPhoto]
    min_photos: int = MIN_FACE_PHOTOS
    kind: Literal["face", "kit", "style"] = "face"
    descriptors: dict[int, np.ndarray] = field(default_factory=dict, repr=False)  # index → 128-d, faces only

    def ok(self, min_photos: int | None = None) -> bool:
        """Enough photos were accepted to train (``min_photos`` defaults to the report's own minimum)."""
        return len(self.photos) >= (self.min_photos if min_photos is None else min_photos)

    @property
    def accepted(self) -> list[PhotoVerdict]:
        return [v for v in self.verdicts if v.accepted]

    @property
    def refused(self) -> list[PhotoVerdict]:
        return [v for v in self.verdicts if not v.accepted]

    def checklist(self) -> str:
        """Short multi-line text: ✅/❌ per photo, then one line that says what to do next."""
        lines = [f"{'✅' if v.accepted else '❌'} {v.reason}" for v in self.verdicts]
        n = len(self.photos)
        if self.ok():
            lines.append(f"{n} photo{'s' if n != 1 else ''} ready — training can start.")
        elif self.kind == "face":
            lines.append(
                f"Only {n} usable photo{'s' if n != 1 else ''} — send at least {self.min_photos} clear, "
                f"front-facing selfies of just you (up to {MAX_FACE_PHOTOS})."
            )
        else:
            lines.append(f"Only {n} usable photo{'s' if n != 1 else ''} — send at least {self.min_photos}.")
        return "\n".join(lines)


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


# ---- models -----------------------------------------------------------------------------------------------------


class _Models:
    """dlib's three models, loaded on first use (about 0.4 s), shared by every thread."""

    _load_lock = threading.Lock()
    _infer_lock = threading.Lock()
    _loaded: tuple[Any, Any, Any] | None = None

    @classmethod
    def get(cls) -> tuple[Any, Any, Any]:
        if cls._loaded is None:
            with cls._load_lock:
                if cls._loaded is None:
                    cls._loaded = cls._load()
        return cls._loaded

    @staticmethod
    def _load() -> tuple[Any, Any, Any]:
        import dlib

        started = time.perf_counter()
        models = _models_dir()
        detector = dlib.get_frontal_face_detector()
        predictor = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        encoder = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
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
    _Models.get()


# ---- detection, descriptors, sharpness, hashes ------------------------------------------------------------------


def _work_copy(img: Image.Image) -> tuple[np.ndarray, float]:
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


def _detect(work: np.ndarray) -> list[tuple[Any, float]]:
    """dlib rectangles with scores ≥ 0 on the work copy: without upsampling first (fast, and the most
    discriminating), then with one upsampling for faces under 80 px. Best score first."""
    detector, _, _ = _Models.get()
    for upsample in (0, 1):
        rects, scores, _ = detector.run(work, upsample, 0.0)
        found = sorted(zip(rects, scores, strict=True), key=lambda rs: -rs[1])
        if found:
            return found
    return []


def _to_box(rect: Any, score: float, factor: float) -> FaceBox:
    return FaceBox(rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1, float(score)).scaled(factor)


def detect_faces(img: Image.Image) -> list[FaceBox]:
    """Every face the detector is reasonably sure of, in photo pixels, best score first."""
    work, factor = _work_copy(img)
    with _Models._infer_lock:
        found = _detect(work)
    return [_to_box(r, s, factor) for r, s in found]


def _dominant(boxes: list[FaceBox]) -> tuple[FaceBox, list[FaceBox]]:
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


def _descriptor(work: np.ndarray, rect: Any) -> np.ndarray:
    _, predictor, encoder = _Models.get()
    shape = predictor(work, rect)
    return np.asarray(encoder.compute_face_descriptor(work, shape), dtype=np.float64)


def face_descriptor(img: Image.Image) -> np.ndarray | None:
    """The 128-d descriptor of the dominant (largest, confidently detected) face in ``img``, for evaluation; None
    when there is no face."""
    work, _ = _work_copy(img)
    with _Models._infer_lock:
        found = _detect(work)
        if not found:
            return None
        boxes = [_to_box(r, s, 1.0) for r, s in found]
        main, _ = _dominant(boxes)  # the same choice as the selfie checks (a weak false positive never wins)
        return _descriptor(work, found[boxes.index(main)][0])


def descriptor_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


def find_identity_outliers(
    descriptors: Sequence[np.ndarray], threshold: float = IDENTITY_THRESHOLD
) -> set[int]:
    """Positions (0-based) of the descriptors that are not the consensus person.

    The consensus is the medoid's neighbourhood: the descriptor with the most others within ``threshold`` (ties:
    the smallest mean distance), plus every descriptor within ``threshold`` of it. When that group is not a strict
    majority (say two photos of one person and two of another) nobody can tell which person is the user, and every
    position is returned. Pure function: this is the seam where the rule is tested with synthetic descriptors.
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


def sharpness(img: Image.Image, box: FaceBox) -> float:
    """Variance of the Laplacian over the variance of the intensities of the face, resized to 64×64: a
    size- and contrast-independent measure of fine detail (0 flat or very blurred, 0.2-0.3 a sharp face)."""
    left, top = max(0, round(box.left)), max(0, round(box.top))
    right, bottom = min(img.width, round(box.right)), min(img.height, round(box.bottom))
    if right - left < 2 or bottom - top < 2:
        return 0.0
    crop = img.crop((left, top, right, bottom))  # clamped: padding would add false edges
    g = np.asarray(
        crop.convert("L").resize((BLUR_SIZE, BLUR_SIZE), Image.Resampling.BILINEAR), dtype=np.float64
    )
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    var = float(g.var())
    return float(lap.var()) / var if var > 1e-6 else 0.0


def image_hash(img: Image.Image) -> np.ndarray:
    """256-bit difference hash of the whole image (bool array): stable under re-encoding, resizing and
    brightness changes; different after a crop, a rotation or a mirror."""
    g = np.asarray(img.convert("L").resize((17, 16), Image.Resampling.BILINEAR), dtype=np.int16)
    return (g[:, 1:] > g[:, :-1]).ravel()


def _aspect(img: Image.Image) -> float:
    return math.log(img.width / img.height)


# ---- crop and mask ----------------------------------------------------------------------------------------------


def face_crop_box(box: FaceBox, size: tuple[int, int]) -> tuple[int, int, int]:
    """(left, top, side) of the square training crop around ``box`` in an image of ``size``.

    The square is CROP_SCALE × the face, centred a little above the face centre, shrunk to fit the image when
    that keeps a margin of at least 1.5 × the face, and shifted to stay inside the image. Only when the image is
    too narrow even for that does the square reach past an edge (``_crop_square`` pads by replicating edges).
    """
    width, height = size
    face_side = max(box.width, box.height)
    side = CROP_SCALE * face_side
    fit = min(width, height)
    if side > fit:
        side = max(fit, 1.5 * face_side)
    side_i = max(1, round(side))
    cx, cy = box.center
    cy -= CROP_SHIFT_UP * face_side

    def place(center: float, extent: int) -> int:
        start = round(center - side_i / 2)
        if side_i <= extent:
            return min(max(start, 0), extent - side_i)
        return round((extent - side_i) / 2)

    return place(cx, width), place(cy, height), side_i


def _crop_square(img: Image.Image, left: int, top: int, side: int) -> Image.Image:
    if left >= 0 and top >= 0 and left + side <= img.width and top + side <= img.height:
        return img.crop((left, top, left + side, top + side))
    arr = np.asarray(img)
    pad = (
        (max(0, -top), max(0, top + side - img.height)),
        (max(0, -left), max(0, left + side - img.width)),
        (0, 0),
    )
    arr = np.pad(arr, pad, mode="edge")
    x0, y0 = left + pad[1][0], top + pad[0][0]
    return Image.fromarray(arr[y0 : y0 + side, x0 : x0 + side])


def face_mask(
    box: FaceBox, crop_left: float, crop_top: float, crop_side: float, resolution: int
) -> Image.Image:
    """A feathered ellipse over the face (forehead and some hair included), as an "L" image of
    ``resolution``² aligned with the crop: 255 on the face, 0 far from it."""
    s = resolution / crop_side
    cx, _ = box.center
    w = box.width
    h = box.height
    left = (cx - 0.68 * w - crop_left) * s
    right = (cx + 0.68 * w - crop_left) * s
    top = (box.top - 0.45 * h - crop_top) * s
    bottom = (box.bottom + 0.12 * h - crop_top) * s
    mask = Image.new("L", (resolution, resolution), 0)
    ImageDraw.Draw(mask).ellipse((left, top, right, bottom), fill=255)
    return mask.filter(ImageFilter.GaussianBlur(radius=max(1.0, 0.03 * resolution)))


def _prepare_face(img: Image.Image, box: FaceBox, resolution: int) -> tuple[Image.Image, Image.Image]:
    left, top, side = face_crop_box(box, img.size)
    crop = _crop_square(img, left, top, side)
    if crop.size != (resolution, resolution):
        crop = crop.resize((resolution, resolution), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return crop, face_mask(box, left, top, side, resolution)


# ---- the checks -------------------------------------------------------------------------------------------------


@dataclass
class _Candidate:
    index: int
    filename: str
    image: Image.Image
    box: FaceBox
    descriptor: np.ndarray
    hash: np.ndarray
    aspect: float


def _analyse(img: Image.Image) -> tuple[str | None, FaceBox | None, np.ndarray | None]:
    """(refusal reason or None, main face box in photo pixels, descriptor) for one decoded photo."""
    work, factor = _work_copy(img)
    with _Models._infer_lock:
        found = _detect(work)
        if not found:
            return _NO_FACE, None, None
        boxes = [_to_box(r, s, factor) for r, s in found]
        main, others = _dominant(boxes)
        if others:
            return _TWO_PEOPLE, main, None
        face_side = max(main.width, main.height)
        if face_side < MIN_FACE_PX or face_side < MIN_FACE_FRACTION * min(img.size):
            return _TOO_SMALL, main, None
        if sharpness(img, main) < BLUR_MIN_SHARPNESS:
            return _BLURRY, main, None
        rect = found[boxes.index(main)][0]
        return None, main, _descriptor(work, rect)


def check_selfies(photos: Sequence[tuple[str, bytes]], *, resolution: int = 512) -> PhotoReport:
    """Check an upload of selfies (``(filename, bytes)`` in upload order) and prepare the accepted ones.

    Never raises for bad photos: each gets a refused verdict with a reason. Photos past MAX_FACE_PHOTOS are
    refused unread. The report's ``photos`` hold a square face crop of ``resolution``² and its face mask.
    """
    started = time.perf_counter()
    verdicts: dict[int, PhotoVerdict] = {}
    candidates: list[_Candidate] = []
    seen_bytes: dict[str, int] = {}

    def refuse(index: int, filename: str, reason: str) -> None:
        verdicts[index] = PhotoVerdict(index, filename, False, f"photo {index}: {reason}")

    for index, (filename, data) in enumerate(photos, start=1):
        if index > MAX_FACE_PHOTOS:
            refuse(index, filename, _TOO_MANY.format(n=MAX_FACE_PHOTOS))
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen_bytes and data:
            refuse(index, filename, f"same photo as photo {seen_bytes[digest]} — skipped")
            continue
        seen_bytes.setdefault(digest, index)
        try:
            img = load_image(data, name=filename)
        except ImageRejected as e:
            refuse(index, filename, e.reason)
            continue
        reason, box, descriptor = _analyse(img)
        if reason is not None or box is None or descriptor is None:
            refuse(index, filename, reason or _NO_FACE)
            continue
        candidate = _Candidate(index, filename, img, box, descriptor, image_hash(img), _aspect(img))
        twin = _duplicate_of(candidate, candidates)
        if twin is not None:
            refuse(index, filename, f"same photo as photo {twin} — skipped")
            continue
        candidates.append(candidate)

    outliers = find_identity_outliers([c.descriptor for c in candidates])
    prepared: list[PreparedPhoto] = []
    descriptors: dict[int, np.ndarray] = {}
    for position, c in enumerate(candidates):
        if position in outliers:
            refuse(c.index, c.filename, _DIFFERENT)
            continue
        image, mask = _prepare_face(c.image, c.box, resolution)
        prepared.append(PreparedPhoto(c.index, image, mask, ""))
        descriptors[c.index] = c.descriptor
        verdicts[c.index] = PhotoVerdict(c.index, c.filename, True, f"photo {c.index}: {_OK}")

    report = PhotoReport(
        verdicts=[verdicts[i] for i in sorted(verdicts)],
        photos=prepared,
        min_photos=MIN_FACE_PHOTOS,
        kind="face",
        descriptors=descriptors,
    )
    log.info(
        "selfies checked: %d photos, %d accepted in %.2f s",
        len(photos),
        len(prepared),
        time.perf_counter() - started,
    )
    return report


def _duplicate_of(candidate: _Candidate, earlier: Sequence[_Candidate]) -> int | None:
    for other in earlier:
        if (
            abs(candidate.aspect - other.aspect) < 0.05
            and int(np.count_nonzero(candidate.hash != other.hash)) <= DUPLICATE_HASH_BITS
        ):
            return other.index
    return None


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
    verdicts: list[PhotoVerdict] = []
    prepared: list[PreparedPhoto] = []
    seen: list[tuple[int, np.ndarray, float]] = []
    seen_bytes: dict[str, int] = {}
    for index, (filename, data) in enumerate(photos, start=1):

        def refuse(reason: str, index: int = index, filename: str = filename) -> None:
            verdicts.append(PhotoVerdict(index, filename, False, f"photo {index}: {reason}"))

        if index > MAX_REFERENCE_PHOTOS:
            refuse(_TOO_MANY.format(n=MAX_REFERENCE_PHOTOS))
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen_bytes and data:
            refuse(f"same photo as photo {seen_bytes[digest]} — skipped")
            continue
        seen_bytes.setdefault(digest, index)
        try:
            img = load_image(data, name=filename)
        except ImageRejected as e:
            refuse(e.reason)
            continue
        h, a = image_hash(img), _aspect(img)
        twin = next(
            (
                i
                for i, oh, oa in seen
                if abs(a - oa) < 0.05 and int(np.count_nonzero(h != oh)) <= DUPLICATE_HASH_BITS
            ),
            None,
        )
        if twin is not None:
            refuse(f"same photo as photo {twin} — skipped")
            continue
        seen.append((index, h, a))
        caption = caption_from_filename(filename)
        prepared.append(PreparedPhoto(index, center_square(img, resolution), None, caption))
        verdicts.append(PhotoVerdict(index, filename, True, f"photo {index}: {_OK}"))
    return PhotoReport(verdicts=verdicts, photos=prepared, min_photos=1, kind=kind)
