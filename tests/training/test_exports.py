"""Exports people can use: A1111 loads our `.pt` and `.safetensors` embeddings (its own rules reproduced here),
every file is named after its owner with the trigger the same in name, metadata and tokens, files are 0644,
and no server path reaches shared metadata."""

from __future__ import annotations

import collections
import io
import pickle
import re
import stat
import zipfile

import numpy
import pytest
import torch
from safetensors.torch import load

from kitbooth.errors import IncompatibleArtifact
from tests.training.concepts import fp16, load_pipe, make_artifact
from training.artifact import read_metadata
from training.base_layers import TINY
from training.exports import export, export_stem, export_trigger, public_base_model
from training.formats import import_file

torch.set_num_threads(1)

# --- A1111's loader, reproduced from modules/safe.py and modules/textual_inversion -------------------------
A1111_ZIP_NAMES = re.compile(r"^([^/]+)/((data/\d+)|version|(data\.pkl))$")
A1111_DATA_PKL = re.compile(r"^([^/]+)/data\.pkl$")
A1111_GLOBALS = {
    ("collections", "OrderedDict"),
    *(("torch._utils", n) for n in ("_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_device_tensor_from_numpy")),
    *(("torch", n) for n in ("FloatStorage", "HalfStorage", "IntStorage", "LongStorage", "DoubleStorage",
                            "ByteStorage", "float32", "BFloat16Storage")),
    ("torch.nn.modules.container", "ParameterDict"),
    ("numpy.core.multiarray", "scalar"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "dtype"), ("numpy", "ndarray"), ("_codecs", "encode"), ("__builtin__", "set"),
}


class A1111Unpickler(pickle.Unpickler):
    """modules/safe.py RestrictedUnpickler: only the allow-listed globals; storages become empty stand-ins."""

    def persistent_load(self, saved_id):
        assert saved_id[0] == "storage"
        return torch.UntypedStorage(0)

    def find_class(self, module, name):
        if (module, name) not in A1111_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}/{name}' is forbidden")
        if module == "collections":
            return collections.OrderedDict
        if module == "torch._utils":
            return lambda *a, **k: ("tensor", a[2])  # shape only: the storages are stand-ins
        if module == "torch":
            return getattr(torch, name)
        return getattr(numpy, name)


def a1111_check_pt(data: bytes) -> dict:
    """check_pt(): every zip entry matches the allow-list, one data.pkl, which the restricted unpickler reads."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        bad = [n for n in z.namelist() if not A1111_ZIP_NAMES.match(n)]
        assert not bad, f"A1111 refuses the entries {bad}"
        pkls = [n for n in z.namelist() if A1111_DATA_PKL.match(n)]
        assert len(pkls) == 1
        with z.open(pkls[0]) as f:
            return A1111Unpickler(f).load()


def a1111_safetensors_embedding(data: bytes) -> torch.Tensor:
    """textual_inversion.load_from_file for .safetensors: one tensor (or string_to_param), (n, width)."""
    tensors = load(data)
    assert "string_to_param" not in tensors and len(tensors) == 1, "A1111 skips a file of several tensors"
    emb = next(iter(tensors.values()))
    return emb.unsqueeze(0) if emb.dim() == 1 else emb


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipe(tiny_model_dir)


def test_the_rule_reproduced_refuses_torchs_default_writer(pipe):
    buf = io.BytesIO()
    torch.save({"string_to_param": {"*": torch.zeros(2, 32)}}, buf)  # today's torch adds byteorder, .data/...
    names = zipfile.ZipFile(buf).namelist()
    if all(A1111_ZIP_NAMES.match(n) for n in names):
        pytest.skip("this torch writes only the classic entries")
    with pytest.raises(AssertionError, match="A1111 refuses"):
        a1111_check_pt(buf.getvalue())


def test_a1111_pt_passes_a1111s_allow_list_and_loads_in_torch(pipe, tmp_path):
    art = make_artifact(pipe, method="pivotal")
    files = export(art, "a1111", tmp_path, name="Alice ✨ Smith")
    assert sorted(f.name for f in files) == ["alice-smith-kb-face-lora.safetensors", "alice-smith-kb-face.pt"]
    data = (tmp_path / "alice-smith-kb-face.pt").read_bytes()
    obj = a1111_check_pt(data)
    assert obj["string_to_param"]["*"] == ("tensor", torch.Size([2, 32])) and obj["name"] == "alice-smith-kb-face"
    real = torch.load(io.BytesIO(data), weights_only=True)  # and torch itself reads the rewritten zip
    assert torch.equal(real["string_to_param"]["*"].float(), fp16(art.embeddings))
    back = import_file(data, "renamed.pt", kind="face", base=TINY)
    assert torch.equal(back.embeddings, fp16(art.embeddings))


def test_kohya_embedding_is_one_tensor_a1111_reads(pipe, tmp_path):
    art = make_artifact(pipe, method="ti")
    (f,) = export(art, "kohya", tmp_path, name="bob")
    assert f.name == "bob-kb-face.safetensors"
    torch.testing.assert_close(a1111_safetensors_embedding(f.read_bytes()).float(), fp16(art.embeddings))


@pytest.mark.parametrize("fmt", ["a1111", "kohya", "diffusers"])
def test_named_trigger_consistent_0644_and_no_server_path(pipe, tmp_path, fmt):
    art = make_artifact(pipe, method="pivotal")
    art.base_model = "/srv/kitbooth/models/my-sd15"  # the worker's own path: never shared
    files = export(art, fmt, tmp_path / fmt, name="Carol")
    trigger = export_trigger(art, "Carol")
    assert trigger == export_stem(art, "Carol") == "carol-kb-face"
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f.name
        raw = f.read_bytes()
        assert b"/srv/kitbooth" not in raw, f.name
        if fmt != "diffusers":
            assert f.name.startswith(trigger), f.name
        if f.suffix == ".safetensors":
            meta = read_metadata(raw)
            assert meta["kitbooth_trigger"] == trigger and meta["kitbooth_kind"] == "face"
            assert meta.get("ss_sd_model_name", "my-sd15") == "my-sd15"
    if fmt == "diffusers":
        emb = load((tmp_path / fmt / "learned_embeds.safetensors").read_bytes())
        assert list(emb) == [trigger]


def test_public_base_model_keeps_hub_ids_and_strips_paths(tmp_path):
    assert public_base_model("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"
    assert public_base_model("/home/ops/models/sd15.safetensors") == "sd15.safetensors"
    assert public_base_model("C:\\models\\sd15") == "sd15"
    assert public_base_model(str(tmp_path)) == tmp_path.name  # an existing local folder is a path
    assert public_base_model("") == ""


def test_an_exported_face_renamed_is_still_refused_as_a_kit(pipe, tmp_path):
    art = make_artifact(pipe, method="pivotal")
    for fmt in ("kohya", "a1111", "diffusers"):
        for f in export(art, fmt, tmp_path / fmt, name="dana"):
            with pytest.raises(IncompatibleArtifact, match="face can only be used by the person"):
                import_file(f.read_bytes(), "arsenal-home.safetensors" if f.suffix != ".pt" else "arsenal.pt",
                            kind="kit", pipe=pipe)
