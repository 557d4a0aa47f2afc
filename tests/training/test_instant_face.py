"""The instant face on the tiny pipeline: a tiny random IP-Adapter FaceID built here, loaded through diffusers'
own ``load_ip_adapter`` from a file, conditions a real generation on the embedding, and the resident pipeline is
bit-identical afterwards (the same attention-processor objects, the same weights, the same images)."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

from tests.training.concepts import load_pipe
from tests.training.photos import astronaut
from training import instant_face
from training.compose import Composer
from training.generate import GenerationRequest, generate


def stand_in_embed(image: Image.Image) -> np.ndarray:
    """The documented seam's deterministic stand-in for insightface: a unit vector seeded by the pixels."""
    seed = int.from_bytes(hashlib.sha256(image.convert("RGB").resize((16, 16)).tobytes()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(instant_face.EMBED_DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def tiny_adapter(unet, folder, seed: int = 0) -> str:
    """The file a deployment names in KITBOOTH_INSTANT_FACE_ADAPTER, sized for the tiny UNet."""
    path = instant_face.write_adapter(instant_face.random_faceid_state_dict(unet, seed=seed),
                                      folder / "ip-adapter-faceid_tiny.safetensors")
    return str(path)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipe(tiny_model_dir, safety_checker=None, requires_safety_checker=False)


@pytest.fixture(scope="module")
def composer(pipe):
    c = Composer(pipe, slots=8, lora_cache=2)
    yield c
    c.evict_all()


@pytest.fixture(scope="module")
def adapter(pipe, tmp_path_factory):
    return tiny_adapter(pipe.unet, tmp_path_factory.mktemp("adapter"))


def req(seed: int = 5) -> GenerationRequest:
    return GenerationRequest(prompt="a fan in a stadium", seed=seed, count=2, width=64, height=64, steps=2)


def pixels(images) -> list[bytes]:
    return [g.image.tobytes() for g in images]


def test_the_embedding_round_trips_and_averages_to_unit_length():
    crops = [astronaut().resize((64, 64)), astronaut().rotate(10).resize((64, 64))]
    m = instant_face.mean_embedding(crops, stand_in_embed)
    assert m.shape == (512,) and abs(float(np.linalg.norm(m)) - 1.0) < 1e-5
    assert np.array_equal(instant_face.decode_embedding(instant_face.encode_embedding(m)), m)
    assert len(instant_face.encode_embedding(m)) == 2048
    with pytest.raises(ValueError):
        instant_face.decode_embedding(b"\0" * 100)
    with pytest.raises(ValueError, match="no face"):
        instant_face.mean_embedding(crops, lambda im: None)


def test_adapter_location_splits_hub_ids_and_files(tmp_path):
    assert instant_face.adapter_location("h94/IP-Adapter-FaceID/ip-adapter-faceid_sd15.bin") == (
        "h94/IP-Adapter-FaceID", "", "ip-adapter-faceid_sd15.bin")
    assert instant_face.adapter_location("o/r/sub/dir/a.safetensors") == ("o/r", "sub/dir", "a.safetensors")
    f = tmp_path / "a.safetensors"
    f.write_bytes(b"x")
    assert instant_face.adapter_location(str(f)) == (str(tmp_path), "", "a.safetensors")
    with pytest.raises(ValueError, match="owner"):
        instant_face.adapter_location("just-a-file.bin")


def test_the_adapter_conditions_on_the_face_and_the_base_comes_back_bit_identical(pipe, composer, adapter):
    unet = pipe.unet
    procs = dict(unet.attn_processors)
    weights = {k: v.clone() for k, v in unet.state_dict().items()}
    plain = pixels(generate(pipe, composer, [req()])[0])

    a, b = stand_in_embed(astronaut()), stand_in_embed(astronaut().rotate(90))
    with instant_face.applied(pipe, adapter, a, local_files_only=True):
        assert unet.config.encoder_hid_dim_type == "ip_image_proj"  # diffusers' own FaceID path
        assert type(unet.encoder_hid_proj.image_projection_layers[0]).__name__ == "IPAdapterFaceIDImageProjection"
        with_a = pixels(generate(pipe, composer, [req()])[0])
        with_a_again = pixels(generate(pipe, composer, [req()])[0])
    with instant_face.applied(pipe, adapter, b, local_files_only=True):
        with_b = pixels(generate(pipe, composer, [req()])[0])

    assert with_a == with_a_again  # deterministic
    assert with_a != plain and with_b != with_a  # the face conditions the image
    # The base pipeline, exactly: processor objects, weights, config, images.
    assert all(unet.attn_processors[k] is v for k, v in procs.items()) and len(unet.attn_processors) == len(procs)
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
    after = unet.state_dict()
    assert after.keys() == weights.keys() and all(torch.equal(after[k], v) for k, v in weights.items())
    assert pixels(generate(pipe, composer, [req()])[0]) == plain


def test_a_failed_call_still_restores_the_base(pipe, composer, adapter):
    procs = dict(pipe.unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"), instant_face.applied(pipe, adapter, stand_in_embed(astronaut()),
                                                                         local_files_only=True):
        raise RuntimeError("boom")
    assert all(pipe.unet.attn_processors[k] is v for k, v in procs.items())
    assert pipe.unet.encoder_hid_proj is None


def test_a_missing_adapter_file_fails_and_changes_nothing(pipe, tmp_path):
    procs = dict(pipe.unet.attn_processors)
    with pytest.raises(Exception), instant_face.applied(pipe, str(tmp_path / "o" / "r" / "none.safetensors"),  # noqa: B017, PT011
                                                        stand_in_embed(astronaut()), local_files_only=True):
        pass
    assert all(pipe.unet.attn_processors[k] is v for k, v in procs.items())
    assert pipe.unet.encoder_hid_proj is None


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_a_faceid_file_with_lora_runs_without_it_and_adds_no_adapter(pipe, composer, adapter, tmp_path, suffix):
    """ip-adapter-faceid_sd15.bin bundles a LoRA; diffusers would load it as a peft adapter beside the resident
    concepts' LoRAs: the instant face leaves it out (same images as the same file without it)."""
    state = instant_face.random_faceid_state_dict(pipe.unet, seed=0)
    for part in ("to_q", "to_k", "to_v", "to_out"):
        state["ip_adapter"][f"0.{part}_lora.down.weight"] = torch.zeros(4, 32)
        state["ip_adapter"][f"0.{part}_lora.up.weight"] = torch.zeros(32, 4)
    path = tmp_path / f"faceid-with-lora{suffix}"
    if suffix == ".bin":
        torch.save(state, path)
    else:
        instant_face.write_adapter(state, path)
    emb = stand_in_embed(astronaut())
    with instant_face.applied(pipe, adapter, emb, local_files_only=True):
        without = pixels(generate(pipe, composer, [req()])[0])
    with instant_face.applied(pipe, str(path), emb, local_files_only=True):
        assert not getattr(pipe.unet, "peft_config", {}) or not any(
            k.startswith("faceid") for k in pipe.unet.peft_config)
        with_file = pixels(generate(pipe, composer, [req()])[0])
    assert with_file == without
    assert pipe.unet.encoder_hid_proj is None


def test_the_png_records_the_lever(pipe, composer, adapter):
    with instant_face.applied(pipe, adapter, stand_in_embed(astronaut()), local_files_only=True):
        (g, _) = generate(pipe, composer, [req()])[0]
    (lab,) = instant_face.labelled([g])
    params = Image.open(io.BytesIO(lab.png)).text["parameters"]
    assert "Instant face: preview" in params and params.endswith(lab.parameters.rsplit(", ", 1)[-1])
    assert lab.image.tobytes() == g.image.tobytes()
