"""``kitbooth generate --best-of N --photos DIR --face-detail`` and ``kitbooth eval --levers`` end to end on the
tiny model (in process). The tiny model draws noise, not faces: every candidate ranks as face-less (kept in seed
order), the face-detail pass finds nothing to redraw, and the lever report still has every arm."""

from __future__ import annotations

import io
import json

from PIL import Image

from tests.training.test_cli_tools import face_file, kb  # noqa: F401 - face_file is a fixture


def _selfies(tmp_path):
    from tests.training.photos import astronaut

    d = tmp_path / "selfies"
    d.mkdir()
    astronaut().save(d / "a.jpg")
    return d


def test_generate_best_of_records_the_lever_in_each_png(tmp_path, tiny_model_dir, face_file, capsys):  # noqa: F811
    out = tmp_path / "out"
    rc = kb(["generate", "--concept", str(face_file), "--prompt", "at the stadium", "--out", str(out),
             "--base-model", str(tiny_model_dir), "--device", "cpu", "--seed", "7", "--count", "2", "--steps", "2",
             "--size", "64", "--best-of", "4", "--photos", str(_selfies(tmp_path)), "--face-detail"])
    assert rc == 0
    err = capsys.readouterr().err
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["00-seed7.png", "01-seed8.png"]  # no faces: seed order kept
    for f in files:
        params = Image.open(io.BytesIO(f.read_bytes())).text["parameters"]
        assert "Best of: 4" in params and "Likeness" not in params and params.rstrip().split(", ")[-1].startswith(
            "Version: KitBooth")
    assert "seed 7: no face found" in err


def test_generate_best_of_needs_selfies_to_rank_by(tmp_path, tiny_model_dir, face_file, capsys):  # noqa: F811
    rc = kb(["generate", "--concept", str(face_file), "--prompt", "x", "--out", str(tmp_path / "o"),
             "--base-model", str(tiny_model_dir), "--count", "2", "--best-of", "4"])
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert "--photos" in err and len(err.splitlines()) == 1 and not (tmp_path / "o").exists()
    rc = kb(["generate", "--concept", str(face_file), "--prompt", "x", "--out", str(tmp_path / "o"),
             "--base-model", str(tiny_model_dir), "--count", "2", "--best-of", "2", "--photos", str(tmp_path)])
    assert rc == 1 and "--best-of" in capsys.readouterr().err


def test_eval_reports_each_lever(tmp_path, tiny_model_dir, face_file, capsys):  # noqa: F811
    selfies = _selfies(tmp_path)
    rc = kb(["eval", "--concept", str(face_file), "--photos", str(selfies), "--base-model",
             str(tiny_model_dir), "--device", "cpu", "--k", "1", "--prompts", "1", "--steps", "2", "--size", "64",
             "--json", "--levers", "--best-of", "2"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    arms = {a["name"]: a for a in rep["levers"]["arms"]}
    assert set(arms) == {"baseline", "best-of-N", "face detail", "best-of-N + face detail"}
    assert all(a["face_rate"] == 0.0 and a["seconds_per_image"] > 0 for a in arms.values())
    assert arms["best-of-N"]["seconds_per_image"] > arms["baseline"]["seconds_per_image"]
    rc = kb(["eval", "--concept", str(face_file), "--photos", str(selfies), "--base-model",
             str(tiny_model_dir), "--device", "cpu", "--k", "1", "--prompts", "1", "--steps", "2", "--size", "64",
             "--levers", "--best-of", "1", "--no-face-detail"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "likeness levers" in text and "baseline" in text and "best-of-N" not in text.split("likeness levers")[1]
