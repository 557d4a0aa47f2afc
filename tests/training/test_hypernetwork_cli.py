"""``kitbooth hypernetwork inspect | convert | train`` end to end on the tiny model (in process)."""

from __future__ import annotations

import io

import torch

from kitbooth.cli import main
from tests.training.concepts import synthetic_images
from tests.training.test_hypernetwork import _a1111_file
from training.hypernetwork_files import NOT_HYPERNETWORK, load_a1111, load_safetensors
from training.tiny import TINY_HIDDEN

torch.set_num_threads(1)


def test_inspect_and_convert_an_a1111_file(tmp_path, capsys):
    src = tmp_path / "a1111net.pt"
    src.write_bytes(_a1111_file(TINY_HIDDEN)[0])
    assert main(["hypernetwork", "inspect", str(src)]) == 0
    out = capsys.readouterr().out
    assert "'a1111net', step 1200, base v1-5-pruned-emaonly" in out
    assert "layer structure 1,2,2,1; activation relu; layer norm yes; dropout 0,0.3,0,0" in out
    st = tmp_path / "net.safetensors"
    assert main(["hypernetwork", "convert", str(src), "--out", str(st)]) == 0
    back, orig = load_safetensors(st), load_a1111(src)
    for a, b in zip(orig.parameters(), back.parameters(), strict=True):
        assert torch.equal(a, b)
    assert main(["hypernetwork", "convert", str(st), "--out", str(tmp_path / "net.bin")]) == 1
    assert "--out must end in .pt" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"nope")
    assert main(["hypernetwork", "inspect", str(junk)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"kitbooth hypernetwork: {NOT_HYPERNETWORK}"]


def test_train_writes_an_a1111_file(tmp_path, tiny_model_dir, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, im in enumerate(synthetic_images()):
        buf = io.BytesIO()
        im.save(buf, "PNG")
        (photos / f"{i}.png").write_bytes(buf.getvalue())
    out = tmp_path / "style.pt"
    args = ["hypernetwork", "train", "--photos", str(photos), "--out", str(out), "--base-model", str(tiny_model_dir),
            "--resolution", "64", "--steps", "3", "--activation", "relu", "--no-progress"]
    assert main([*args, "--layer-structure", "2,1"]) == 1 and not out.exists()
    assert "--layer-structure must start and end with 1" in capsys.readouterr().err
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    net = load_a1111(out)
    assert net.step == 3 and net.config.sizes == (TINY_HIDDEN,) and net.name == "style"
    raw = torch.load(out, weights_only=True)
    assert raw["activation_func"] == "relu" and sorted(k for k in raw if isinstance(k, int)) == [TINY_HIDDEN]


def test_kitbooth_train_method_hypernetwork_and_inspect(tmp_path, tiny_model_dir, capsys):
    import json

    from training.artifact import load_artifact
    from training.hypernetwork import Hypernetwork, HypernetworkConfig
    from training.hypernetwork_files import save_a1111

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, im in enumerate(synthetic_images()):
        im.resize((256, 256)).save(photos / f"{i}.png")
    out = tmp_path / "kit.safetensors"
    assert main(["train", "--photos", str(photos), "--kind", "kit", "--method", "hypernetwork", "--out", str(out),
                 "--base-model", str(tiny_model_dir), "--resolution", "64", "--steps", "2", "--no-progress"]) == 0
    art = load_artifact(out)
    assert (art.method, art.kind, art.steps, art.tokens) == ("hypernetwork", "kit", 2, ["zwkit"])
    capsys.readouterr()
    # An SD 1.5 hypernetwork (768 wide; a thin 1,0.05,1 keeps it small) as kitbooth inspect describes it.
    net = Hypernetwork(HypernetworkConfig(sizes=(768,), layer_structure=(1, 0.05, 1), activation_func="relu"),
                       name="thin")
    pt = tmp_path / "thin.pt"
    save_a1111(net, pt)
    assert main(["inspect", str(pt), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["format"], info["method"], info["tokens"]) == ("a1111", "imported", ["thin"])
    h = info["hypernetwork"]
    assert (h["name"], h["layer_structure"], h["activation"], h["widths"]) == ("thin", "1,0.05,1", "relu", [768])
    assert h["parameters"] == info["parameters"] == info["full_size_parameters"] == 2 * (768 * 38 + 38 + 38 * 768 + 768)
