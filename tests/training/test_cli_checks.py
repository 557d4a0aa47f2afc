"""The CLI refuses bad input by class: one line on stderr, exit 1, no traceback, nothing written, no hang.

Variants of every class (paths that are a FIFO, a device, a folder where a file goes, a file where a folder goes;
numbers out of range or not finite; unusable ``--resume`` checkpoints) are run through the real ``kitbooth``
entry point — in process (``main``) for speed, and in a subprocess with a timeout where a hang is the risk
(FIFOs). Also: ``kitbooth import`` turns a community file into a KitBooth concept and refuses a face, and
``inspect`` on a community file says how to import it.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save

from kitbooth.cli import main
from tests.training.photos import astronaut, encode
from training import checkpoint as ckpt
from training.artifact import load_artifact
from training.concept_layouts import kohya_name

DEV = "/dev/null"
TO_K = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"


@pytest.fixture
def ws(tmp_path):
    """A workspace: a photos folder, a file, a FIFO, an SD 1.5 kohya LoRA and embedding (community files)."""
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(encode(astronaut(), "PNG"))
    (tmp_path / "file.txt").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    name = kohya_name(TO_K, text=False)
    (tmp_path / "lora.safetensors").write_bytes(save({
        f"{name}.lora_down.weight": np.full((4, 768), 0.01, np.float16),
        f"{name}.lora_up.weight": np.full((320, 4), 0.01, np.float16), f"{name}.alpha": np.array(4.0, np.float16)}))
    (tmp_path / "emb.safetensors").write_bytes(save({"emb_params": np.zeros((2, 768), np.float16)}))
    return tmp_path


def refused(argv: list[str], capsys) -> str:
    """Run ``kitbooth argv`` in process: exit 1 and exactly one line on stderr, no traceback; returns it."""
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own refusals (one_line_errors)
        rc = exc.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("loading ")]
    assert rc == 1, (argv, rc, err)
    assert len(lines) == 1 and "Traceback" not in err, (argv, err)
    return lines[0]


def train(ws: Path, *extra: str, out: str | None = None) -> list[str]:
    return ["train", "--photos", str(ws / "photos"), "--kind", "kit", "--out", out or str(ws / "out.safetensors"),
            "--no-progress", *extra]


# --- paths -------------------------------------------------------------------------------------------------
def _path_cases(ws: Path) -> list[tuple[list[str], str]]:
    out = str(ws / "out.safetensors")
    gen = ["generate", "--prompt", "me", "--out", str(ws / "gen")]
    return [
        (train(ws)[:2] + [DEV] + train(ws)[3:], "is a device, not a folder"),
        (train(ws)[:2] + [str(ws / "file.txt")] + train(ws)[3:], "is a file, not a folder"),
        (train(ws)[:2] + [str(ws / "missing")] + train(ws)[3:], "no such folder"),
        (train(ws, out=str(ws / "photos")), "is a folder; a file goes there"),
        (train(ws, out=str(ws / "file.txt" / "x.safetensors")), "part of that path is a file"),
        (train(ws, out=DEV), "is a device; a file goes there"),
        (train(ws, "--base-model", DEV), "is a device"),
        (train(ws, "--base-model", "./no/such/model"), "no such model"),
        ([*gen, "--concept", str(ws / "photos")], "is a folder, not a file"),
        ([*gen, "--concept", DEV], "is a device, not a file"),
        ([*gen, "--concept", str(ws / "nope.safetensors")], "no such file"),
        (["generate", "--prompt", "me", "--out", str(ws / "file.txt"), "--concept", str(ws / "emb.safetensors")],
         "is a file; a folder goes there"),
        (["inspect", str(ws / "photos")], "is a folder, not a file"),
        (["convert", str(ws / "emb.safetensors"), "--to", "a1111", "--out", str(ws / "file.txt")],
         "a folder goes there"),
        (["eval", "--concept", str(ws / "emb.safetensors"), "--photos", str(ws / "file.txt")], "not a folder"),
        (["import", str(ws / "photos"), "--kind", "kit", "--out", out], "is a folder, not a file"),
        (["import", str(ws / "emb.safetensors"), "--kind", "kit", "--out", str(ws / "photos")], "a file goes there"),
    ]


def test_every_path_class_is_refused_in_one_line(ws, capsys):
    for argv, needle in _path_cases(ws):
        line = refused(argv, capsys)
        assert needle in line, (argv, line)
        assert not (ws / "out.safetensors").exists() and not (ws / "gen").exists()


@pytest.mark.parametrize("argv", [
    ["train", "--photos", "{fifo}", "--kind", "kit", "--out", "{ws}/out.safetensors"],
    ["train", "--photos", "{ws}/photos", "--kind", "kit", "--out", "{fifo}"],
    ["generate", "--prompt", "me", "--out", "{ws}/gen", "--concept", "{fifo}"],
    ["inspect", "{fifo}"],
    ["import", "{fifo}", "--kind", "style", "--out", "{ws}/out.safetensors"],
], ids=["train photos", "train out", "generate concept", "inspect", "import"])
def test_a_fifo_never_hangs_the_real_cli(ws, argv):
    args = [a.format(ws=ws, fifo=ws / "fifo") for a in argv]
    r = subprocess.run([sys.executable, "-m", "kitbooth.cli", *args], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "KITBOOTH_DATA_DIR": str(ws / "data")})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "pipe (FIFO)" in lines[0] and "Traceback" not in r.stderr, r
    assert not (ws / "out.safetensors").exists() and not (ws / "gen").exists()


# --- numbers -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra,needle", [
    (["--steps", "0"], "--steps 0 is out of range"), (["--steps", "999999"], "use 1 to 5000"),
    (["--steps", "abc"], "invalid int value"), (["--resolution", "63"], "in steps of 8"),
    (["--resolution", "4096"], "--resolution 4096 is out of range"), (["--rank", "0"], "--rank 0"),
    (["--rank", "257"], "use 1 to 256"), (["--batch-size", "0"], "--batch-size 0"), (["--seed", "-1"], "--seed"),
    (["--checkpoint-every", "0"], "--checkpoint-every"), (["--slice-steps", "0"], "--slice-steps"),
])
def test_train_numbers_out_of_range(ws, capsys, extra, needle):
    assert needle in refused(train(ws, *extra), capsys)
    assert not (ws / "out.safetensors").exists()


@pytest.mark.parametrize("extra,needle", [
    (["--weight", "nan"], "--weight nan is not a finite number"), (["--weight", "inf"], "not a finite number"),
    (["--weight", "9"], "--weight 9 is out of range"), (["--guidance", "nan"], "--guidance nan is not a finite"),
    (["--guidance", "-1"], "--guidance -1 is out of range"), (["--guidance", "31"], "use 0 to 30"),
    (["--steps", "0"], "--steps 0"), (["--steps", "101"], "use 1 to 100"), (["--size", "100"], "in steps of 8"),
    (["--size", "2048"], "--size 2048"), (["--count", "5"], "invalid choice"), (["--seed", "-5"], "--seed -5"),
])
def test_generate_numbers_out_of_range(ws, capsys, extra, needle):
    argv = ["generate", "--prompt", "me", "--out", str(ws / "gen"), "--concept", str(ws / "emb.safetensors"), *extra]
    assert needle in refused(argv, capsys)
    assert not (ws / "gen").exists()


def test_a_missing_option_is_one_line_too(ws, capsys):
    assert "--kind" in refused(["train", "--photos", str(ws / "photos"), "--out", str(ws / "o.safetensors")], capsys)


# --- --resume ------------------------------------------------------------------------------------------------
def _checkpoint(**override) -> bytes:
    from training.config import default_config

    state = {"config": default_config("kit").to_json(), "step": 1, "params": {"w": torch.zeros(2)},
             "optimizer": {}, "scaler": {}, "generator": torch.zeros(4, dtype=torch.uint8), "rng": {},
             "latents": torch.zeros(1, 4, 8, 8), "weights": None, "sample_image": [], "captions": "[]"}
    state.update(override)
    return ckpt.dumps({k: v for k, v in state.items() if v is not ...})


class Gadget:  # a pickled object: torch's safe loader refuses it (and advises loading unsafely: never relayed)
    pass


def _pickled_object() -> bytes:
    buf = io.BytesIO()
    torch.save({"format": ckpt.FORMAT, "gadget": Gadget()}, buf)
    return buf.getvalue()


@pytest.mark.parametrize("data,why", [
    (lambda: _checkpoint()[:-200], "not a readable KitBooth training checkpoint"),
    (lambda: b"", "not a readable"),
    (lambda: pickle.dumps({"hello": 1}), "not a readable"),
    (_pickled_object, "not a readable"),
    (lambda: torch_save({"model": torch.zeros(2)}), "not a readable"),  # another program's checkpoint
    (lambda: _checkpoint(params=...), "it lacks params"),
    (lambda: _checkpoint(config="{not json"), "training settings are unreadable"),
    (lambda: _checkpoint(config=json.dumps({**json.loads(_cfg()), "rank": 8})), "made with other settings: rank"),
    (lambda: _checkpoint(step=10**6), "outside"),
], ids=["truncated", "empty", "plain pickle", "pickled object", "foreign", "missing field", "bad config",
        "other settings", "step"])
def test_an_unusable_checkpoint_says_how_to_start_fresh(ws, capsys, data, why):
    ck = ws / "out.safetensors.ckpt"
    ck.write_bytes(data())
    line = refused(train(ws, "--resume"), capsys)
    assert why in line and "delete it to start fresh, or run without --resume" in line, line
    assert "weights_only" not in line and "unsafe" not in line.lower() and "torch" not in line.lower()
    assert not (ws / "out.safetensors").exists()


def _cfg() -> str:
    from training.config import default_config

    return default_config("kit").to_json()


def torch_save(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_a_fifo_checkpoint_is_refused_without_reading_it(ws, capsys):
    os.mkfifo(ws / "out.safetensors.ckpt")
    assert "pipe (FIFO)" in refused(train(ws, "--resume"), capsys)


# --- photos, import, inspect -------------------------------------------------------------------------------
def test_skipped_files_and_each_photo_are_named(ws, capsys):
    (ws / "photos" / "notes.txt").write_text("not a photo")
    (ws / "photos" / "IMG_0042.JPG").write_bytes(b"not really a jpeg")
    rc = main(["train", "--photos", str(ws / "photos"), "--kind", "face", "--out", str(ws / "me.safetensors")])
    out = capsys.readouterr().out
    assert rc == 1 and not (ws / "me.safetensors").exists()
    assert "skipped 1 file" in out and "notes.txt" in out
    assert "IMG_0042.JPG: " in out and "a.png: " in out and "photo 1" not in out


def test_import_makes_a_kitbooth_concept_of_a_community_file(ws, capsys):
    out = ws / "arsenal.safetensors"
    assert main(["import", str(ws / "lora.safetensors"), "--kind", "kit", "--out", str(out),
                 "--trigger", "arsenalkit"]) == 0
    art = load_artifact(out)
    assert (art.kind, art.method, art.tokens, art.rank) == ("kit", "imported", ["arsenalkit"], 4)
    assert "/" not in art.base_model or not art.base_model.startswith("/")  # a hub id or a file name
    assert main(["import", str(ws / "emb.safetensors"), "--kind", "style", "--out", str(ws / "s.safetensors")]) == 0
    assert load_artifact(ws / "s.safetensors").kind == "style"


def test_import_refuses_a_face_and_a_bad_trigger(ws, capsys):
    face = ws / "renamed.safetensors"
    face.write_bytes(save({"emb_params": np.zeros((2, 768), np.float16)}, metadata={"kitbooth_kind": "face"}))
    assert "face can only be used by the person" in refused(
        ["import", str(face), "--kind", "kit", "--out", str(ws / "k.safetensors")], capsys)
    assert "one word" in refused(["import", str(ws / "lora.safetensors"), "--kind", "kit", "--out",
                                  str(ws / "k.safetensors"), "--trigger", "two words"], capsys)
    assert "invalid choice" in refused(["import", str(face), "--kind", "face", "--out", str(ws / "k.safetensors")],
                                       capsys)
    assert not (ws / "k.safetensors").exists()


def test_inspect_and_convert_on_a_community_file_say_to_import_it(ws, capsys):
    assert main(["inspect", str(ws / "lora.safetensors")]) == 0
    assert "kitbooth import" in capsys.readouterr().err
    line = refused(["convert", str(ws / "lora.safetensors"), "--to", "kohya", "--out", str(ws / "conv")], capsys)
    assert "kitbooth import" in line and not (ws / "conv").exists()
