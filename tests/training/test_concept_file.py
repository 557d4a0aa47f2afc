"""The one concept-file validator (``training.concept_file``), torch-free: container, values, layouts, base model.

The corpus test (tests/worker/test_validator_corpus.py) proves validator ⇔ worker on the tiny model; these pin
the individual rules and their sentences, and SD 1.5's own layer table.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save

from kitbooth import limits
from kitbooth.errors import IncompatibleArtifact, InvalidInput
from training.base_layers import SD15, TINY, for_hidden_size
from training.concept_file import is_reserved, read_concept
from training.concept_layouts import kohya_name

F16 = np.float16
TO_K = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"


def kohya(path: str, a: tuple, b: tuple, *, text: bool = False, alpha: float | None = 4.0) -> dict[str, np.ndarray]:
    name = kohya_name(path, text=text)
    out = {f"{name}.lora_down.weight": np.full(a, 0.01, F16), f"{name}.lora_up.weight": np.full(b, 0.01, F16)}
    if alpha is not None:
        out[f"{name}.alpha"] = np.array(alpha, F16)
    return out


def test_sd15_table_has_sd15s_layers_and_widths():
    assert SD15.hidden_size == 768 and for_hidden_size(768) is SD15 and for_hidden_size(32) is TINY
    assert SD15.unet[TO_K].fan_in == 768 and SD15.unet[TO_K].fan_out == 320
    assert SD15.unet["mid_block.attentions.0.transformer_blocks.0.attn1.to_q"].fan_in == 1280
    assert SD15.unet["up_blocks.3.attentions.2.proj_out"].kernel == (1, 1)
    assert SD15.unet["down_blocks.1.resnets.0.conv_shortcut"].fan_in == 320
    assert SD15.text["encoder.layers.11.mlp.fc1"].fan_out == 3072 and len(SD15.text) == 72
    with pytest.raises(ValueError, match="no layer table"):
        for_hidden_size(1024)


def test_an_sd15_kohya_lora_with_locon_and_text_layers_is_accepted():
    tensors = {**kohya(TO_K, (8, 768), (320, 8)),
               **kohya("down_blocks.0.resnets.0.conv1", (4, 320, 3, 3), (320, 4, 1, 1), alpha=2.0),
               **kohya("encoder.layers.3.self_attn.q_proj", (8, 768), (768, 8), text=True)}
    cf = read_concept(save(tensors), SD15)
    assert cf.layout == "kohya-lora" and cf.rank == 8 and cf.targets == ("text_encoder", "unet")
    assert {p.path for p in cf.lora} == {TO_K, "down_blocks.0.resnets.0.conv1", "encoder.layers.3.self_attn.q_proj"}
    with pytest.raises(IncompatibleArtifact, match="of Stable Diffusion 1.5 \\(tiny test model\\)"):
        read_concept(save(tensors), TINY)  # the same file does not fit the tiny model


@pytest.mark.parametrize("tensors,needle", [
    (kohya(TO_K, (8, 1024), (320, 8)), r"different base model \(Stable Diffusion 2.x\?\)"),
    (kohya(TO_K, (8, 768, 1, 1), (320, 8, 1, 1)), "different base model"),  # 4-d on a Linear
    (kohya("down_blocks.0.resnets.0.conv1", (4, 320), (320, 4)), "different base model"),  # 2-d on a conv
    (kohya("down_blocks.7.resnets.0.conv1", (4, 320, 3, 3), (320, 4, 1, 1)), "is not a UNet layer of"),
    (kohya(TO_K, (0, 768), (320, 0)), "is empty"),
    (kohya(TO_K, (limits.LORA_RANK_MAX + 1, 768), (320, limits.LORA_RANK_MAX + 1)), "ranks up to"),
    ({k: v for k, v in kohya(TO_K, (8, 768), (320, 8)).items() if "up" not in k}, "lacks its up matrix"),
    (kohya(TO_K, (8, 768), (320, 4)), "do not pair up"),
    (kohya(TO_K, (8, 768), (320, 8), alpha=float("nan")), "NaN or infinite"),
    ({**kohya(TO_K, (8, 768), (320, 8)), kohya_name(TO_K, text=False) + ".lora_mid.weight": np.zeros(2, F16)},
     "LyCORIS"),
    ({"emb_params": np.zeros((limits.TI_VECTORS_MAX + 1, 768), F16)}, "1 to 16"),
    ({"emb_params": np.zeros((2, 1280), F16)}, r"\(SDXL\?\)"),
    ({"emb_params": np.zeros((2, 768), np.int32)}, "not floating point"),
    ({"emb_params": np.full((2, 768), 1e5, np.float32)}, "half precision"),
    ({"<kb-slot-3>": np.zeros((1, 768), F16)}, "reserves"),
    ({"a": np.zeros((1, 768), F16), "b": np.zeros((1, 768), F16)}, "neither a textual-inversion embedding"),
])
def test_refusals_are_one_sentence_that_says_what_to_do(tensors, needle):
    with pytest.raises(InvalidInput, match=needle) as e:
        read_concept(save(tensors), SD15)
    msg = str(e.value)
    assert "\n" not in msg and msg.endswith(".") and not re.search(r"[.!?] +[A-Z]", msg[:-1]), msg


def _raw(header: object, body: bytes = b"", raw: bytes | None = None) -> bytes:
    h = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


GOOD = {"dtype": "F16", "shape": [1, 768], "data_offsets": [0, 1536]}


@pytest.mark.parametrize("data,why", [
    (_raw({"emb_params": {**GOOD, "dtype": 16}}, b"\0" * 1536), "unknown dtype"),
    (_raw({"emb_params": {**GOOD, "shape": [1, True]}}, b"\0" * 1536), "bad shape"),
    (_raw({"emb_params": {**GOOD, "shape": "1x768"}}, b"\0" * 1536), "bad shape"),
    (_raw({"emb_params": {**GOOD, "data_offsets": [0, "1536"]}}, b"\0" * 1536), "bad offsets"),
    (_raw({"emb_params": {**GOOD, "data_offsets": [0, 1536, 0]}}, b"\0" * 1536), "bad offsets"),
    (_raw({"emb_params": {**GOOD, "data_offsets": [0, 4000]}}, b"\0" * 1536), "outside the file"),
    (_raw({"emb_params": {**GOOD, "shape": [2, 768]}}, b"\0" * 1536), "does not match its dtype and shape"),
    (_raw({"emb_params": {"x": GOOD}}, b"\0" * 1536), "bad entry"),
    (_raw({"emb_params": [GOOD]}, b"\0" * 1536), "bad entry"),
    (_raw({"emb_params": {**GOOD, "more": 1}}, b"\0" * 1536), "bad entry"),
    (_raw({"emb_params": GOOD}, b"\0" * 1540), "trailing bytes"),
    (_raw({"a": GOOD, "b": GOOD}, b"\0" * 1536), "overlaps or has gaps"),
    (_raw({"emb_params": GOOD, "__metadata__": {"k": 1}}, b"\0" * 1536), "map of strings to strings"),
    (_raw({"emb_params": GOOD, "__metadata__": ["k"]}, b"\0" * 1536), "map of strings to strings"),
    (_raw(None, b"\0" * 1536, raw=b'{"emb_params": ' + json.dumps(GOOD).encode() + b', "emb_params": '
          + json.dumps(GOOD).encode() + b"}"), "duplicate name"),
    (struct.pack("<Q", 2**63) + b"{}" + b"\0" * 8, "bad header length"),
    (_raw(None, raw=b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"), "nested too deeply"),
    (_raw({"emb_params": {**GOOD, "shape": [1, 2**70]}}, b"\0" * 1536), "does not match its dtype and shape"),
    (_raw({"emb_params": {**GOOD, "shape": [1, 1e400]}}, b"\0" * 1536), "bad shape"),
    (_raw({"emb_params": GOOD}, b"\0" * 1536)[:-1], "outside the file"),
])
def test_every_malformed_header_field_is_refused(data, why):
    with pytest.raises(InvalidInput, match=why) as e:
        read_concept(data, SD15, filename="kit.safetensors")
    assert str(e.value).startswith("`kit.safetensors` is not a valid `.safetensors` file (")


@pytest.mark.parametrize("name,reserved", [
    ("<kb-slot-0>", True), ("<KB-SLOT-12>", True), ("ｋｂ－ｓｌｏｔ", True), ("kb_slot", True), ("<|endoftext|>", True),
    ("<kb-face-0>", False), ("arsenal", False), ("<red-kit>", False),
])
def test_reserved_names_after_nfkc_and_lower_case(name, reserved):
    assert is_reserved(name) is reserved


def test_the_validator_imports_no_torch():
    code = ("import sys, training.concept_file, bot.imports; "
            "print([m for m in ('torch', 'diffusers', 'transformers', 'safetensors') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- consent: a face is refused as a kit or style, however it says so ----------------------------------------
def _own(kind: str, tokens: list[str]) -> bytes:
    meta = {"format": "kitbooth.concept", "format_version": "1", "kind": kind, "method": "ti", "base_model": "x",
            "hidden_size": "768", "tokens": json.dumps(tokens), "rank": "", "alpha": "", "steps": "10"}
    return save({"embeddings": np.zeros((len(tokens), 768), F16)}, metadata=meta)


EMB = np.zeros((2, 768), F16)
FACES = {
    "own face": _own("face", ["<kb-face-0>", "<kb-face-1>"]),
    "own face, other tokens": _own("face", ["<zz-0>", "<zz-1>"]),
    "diffusers ti <kb-face-0>": save({"<KB-FACE-0>": EMB}),
    "export renamed (kind metadata)": save({"emb_params": EMB}, metadata={"kitbooth_kind": "face"}),
    "export trigger": save({"emb_params": EMB}, metadata={"kitbooth_trigger": "alice-kb-face"}),
    "kohya output name": save(kohya(TO_K, (8, 768), (320, 8)), metadata={"ss_output_name": "alice-kb_face-lora"}),
    "bundle named kb-face": save({**kohya(TO_K, (8, 768), (320, 8)), "bundle_emb.kb-face.emb_params": EMB}),
    "fullwidth": save({"emb_params": EMB}, metadata={"name": "ｋｂ－ｆａｃｅ"}),
}


@pytest.mark.parametrize("kind", ["kit", "style"])
@pytest.mark.parametrize("name", list(FACES))
def test_a_face_is_refused_as_a_kit_or_style_in_one_sentence(name, kind):
    with pytest.raises(IncompatibleArtifact, match="face can only be used by the person it belongs to") as e:
        read_concept(FACES[name], SD15, kind=kind)
    assert "\n" not in str(e.value)
    assert read_concept(FACES[name], SD15, kind="face") is not None  # as a face (its owner's load) it is fine
    assert read_concept(FACES[name], SD15) is not None  # no intended kind: a local run takes it as it is


def test_a_face_named_file_is_refused_and_a_plain_kit_accepted():
    with pytest.raises(IncompatibleArtifact, match="face"):
        read_concept(save({"emb_params": EMB}), SD15, filename="kb-face.safetensors", kind="kit")
    assert read_concept(save({"emb_params": EMB}), SD15, filename="arsenal.safetensors", kind="kit").tokens == (
        "<arsenal-0>", "<arsenal-1>")
    assert read_concept(save({"emb_params": EMB}, metadata={"kitbooth_kind": "style"}), SD15, kind="style")


def test_an_own_file_of_another_kind_is_refused_by_name():
    with pytest.raises(IncompatibleArtifact, match="holds a kit, not a style — use it as a kit"):
        read_concept(_own("kit", ["<kb-kit-0>"]), SD15, kind="style")
    assert read_concept(_own("kit", ["<kb-kit-0>"]), SD15, kind="kit").own["kind"] == "kit"
