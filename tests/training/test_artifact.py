"""The concept artifact: round trip, metadata, atomic writes, refusal of malformed or foreign files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load, save

from kitbooth.errors import IncompatibleArtifact
from tests.training.concepts import fp16, make_artifact
from training.artifact import check_compatible, load_artifact, read_metadata, save_artifact


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(tiny_model_dir, local_files_only=True)


@pytest.mark.parametrize("method,text", [("pivotal", False), ("ti", False), ("lora", True)])
def test_round_trip(pipe, tmp_path, method, text):
    art = make_artifact(pipe, method=method, text=text, alpha=8.0)
    path = tmp_path / "c" / "face.safetensors"
    data = save_artifact(art, path)
    assert path.read_bytes() == data and not list(path.parent.glob("*.tmp"))
    back = load_artifact(path)
    for field in ("kind", "method", "base_model", "hidden_size", "tokens", "rank", "alpha", "steps", "created",
                  "version", "extra"):
        assert getattr(back, field) == getattr(art, field), field
    assert back.trigger == " ".join(art.tokens)
    if art.embeddings is None:
        assert back.embeddings is None
    else:
        assert torch.equal(back.embeddings, fp16(art.embeddings))
    for mine, theirs in ((art.unet_lora, back.unet_lora), (art.text_lora, back.text_lora)):
        assert set(mine) == set(theirs)
        assert all(torch.equal(fp16(mine[k]), theirs[k]) for k in mine)
    again = save_artifact(back)  # stable: load -> save gives the same tensors and metadata
    assert read_metadata(again) == read_metadata(data)
    assert all(torch.equal(v, load(data)[k]) for k, v in load(again).items())
    meta = read_metadata(data)
    assert meta["kind"] == "face" and json.loads(meta["tokens"]) == art.tokens and meta["hidden_size"] == "32"
    assert all(t.dtype == torch.float16 for t in load(data).values())
    check_compatible(back, pipe)


def test_trained_artifact_is_compatible(pipe):
    from PIL import Image

    from training.config import default_config
    from training.loop import Trainer

    cfg = default_config("face", resolution=64, steps=2, checkpoint_every=0)
    with Trainer(pipe, [Image.new("RGB", (64, 64), "red")], cfg, base_model_id="tiny") as t:
        t.run()
        art = t.artifact()
    back = load_artifact(save_artifact(art))
    check_compatible(back, pipe)
    assert back.method == "pivotal" and back.steps == 2 and back.tokens == ["<kb-face-0>", "<kb-face-1>"]
    assert back.rank == 4 and back.alpha == 4.0 and len(back.unet_lora) == 64


def test_malformed_files_are_refused(pipe):
    good = save_artifact(make_artifact(pipe))
    with pytest.raises(IncompatibleArtifact, match="not a valid `.safetensors` file"):
        load_artifact(b"hello world, not safetensors")
    with pytest.raises(IncompatibleArtifact, match="not a KitBooth concept"):
        load_artifact(save({"x": torch.zeros(2)}))
    tensors = load(good)
    meta = read_metadata(good)
    with pytest.raises(IncompatibleArtifact, match="3 vectors for 2 trigger tokens"):
        load_artifact(save({**tensors, "embeddings": torch.zeros(3, 32, dtype=torch.float16)}, metadata=meta))
    broken = {k: v for k, v in tensors.items() if not k.endswith("attn1.to_q.lora_B.weight")}
    with pytest.raises(IncompatibleArtifact, match="lacks its up matrix"):
        load_artifact(save(broken, metadata=meta))
    with pytest.raises(IncompatibleArtifact, match="rank differs from its metadata"):
        load_artifact(save(tensors, metadata={**meta, "rank": "8"}))
    with pytest.raises(IncompatibleArtifact, match="metadata"):
        load_artifact(save(tensors, metadata={**meta, "tokens": "not json"}))
    with pytest.raises(IncompatibleArtifact, match="trigger tokens"):
        load_artifact(save(tensors, metadata={**meta, "tokens": "[]"}))
    with pytest.raises(IncompatibleArtifact):
        load_artifact(good[: len(good) // 2])  # truncated


def test_check_compatible_refuses_other_base_models(pipe):
    art = make_artifact(pipe)
    art.hidden_size = 1024
    art.embeddings = torch.zeros(2, 1024)
    with pytest.raises(IncompatibleArtifact, match=r"different base model \(hidden size 1024, expected 32\)"):
        check_compatible(art, pipe)
    art = make_artifact(pipe)
    art.unet_lora["down_blocks.3.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"] = torch.zeros(4, 32)
    art.unet_lora["down_blocks.3.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight"] = torch.zeros(32, 4)
    with pytest.raises(IncompatibleArtifact, match="no layer down_blocks.3"):
        check_compatible(art, pipe)
    art = make_artifact(pipe)
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight"
    art.unet_lora[key] = torch.zeros(4, 768)  # SD 1.5-sized cross-attention input
    with pytest.raises(IncompatibleArtifact, match="different base model"):
        check_compatible(art, pipe)


def test_values_that_overflow_fp16_are_refused_not_saved_as_inf():
    import dataclasses

    import pytest
    import torch

    from kitbooth.errors import IncompatibleArtifact
    from training.artifact import ConceptArtifact, save_artifact

    art = ConceptArtifact(kind="style", method="ti", base_model="tiny", hidden_size=4, tokens=["<s-0>"],
                          embeddings=torch.ones(1, 4), unet_lora={}, text_lora={}, rank=None, alpha=None,
                          steps=1, created="2026-11-25T00:00:00Z", version="0.1.0")
    assert save_artifact(art)  # fine
    with pytest.raises(IncompatibleArtifact, match="too large for fp16"):
        save_artifact(dataclasses.replace(art, embeddings=torch.full((1, 4), 1e6)))
