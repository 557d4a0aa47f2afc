"""Evaluation pieces: the identity measure on a real face, the report, CLIP skipped cleanly."""

from __future__ import annotations

from PIL import Image, ImageOps

from tests.training.photos import astronaut
from training.eval import SAME_PERSON, ClipScorer, EvalReport, _identity, reference_descriptors


def test_identity_of_a_real_face_against_its_mirror():
    refs, note = reference_descriptors([astronaut()])
    assert note is None and len(refs) == 1
    dist, found = _identity(ImageOps.mirror(astronaut()), refs)
    assert found and dist < SAME_PERSON


def test_no_face_in_held_out_photos_is_a_note():
    refs, note = reference_descriptors([Image.new("RGB", (256, 256), "gray")])
    assert refs == [] and "no face" in note


def test_clip_model_missing_is_skipped(tmp_path):
    assert ClipScorer.load(tmp_path / "no-clip-here") is None


def test_report_format():
    r = EvalReport(kind="face", method="pivotal", tokens=["<kb-face-0>"], artifact_bytes=1234, parameters=10,
                   images=2, reference_faces=0, seconds=1.0, seconds_per_image=0.5, notes=["x"])
    text = r.format()
    assert "1234 bytes" in text and "CLIP-T: n/a" in text and "note: x" in text
    assert '"images": 2' in r.to_json()
