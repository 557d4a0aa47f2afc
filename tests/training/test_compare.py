"""``kitbooth compare`` end to end on the tiny model: report files, reuse by a second run, bad arguments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from kitbooth.cli import main
from tests.training.photos import astronaut, cropped, distinct_good_set, encode, scaled
from training import compare as compare_mod


def _write(folder: Path, photos: list[tuple[str, bytes]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in photos:
        (folder / name).write_bytes(data)
    return folder


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    photos = _write(tmp_path / "selfies", distinct_good_set()[:4])  # the fewest a face trains from
    held = _write(tmp_path / "held-out", [("a.jpg", cropped((80, 20, 420, 360))), ("b.jpg", scaled(0.8))])
    return photos, held


def _args(photos: Path, held: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return ["compare", "--photos", str(photos), "--held-out", str(held), "--out", str(out), "--base-model",
            str(model), "--methods", "ti,lora", "--resolution", "64", "--steps", "2", "--sample-steps", "2",
            "--prompts", "2", "--device", "cpu", "--dtype", "float32", "--no-safety-checker", "--no-progress",
            *extra]


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _png(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.verify()
    im = Image.open(path)
    assert im.format == "PNG"
    return im


@pytest.mark.slow
def test_compare_writes_the_report_and_a_second_run_reuses_it(tmp_path, tiny_model_dir, capsys, monkeypatch):
    photos, held = _dirs(tmp_path)
    out = tmp_path / "report"
    assert main(_args(photos, held, out, tiny_model_dir)) == 0
    text = capsys.readouterr().out
    assert "ti: trained 2 steps" in text and "lora: trained 2 steps" in text and "reused" not in text

    report = json.loads((out / "report.json").read_text())
    assert list(report["methods"]) == ["ti", "lora"]
    assert report["prompts"] == list(compare_mod.PROMPTS[:2]) and report["seeds"] == [0, 1000]
    assert any("mean nothing" in n for n in report["notes"])  # the tiny model
    assert any("CLIP-T is n/a" in n for n in report["notes"]) and report["chart"] == "chart.png"
    assert list(report["memory_measure"]) == ["cpu_rss_peak_delta"]
    for method, row in report["methods"].items():
        concept = out / method / "concept.safetensors"
        assert row["file_bytes"] == concept.stat().st_size > 0 and row["train_steps"] == 2
        assert row["train_seconds"] > 0 and row["peak_memory_kind"] == "cpu_rss_peak_delta"
        assert row["peak_memory_bytes"] >= 0 and row["hidden_size"] == 32
        # The held-out photos show a face; the tiny model draws none: identity is measured and finds no face.
        for ident in (row["identity"], row["identity_kit"]):
            assert ident == {"images": 2, "faces_found": 0, "mean_distance": None, "same_person_rate": 0.0}
        assert row["clip_t"] is None and row["clip_t_kit"] is None
        images = row["images"]
        assert [(r["kit"], r["seed"]) for r in images] == [(False, 0), (True, 0), (False, 1000), (True, 1000)]
        assert all(r["face_found"] is False for r in images)
        assert [r["prompt"] for r in images] == [p for p in report["prompts"] for _ in (0, 1)]
        assert all(compare_mod.DEFAULT_KIT_WORDS in r["built"] for r in images if r["kit"])
        assert not any(compare_mod.DEFAULT_KIT_WORDS in r["built"] for r in images if not r["kit"])
        for r in images:
            assert "parameters" in _png(out / method / r["file"]).info  # the PNGs generate writes
        sheet = _png(out / f"sheet-{method}.png")
        assert sheet.width == 512 and sheet.height > 2 * 256  # two columns, a row per prompt
    assert _png(out / "chart.png").width > 500

    table = (out / "report.md").read_text()
    assert "mean nothing" in table
    rows = [line for line in table.splitlines() if line.startswith("| ti |") or line.startswith("| lora |")]
    assert len(rows) == 2 and all("n/a (no face in 2 images)" in r and r.endswith("| trained |") for r in rows)

    before = {m: _snapshot(out / m) for m in ("ti", "lora")}
    load = compare_mod.load_base_pipeline

    def no_model(*_a, **_k):
        raise AssertionError("a finished comparison loaded the model again")

    monkeypatch.setattr(compare_mod, "load_base_pipeline", no_model)
    assert main(_args(photos, held, out, tiny_model_dir)) == 0
    text = capsys.readouterr().out
    assert f"ti: reused {out / 'ti'}" in text and f"lora: reused {out / 'lora'}" in text and ": trained " not in text
    assert {m: _snapshot(out / m) for m in ("ti", "lora")} == before
    assert (out / "report.md").read_text().count("| reused |") == 2

    # A face concept is no kit (the one validator says so), and a refused run writes nothing.
    report_json = (out / "report.json").read_bytes()
    assert main([*_args(photos, held, out, tiny_model_dir), "--kit", str(out / "ti" / "concept.safetensors")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kitbooth compare: This is a KitBooth face concept"), err
    assert (out / "report.json").read_bytes() == report_json

    # A run stopped after training ti (its measures missing): ti is measured again, nothing is trained.
    (out / "ti" / "metrics.json").unlink()

    def no_training(*_a, **_k):
        raise AssertionError("trained again")

    monkeypatch.setattr(compare_mod, "load_base_pipeline", load)
    monkeypatch.setattr(compare_mod, "_train", no_training)
    assert main(_args(photos, held, out, tiny_model_dir)) == 0
    text = capsys.readouterr().out
    assert "ti: reused the concept trained by an earlier run" in text and f"lora: reused {out / 'lora'}" in text
    assert _snapshot(out / "ti")["concept.safetensors"] == before["ti"]["concept.safetensors"]
    assert _snapshot(out / "lora") == before["lora"]
    rows = json.loads((out / "report.json").read_text())["methods"]
    assert (rows["ti"]["reused"], rows["lora"]["reused"]) == ("concept", "all")
    assert rows["ti"]["images"] == report["methods"]["ti"]["images"]  # same seeds, same measures


@pytest.mark.parametrize(("change", "says"), [
    ({"--photos": "missing"}, "--photos {tmp}/missing: no such folder"),
    ({"--held-out": "file.txt"}, "--held-out {tmp}/file.txt is a file, not a folder"),
    ({"--methods": "ti,dreamboth"}, "--methods dreamboth: unknown method — use "),
    ({"--methods": ","}, "--methods names no method"),
    ({"--kit": "{tmp}/no-such-kit.safetensors"}, "--kit {tmp}/no-such-kit.safetensors: no such file"),
    ({"--out": "file.txt"}, "--out {tmp}/file.txt is a file; a folder goes there"),
    ({"--steps": "0"}, "--steps 0 is out of range"),
    ({"--photos": "empty"}, "--photos {tmp}/empty: not enough usable photos"),
])
def test_bad_arguments_give_one_line_and_write_nothing(tmp_path, tiny_model_dir, capsys, change, says):
    (tmp_path / "file.txt").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    photos = _write(tmp_path / "selfies", [("one.jpg", encode(astronaut()))])
    held = _write(tmp_path / "held-out", [("a.jpg", encode(astronaut()))])
    out = tmp_path / "report"
    args = _args(photos, held, out, tiny_model_dir)
    for option, value in change.items():
        value = value.format(tmp=tmp_path)
        value = value if "/" in value or option in ("--methods", "--steps") else str(tmp_path / value)
        if option in args:
            args[args.index(option) + 1] = value
        else:
            args += [option, value]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kitbooth compare: ") and says.format(tmp=tmp_path) in err[0], err
    assert not out.exists()


def test_without_matplotlib_the_report_has_no_chart_and_the_rest(tmp_path, monkeypatch):
    from training import compare_report

    folder = tmp_path / "ti"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (64, 64), "red").save(folder / "images" / "00-nokit-seed0.png")
    row = compare_report.MethodResult(
        method="ti", file_bytes=600, train_seconds=1.5, train_steps=2, peak_memory_bytes=None,
        peak_memory_kind="cuda_max_allocated", hidden_size=768,
        images=[compare_report.ImageRecord(file="images/00-nokit-seed0.png", prompt="p", built="a photo of p",
                                           kit=False, seed=0)])
    monkeypatch.setattr(compare_report, "has_matplotlib", lambda: False)
    files = compare_report.write_report(tmp_path, [row], {"notes": []})
    assert sorted(f.name for f in files) == ["report.json", "report.md", "sheet-ti.png"]
    assert not (tmp_path / "chart.png").exists()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["chart"] is None and list(report["memory_measure"]) == ["cuda_max_allocated"]
    assert "| ti | 600 B | 1.5 s (2 steps) | n/a | n/a (no face in the held-out photos) |" in (
        tmp_path / "report.md").read_text()
    assert "chart.png" not in (tmp_path / "report.md").read_text()
    assert "kitbooth[compare]" in compare_report.NO_CHART
