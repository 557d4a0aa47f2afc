"""The torch-free safetensors header checks behind /kit import and /style import."""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest
from safetensors.numpy import save

from bot.imports import check_import, parse_header
from kitbooth.errors import IncompatibleArtifact, InvalidInput

H = 32  # the tiny model's text width (SD 1.5: 768)
MAX = 1_000_000


def sd15_lora(width: int = H, rank: int = 4, kohya: bool = False, te: bool = True) -> dict[str, np.ndarray]:
    f = np.float16
    if kohya:
        t = {
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight":
                np.zeros((rank, width), f),
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight":
                np.zeros((32, rank), f),
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha": np.array(4.0, f),
            "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": np.zeros((rank, 32, 3, 3), f),
            "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": np.zeros((32, rank, 1, 1), f),
        }
        if te:
            t["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = np.zeros((rank, width), f)
            t["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = np.zeros((width, rank), f)
        return t
    t = {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.lora_A.weight": np.zeros((rank, width), f),
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.lora_B.weight": np.zeros((32, rank), f),
        "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": np.zeros((rank, 32), f),
        "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": np.zeros((32, rank), f),
    }
    if te:
        t["text_encoder.encoder.layers.0.self_attn.k_proj.lora_A.weight"] = np.zeros((rank, width), f)
        t["text_encoder.encoder.layers.0.self_attn.k_proj.lora_B.weight"] = np.zeros((width, rank), f)
        t["text_encoder.encoder.layers.0.mlp.fc2.lora_A.weight"] = np.zeros((rank, 2 * width), f)  # tiny: 64
        t["text_encoder.encoder.layers.0.mlp.fc2.lora_B.weight"] = np.zeros((width, rank), f)
    return t


def check(data: bytes, name: str = "x.safetensors", hidden: int = H, max_bytes: int = MAX):
    return check_import(data, name, hidden_size=hidden, max_bytes=max_bytes)


def test_a1111_embedding_accepted():
    info = check(save({"emb_params": np.zeros((3, H), np.float32)}))
    assert info.kind == "embedding" and info.token_count == 3 and info.width == H


def test_diffusers_embedding_accepted_with_sd15_width():
    data = save({"<kit-red>": np.zeros((768,), np.float32)})
    assert check(data, hidden=768).token_count == 1


@pytest.mark.parametrize("kohya", [False, True])
def test_sd15_lora_accepted(kohya):
    info = check(save(sd15_lora(kohya=kohya), metadata={"ss_base_model_version": "sd_v1"}))
    assert info.kind == "lora" and info.rank == 4 and info.targets == ("text_encoder", "unet")


def test_kohya_bundle_is_lora_plus_embedding():
    tensors = {**sd15_lora(kohya=True), "bundle_emb.s0.string_to_param.*": np.zeros((2, H), np.float16)}
    info = check(save(tensors))
    assert info.kind == "lora+embedding" and info.token_count == 2


@pytest.mark.parametrize("width,guess", [(1024, "2.x"), (1280, "SDXL"), (768, "")])
def test_embedding_for_another_base_model_refused(width, guess):
    with pytest.raises(IncompatibleArtifact, match="different base model") as e:
        check(save({"emb_params": np.zeros((2, width), np.float32)}))
    assert guess in str(e.value) and "Stable Diffusion 1.5" in str(e.value)


def test_sdxl_embedding_refused():
    data = save({"clip_l": np.zeros((2, 768), np.float16), "clip_g": np.zeros((2, 1280), np.float16)})
    with pytest.raises(IncompatibleArtifact, match=r"different base model \(SDXL\?\)"):
        check(data, hidden=768)


def test_sdxl_kohya_lora_refused():
    f = np.float16
    data = save({
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": np.zeros((4, 2048), f),
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight": np.zeros((640, 4), f),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": np.zeros((4, 768), f),
    })
    with pytest.raises(IncompatibleArtifact, match="SDXL"):
        check(data, hidden=768)


def test_lora_with_wrong_cross_attention_width_refused():
    with pytest.raises(IncompatibleArtifact, match="different base model"):
        check(save(sd15_lora(width=1024, te=False)), hidden=768)


def test_kohya_sdxl_metadata_refused():
    with pytest.raises(IncompatibleArtifact, match="SDXL"):
        check(save(sd15_lora(kohya=True), metadata={"ss_base_model_version": "sdxl_base_v1-0"}))


def test_full_checkpoint_is_not_a_lora_or_embedding():
    data = save({"model.diffusion_model.input_blocks.0.0.weight": np.zeros((4, 4), np.float16)})
    with pytest.raises(IncompatibleArtifact):
        check(data)


class _Boom:
    def __reduce__(self):
        return (open, ("/tmp/kitbooth-pickle-ran", "w"))


@pytest.mark.parametrize("name", ["evil.pt", "evil.ckpt", "evil.safetensors"])
def test_pickle_refused_and_never_unpickled(name, tmp_path):
    import os

    marker = "/tmp/kitbooth-pickle-ran"
    if os.path.exists(marker):
        os.unlink(marker)
    data = pickle.dumps(_Boom(), protocol=4)
    with pytest.raises(InvalidInput, match="pickle"):
        check(data, name)
    assert not os.path.exists(marker)


def test_torch_zip_format_refused_even_when_renamed():
    with pytest.raises(InvalidInput, match="pickle"):
        check(b"PK\x03\x04" + b"\0" * 100, "renamed.safetensors")


@pytest.mark.parametrize("data,why", [
    (b"hello", "too short"),
    (b"\xff" * 64, "header length"),
    (struct.pack("<Q", 4) + b"[1] " + b"", "JSON header"),
    (struct.pack("<Q", 2) + b"{}", "no tensors"),
    (struct.pack("<Q", 5) + b"{nope", "unreadable"),
])
def test_garbage_refused(data, why):
    with pytest.raises(InvalidInput, match=why):
        check(data)


def test_offsets_outside_the_file_refused():
    header = json.dumps({"emb_params": {"dtype": "F32", "shape": [1, H], "data_offsets": [0, 4 * H]}}).encode()
    data = struct.pack("<Q", len(header)) + header + b"\0" * 10
    with pytest.raises(InvalidInput, match="outside the file"):
        check(data)


def test_other_extension_refused():
    with pytest.raises(InvalidInput, match="not a `.safetensors` file"):
        check(save({"emb_params": np.zeros((1, H), np.float32)}), "kit.png")


def test_oversize_refused():
    data = save({"emb_params": np.zeros((1, H), np.float32)})
    with pytest.raises(InvalidInput, match="limit"):
        check(data, max_bytes=len(data) - 1)


def test_parse_header_reads_metadata():
    tensors, meta = parse_header(save({"a": np.zeros((2, 3), np.float16)}, metadata={"k": "v"}))
    assert meta == {"k": "v"} and tensors["a"].shape == (2, 3) and tensors["a"].nbytes == 12


@pytest.mark.parametrize("meta", [
    {"format": "kitbooth-concept", "tokens": json.dumps(["<kb-slot-0>"])},  # a KitBooth-format file's trigger
    {"tokens": json.dumps(["<KB-SLOT-3>", "x"])},
    {"kitbooth_trigger": "<kb-slot-1>"},
    {"ss_trigger": "<|endoftext|>"},
])
def test_file_whose_trigger_names_a_slot_token_is_refused(meta):
    # Such a trigger is never rewritten by the worker and would read another member's face vectors in a
    # shared batch.
    with pytest.raises(InvalidInput, match="reserves"):
        check(save(sd15_lora(), metadata=meta))


def test_embedding_named_like_a_slot_token_is_refused():
    with pytest.raises(InvalidInput, match="reserves"):
        check(save({"<kb-slot-0>": np.zeros((H,), np.float32)}))


def test_ordinary_trigger_metadata_is_accepted():
    info = check(save(sd15_lora(), metadata={"tokens": json.dumps(["<kb-kit-0>"]), "kitbooth_trigger": "arsenal"}))
    assert info.kind == "lora"


@pytest.mark.parametrize("kind", ["kit", "style"])
def test_a_kitbooth_face_is_refused_as_a_kit_or_style(kind):
    face = save({"emb_params": np.zeros((2, H), np.float32)}, metadata={"kitbooth_kind": "face"})
    with pytest.raises(IncompatibleArtifact, match="face can only be used by the person it belongs to"):
        check(face) if kind == "kit" else check_import(face, "x.safetensors", hidden_size=H, max_bytes=MAX,
                                                       kind="style")
