"""training.faces on real photos (scikit-image's astronaut, the one bundled real face): acceptance, each refusal,
crop geometry, kits and styles. The different-person rule is in test_face_identity.py."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.training import photos
from training import faces
from training.face_detection import dominant
from training.faces import (
    MAX_FACE_PHOTOS,
    MIN_FACE_PHOTOS,
    FaceBox,
    PhotoReport,
    PhotoVerdict,
    check_selfies,
    detect_faces,
    face_crop_box,
    prepare_reference_photos,
)
from training.images import load_image

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _models():
    faces.warm_up()


def only_verdict(report: PhotoReport) -> PhotoVerdict:
    assert len(report.verdicts) == 1
    return report.verdicts[0]


def diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


# ---- the happy path -------------------------------------------------------------------------------------------


def test_a_good_set_is_accepted_and_prepared():
    upload = photos.distinct_good_set()
    report = check_selfies(upload)
    assert [v.reason for v in report.verdicts] == [f"photo {i}: ok" for i in range(1, 6)]
    assert [v.filename for v in report.verdicts] == [name for name, _ in upload]
    assert report.ok() and report.ok(5) and not report.ok(6)
    assert [p.index for p in report.photos] == [1, 2, 3, 4, 5]
    for p in report.photos:
        assert p.image.mode == "RGB" and p.image.size == (512, 512)
        assert p.mask is not None and p.mask.mode == "L" and p.mask.size == (512, 512)
        assert p.caption == ""  # the trainer's face templates carry the words
    assert set(report.descriptors) == {1, 2, 3, 4, 5}
    assert all(d.shape == (128,) for d in report.descriptors.values())
    text = report.checklist().splitlines()
    assert len(text) == 6 and all(line.startswith("✅ photo") for line in text[:5])
    assert "ready" in text[-1]


def test_the_crop_is_centred_on_the_face_and_the_mask_covers_it():
    report = check_selfies([("a.jpg", photos.astronaut_jpeg())], resolution=256)
    (p,) = report.photos
    assert p.image.size == p.mask.size == (256, 256)
    # The face fills the middle of the crop: a detector run on the crop finds it near the centre, at about
    # 1/CROP_SCALE of the side.
    (box, *_) = detect_faces(p.image.resize((512, 512)))
    cx, cy = box.center
    assert abs(cx - 256) < 40 and abs(cy - 256) < 70
    assert 0.3 < box.width / 512 < 0.55
    m = np.asarray(p.mask)
    assert m[int(cy / 2), int(cx / 2)] == 255  # on the face
    assert m[0, 0] == 0 and m[-1, -1] == 0 and m[-1, 0] == 0  # corners are background
    assert 0.15 < (m > 127).mean() < 0.45  # a face-sized ellipse, not the whole crop


def test_spurious_second_detection_on_the_astronaut_does_not_reject_her():
    # dlib's HOG detector also fires (weakly, score < 0.2) on a face-sized region of her suit in the JPEG.
    boxes = detect_faces(load_image(photos.astronaut_jpeg()))
    assert len(boxes) >= 2
    assert boxes[0].score > 1.0 > boxes[1].score
    assert boxes[1].area > 0.5 * boxes[0].area
    assert only_verdict(check_selfies([("a.jpg", photos.astronaut_jpeg())])).accepted


def test_which_detections_count_as_a_second_person():
    main = FaceBox(100, 100, 200, 200, 1.6)
    weak_same_size = FaceBox(300, 300, 400, 400, 0.1)
    strong_same_size = FaceBox(300, 100, 395, 195, 1.2)
    strong_small = FaceBox(10, 10, 50, 50, 1.5)  # a face in the background: 16 % of the main face's area
    assert dominant([main, weak_same_size, strong_small]) == (main, [])
    assert dominant([weak_same_size, main]) == (main, [])  # the best score leads, not the order
    assert dominant([main, strong_same_size]) == (main, [strong_same_size])
    # A big low-score false positive does not hide the real face (it is not "much larger").
    assert dominant([FaceBox(0, 0, 150, 150, 0.05), main])[0] == main


@pytest.mark.parametrize(
    "make",
    [
        photos.astronaut_png,
        photos.astronaut_webp,
        lambda: photos.astronaut_jpeg(45),
        lambda: photos.rotated(8),
        lambda: photos.rotated(-12),
        lambda: photos.brighter(1.3),
        lambda: photos.brighter(0.65),
        photos.cropped,
        lambda: photos.scaled(0.8),
        lambda: photos.scaled(2.5),
        photos.mirrored,
        photos.cmyk_jpeg,
        photos.palette_png,
        photos.rgba_png,
        photos.single_frame_gif,
        lambda: photos.exif_rotated_jpeg(6),
        lambda: photos.exif_rotated_jpeg(8),
        lambda: photos.tiny_face(canvas=800, factor=0.9),
        lambda: photos.blurred(0.8),
    ],
    ids=[
        "png",
        "webp",
        "jpeg-q45",
        "rot+8",
        "rot-12",
        "brighter",
        "darker",
        "cropped",
        "scaled-0.8",
        "scaled-2.5",
        "mirrored",
        "cmyk",
        "palette",
        "rgba",
        "gif",
        "exif-6",
        "exif-8",
        "small-in-canvas",
        "slightly-soft",
    ],
)
def test_light_variations_are_accepted(make):
    report = check_selfies([("x", make())])
    assert only_verdict(report).reason == "photo 1: ok"
    assert report.photos[0].image.size == (512, 512)


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_selfie_is_uprighted_before_the_face_checks(orientation):
    upright = check_selfies([("a.jpg", photos.astronaut_jpeg())]).photos[0].image
    report = check_selfies([("b.jpg", photos.exif_rotated_jpeg(orientation))])
    assert only_verdict(report).accepted
    assert diff(report.photos[0].image, upright) < 8  # same crop, same orientation
    # The same pixels without the tag: the face lies on its side and the frontal detector finds nothing.
    sideways = only_verdict(check_selfies([("c.jpg", photos.sideways_jpeg_without_exif())]))
    assert sideways.reason.startswith("photo 1: no face found")


# ---- refusals -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (photos.no_face, "no face found — use a clear, front-facing photo"),
        (photos.cat, "no face found — use a clear, front-facing photo"),
        (photos.two_faces, "two people — crop it to just you"),
        (photos.tiny_face, "face too small — take a closer photo or crop it around your face"),
        (lambda: photos.blurred(2.5), "too blurry — use a sharp, well-lit photo"),
        (photos.empty, "the file is empty"),
        (photos.text_file, "not an image — send a JPEG or PNG photo"),
        (photos.too_small, "too small (200×150) — send a photo at least 256 px on each side"),
        (photos.decompression_bomb, "too large"),
        (lambda: photos.png_header_only(30_000, 30_000), "too large"),
        (photos.animated_gif, "animated images aren't supported — send a still photo"),
        (lambda: photos.truncated(photos.astronaut_jpeg()), "the file is damaged or incomplete"),
    ],
    ids=[
        "noise",
        "cat",
        "two-faces",
        "tiny-face",
        "blurred",
        "empty",
        "text",
        "too-small",
        "bomb",
        "huge",
        "animated",
        "truncated",
    ],
)
def test_each_refusal_has_its_human_reason(make, reason):
    report = check_selfies([("IMG_7.JPG", photos.astronaut_jpeg()), ("x.png", make())])
    first, second = report.verdicts
    assert first.accepted
    assert not second.accepted
    assert second.index == 2 and second.filename == "x.png"
    assert (
        second.reason == f"photo 2: {reason}"
        or second.reason.startswith("photo 2: ")
        and reason in second.reason
    )
    assert [p.index for p in report.photos] == [1]
    assert not report.ok()
    lines = report.checklist().splitlines()
    assert lines[1].startswith("❌ photo 2: ")
    assert f"at least {MIN_FACE_PHOTOS}" in lines[-1]


def test_two_faces_are_found_at_comparable_size():
    boxes = detect_faces(Image.open(io.BytesIO(photos.two_faces())))
    assert len(boxes) == 2 and min(b.score for b in boxes) > 1.0


def test_duplicates_are_dropped_and_name_the_original():
    original = photos.astronaut_jpeg()
    upload = [
        ("a.jpg", original),
        ("b.jpg", photos.rotated(8)),
        ("a-again.jpg", original),  # the very same bytes
        ("a.png", photos.astronaut_png()),  # re-encoded
        ("a-big.jpg", photos.scaled(2)),  # re-sized
        ("a-bright.jpg", photos.brighter(1.15)),  # re-edited
        ("b.webp", photos.encode(Image.open(io.BytesIO(photos.rotated(8))), "WEBP")),
    ]
    report = check_selfies(upload)
    reasons = [v.reason for v in report.verdicts]
    assert reasons == [
        "photo 1: ok",
        "photo 2: ok",
        "photo 3: same photo as photo 1 — skipped",
        "photo 4: same photo as photo 1 — skipped",
        "photo 5: same photo as photo 1 — skipped",
        "photo 6: same photo as photo 1 — skipped",
        "photo 7: same photo as photo 2 — skipped",
    ]
    assert [p.index for p in report.photos] == [1, 2]


def test_more_than_the_maximum_are_refused_unread():
    good = photos.distinct_good_set()
    upload = good + [
        (f"extra{i}.jpg", b"not even an image %d" % i) for i in range(MAX_FACE_PHOTOS + 2 - len(good))
    ]
    report = check_selfies(upload)
    assert len(report.verdicts) == MAX_FACE_PHOTOS + 2
    assert (
        report.verdicts[-1].reason == f"photo 12: too many photos — only the first {MAX_FACE_PHOTOS} are used"
    )
    assert report.verdicts[-2].reason.startswith("photo 11: too many photos")
    assert report.verdicts[MAX_FACE_PHOTOS - 1].reason == "photo 10: not an image — send a JPEG or PNG photo"
    assert len(report.photos) == 5 and report.ok()


def test_garbage_uploads_never_raise():
    rng = np.random.default_rng(7)
    jpeg = photos.astronaut_jpeg()
    upload = [
        (f"f{i}", rng.integers(0, 256, int(n), dtype=np.uint8).tobytes()) for i, n in enumerate([1, 9, 300])
    ]
    upload += [("cut", jpeg[: len(jpeg) // 3]), ("hdr", jpeg[:200])]
    report = check_selfies(upload)
    assert len(report.verdicts) == 5 and not any(v.accepted for v in report.verdicts)
    assert check_selfies([]).verdicts == [] and not check_selfies([]).ok()


# ---- crop geometry --------------------------------------------------------------------------------------------


def test_crop_box_stays_inside_the_image():
    box = FaceBox(10, 5, 110, 105, 1.0)  # a face in the top-left corner
    left, top, side = face_crop_box(box, (1000, 800))
    assert (left, top) == (0, 0) and side == 230
    box = FaceBox(880, 680, 980, 780, 1.0)  # bottom-right
    left, top, side = face_crop_box(box, (1000, 800))
    assert left + side == 1000 and top + side == 800


def test_crop_box_shrinks_to_fit_then_pads_only_when_it_must():
    box = FaceBox(100, 100, 300, 300, 1.0)  # face 200 px; CROP_SCALE wants 460
    assert face_crop_box(box, (400, 1000))[2] == 400  # shrunk to the narrow side (still ≥ 1.5 × the face)
    left, top, side = face_crop_box(box, (260, 1000))  # too narrow even for 1.5 × the face: pad
    assert side == 300 and left < 0


def test_crop_pads_a_face_filling_the_photo():
    # A face that fills the whole photo: the square must reach outside it, and is padded (edges repeated).
    face = photos.astronaut().crop((160, 60, 290, 200)).resize((300, 300))
    (box,) = detect_faces(face)
    left, top, side = face_crop_box(box, face.size)
    assert side > 300 and left < 0 and top < 0
    report = check_selfies([("close.jpg", photos.encode(face))])
    assert only_verdict(report).accepted
    crop = report.photos[0].image
    assert crop.size == (512, 512)
    edge = np.asarray(crop)[:4, :].astype(int)  # the padded top rows repeat the photo's top row
    assert np.abs(np.diff(edge, axis=0)).max() < 25


# ---- kits and styles --------------------------------------------------------------------------------------------


def test_reference_photos_skip_the_face_rules():
    wide = photos.encode(photos.astronaut().resize((900, 500)))
    upload = [
        ("Arsenal_home_kit.jpg", photos.cat()),  # no face: fine for a kit
        ("IMG_0001.JPG", wide),
        ("dup.png", photos.astronaut_png()),
        ("dup2.jpg", photos.astronaut_jpeg()),  # same picture re-encoded
        ("broken.png", photos.text_file()),
    ]
    report = prepare_reference_photos(upload, kind="kit", resolution=256)
    assert [v.accepted for v in report.verdicts] == [True, True, True, False, False]
    assert report.verdicts[3].reason == "photo 4: same photo as photo 3 — skipped"
    assert report.verdicts[4].reason == "photo 5: not an image — send a JPEG or PNG photo"
    assert all(p.image.size == (256, 256) and p.mask is None for p in report.photos)
    assert report.photos[0].caption == "arsenal home kit"
    assert report.photos[1].caption == ""  # a camera file name says nothing
    assert report.ok() and report.kind == "kit"
    style = prepare_reference_photos([("retro-poster.png", photos.astronaut_png())], kind="style")
    assert style.photos[0].caption == "retro poster"
    assert style.photos[0].image.size == (512, 512)
    assert "ready" in style.checklist().splitlines()[-1]


# ---- torch-free, thread-safe ------------------------------------------------------------------------------------


def test_the_bot_side_imports_stay_torch_free():
    code = (
        "import sys, training, training.faces, training.images\n"
        "heavy = {'torch', 'diffusers', 'transformers', 'accelerate', 'peft'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "assert 'dlib' not in sys.modules  # models load lazily, on first use\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_concurrent_checks_agree():
    upload = [("a.jpg", photos.astronaut_jpeg()), ("b.jpg", photos.two_faces())]
    results: list[list[str]] = []

    def run():
        results.append([v.reason for v in check_selfies(upload).verdicts])

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all(r == results[0] for r in results)
    assert results[0] == ["photo 1: ok", "photo 2: two people — crop it to just you"]
