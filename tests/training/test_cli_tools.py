"""``kitbooth generate | inspect | convert | eval`` end to end on the tiny model (in process)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.training.test_compose import HIDDEN, lora_state


def make_artifact_file(path, tiny_model_dir, *, kind="face", lora=True, hidden=HIDDEN):
    from training.artifact import ConceptArtifact, save_artifact

    n = 2 if kind == "face" else 1
    art = ConceptArtifact(
        kind=kind, method="pivotal" if lora else "ti", base_model="tiny", hidden_size=hidden,
        tokens=[f"<kb-{kind}-{i}>" for i in range(n)], embeddings=torch.randn(n, hidden),
        unet_lora=lora_state(100, tiny_model_dir) if lora else {}, text_lora={},
        rank=4 if lora else None, alpha=4.0 if lora else None, steps=10, created="2026-01-01T00:00:00Z",
        version="test",
    )
    save_artifact(art, path)
    return path


@pytest.fixture
def face_file(tmp_path, tiny_model_dir):
    return make_artifact_file(tmp_path / "face.safetensors", tiny_model_dir)


def kb(argv):
    from kitbooth.cli import main

    return main(argv)


def test_generate_end_to_end(tmp_path, tiny_model_dir, face_file, capsys):
    kit = make_artifact_file(tmp_path / "kit.safetensors", tiny_model_dir, kind="kit", lora=False)
    out = tmp_path / "out"
    rc = kb(["generate", "--concept", str(face_file), "--concept", str(kit), "--prompt", "at the stadium",
             "--out", str(out), "--base-model", str(tiny_model_dir), "--device", "cpu", "--seed", "7",
             "--count", "2", "--steps", "3", "--size", "64", "--kit-words", "home kit"])
    assert rc == 0
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["00-seed7.png", "01-seed8.png"]
    png = Image.open(io.BytesIO(files[0].read_bytes()))
    assert png.size == (64, 64)
    assert "<kb-face-0> <kb-face-1> person wearing <kb-kit-0> home kit, at the stadium" in png.text["parameters"]
    assert png.text["ai_generated"] == "true"


def test_inspect(tiny_model_dir, face_file, capsys):
    assert kb(["inspect", str(face_file), "--json", "--base-model", str(tiny_model_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "face" and info["method"] == "pivotal" and info["tokens"] == ["<kb-face-0>", "<kb-face-1>"]
    assert info["bytes"] == face_file.stat().st_size and info["rank"] == 4
    # full size: 2 vectors x 768 + SD 1.5's attention LoRA r4 (797,184 parameters, RECIPES.md)
    assert info["full_size_parameters"] == 2 * 768 + 797_184
    assert info["compatible"]["ok"] is True


def test_inspect_reports_incompatible(tmp_path, tiny_model_dir, capsys):
    wide = make_artifact_file(tmp_path / "wide.safetensors", tiny_model_dir, lora=False, hidden=768)
    assert kb(["inspect", str(wide), "--base-model", str(tiny_model_dir)]) == 1
    assert "NO:" in capsys.readouterr().out


def test_convert(tmp_path, face_file, capsys):
    out = tmp_path / "conv"
    assert kb(["convert", str(face_file), "--to", "diffusers", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed and all(Path(p).is_file() for p in printed)
    assert any(out.rglob("*.safetensors"))
    assert kb(["convert", str(face_file), "--to", "a1111", "--out", str(tmp_path / "a1111")]) == 0


def test_eval_end_to_end(tmp_path, tiny_model_dir, face_file, capsys):
    from tests.training.photos import astronaut

    photos = tmp_path / "held_out"
    photos.mkdir()
    astronaut().save(photos / "a.jpg")
    rc = kb(["eval", "--concept", str(face_file), "--photos", str(photos), "--base-model", str(tiny_model_dir),
             "--device", "cpu", "--k", "1", "--prompts", "2", "--steps", "2", "--size", "64", "--json",
             "--out", str(tmp_path / "eval")])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["images"] == 2 and rep["reference_faces"] == 1
    assert rep["artifact_bytes"] == face_file.stat().st_size and rep["parameters"] > 0
    assert rep["face_rate"] == 0.0  # the tiny model draws noise, not faces
    assert any("CLIP-T skipped" in n for n in rep["notes"]) or rep["clip_t_mean"] is not None
    assert len(list((tmp_path / "eval").glob("*.png"))) == 2
