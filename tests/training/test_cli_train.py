"""``kitbooth train`` end to end on the tiny model: photo report, refusal without output, slices and --resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kitbooth.cli import main
from tests.training.photos import astronaut, distinct_good_set, encode
from training.artifact import load_artifact


def _write(folder: Path, photos: list[tuple[str, bytes]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in photos:
        (folder / name).write_bytes(data)
    return folder


def _kit_photos() -> list[tuple[str, bytes]]:
    img = astronaut()
    return [("red_home_kit.png", encode(img.crop((0, 200, 300, 500)), "PNG")),
            ("red_home_kit_back.jpg", encode(img.crop((200, 250, 512, 512))))]


def _args(photos: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return ["train", "--photos", str(photos), "--out", str(out), "--base-model", str(model), "--resolution", "64",
            "--device", "cpu", "--dtype", "float32", "--no-progress", *extra]


def test_train_kit_writes_a_concept(tmp_path, tiny_model_dir, capsys):
    photos = _write(tmp_path / "kit", _kit_photos())
    out = tmp_path / "out" / "kit.safetensors"
    assert main(_args(photos, out, tiny_model_dir, "--kind", "kit", "--steps", "4")) == 0
    text = capsys.readouterr().out
    assert "red_home_kit.png: ok" in text and "red_home_kit_back.jpg: ok" in text and "wrote" in text
    art = load_artifact(out)
    assert (art.kind, art.method, art.steps, art.rank) == ("kit", "lora", 4, 4)
    assert art.base_model == str(tiny_model_dir) and art.hidden_size == 32
    assert not Path(str(out) + ".ckpt").exists()


def test_too_few_photos_exit_nonzero_without_writing(tmp_path, tiny_model_dir, capsys):
    photos = _write(tmp_path / "selfies", [("IMG_0001.JPG", encode(astronaut().crop((300, 300, 512, 512)))),
                                           ("notes.png", b"this is text, not a picture")])
    out = tmp_path / "face.safetensors"
    assert main(_args(photos, out, tiny_model_dir, "--kind", "face", "--steps", "2")) == 1
    captured = capsys.readouterr()
    assert "IMG_0001.JPG: " in captured.out and "notes.png: " in captured.out and "not written" in captured.err
    assert "photo 1" not in captured.out  # each photo is named by its file
    assert not out.exists()


@pytest.mark.slow
def test_face_slices_and_resume_equal_one_run(tmp_path, tiny_model_dir, capsys):
    photos = _write(tmp_path / "selfies", distinct_good_set())
    whole = tmp_path / "whole.safetensors"
    assert main(_args(photos, whole, tiny_model_dir, "--kind", "face", "--steps", "6")) == 0
    assert "ready" in capsys.readouterr().out

    sliced = tmp_path / "sliced.safetensors"
    ckpt = Path(str(sliced) + ".ckpt")
    assert main(_args(photos, sliced, tiny_model_dir, "--kind", "face", "--steps", "6", "--slice-steps", "4")) == 3
    assert ckpt.is_file() and not sliced.exists()
    assert main(_args(photos, sliced, tiny_model_dir, "--kind", "face", "--steps", "6", "--resume")) == 0
    assert "resuming" in capsys.readouterr().out and not ckpt.exists()

    a, b = load_artifact(whole), load_artifact(sliced)
    assert a.method == "pivotal" and a.tokens == ["<kb-face-0>", "<kb-face-1>"] and a.steps == b.steps == 6
    torch.testing.assert_close(a.embeddings, b.embeddings)
    for k in a.unet_lora:
        torch.testing.assert_close(a.unet_lora[k], b.unet_lora[k])
