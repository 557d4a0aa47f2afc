"""Full-size SD 1.5 artifact sizes, computed on the meta device, and the exact safetensors size arithmetic."""

from __future__ import annotations

import torch

from training.artifact import ConceptArtifact, artifact_metadata, artifact_tensors, save_artifact
from training.config import default_config
from training.sizes import artifact_bytes_full_size, artifact_shapes, parameters_full_size, safetensors_nbytes


def test_size_arithmetic_matches_the_real_serializer():
    g = torch.Generator().manual_seed(0)
    art = ConceptArtifact(
        kind="face", method="pivotal", base_model='Zürich "FC" \\ 🙂 model', hidden_size=32,
        tokens=["<kb-face-0>", "<kb-face-1>"], embeddings=torch.randn(2, 32, generator=g),
        unet_lora={"a.b.to_q.lora_A.weight": torch.randn(4, 32, generator=g),
                   "a.b.to_q.lora_B.weight": torch.randn(64, 4, generator=g)},
        text_lora={"encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(4, 32, generator=g),
                   "encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(32, 4, generator=g)},
        rank=4, alpha=4.0, steps=500, created="2026-11-25T10:00:00Z", version="0.1.0",
        extra={"note": "line\nbreak\ttab"},
    )
    shapes = {k: tuple(v.shape) for k, v in artifact_tensors(art).items()}
    assert safetensors_nbytes(shapes, artifact_metadata(art)) == len(save_artifact(art))


def test_full_size_lora_parameter_count_matches_sd15():
    # RECIPES: a rank-4 LoRA on SD 1.5's UNet attention (to_q/k/v/out.0) has 797,184 parameters
    assert parameters_full_size(default_config("kit")) == 797_184
    shapes = artifact_shapes(default_config("face"))
    assert shapes["embeddings"] == (2, 768)
    assert shapes["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight"] == (4, 768)
    assert shapes["unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_B.weight"] == (1280, 4)
    assert len([k for k in shapes if k.endswith("lora_A.weight")]) == 128  # 16 transformer blocks x 2 attn x 4


def test_default_face_artifacts_are_small():
    pivotal = artifact_bytes_full_size(default_config("face"))
    ti = artifact_bytes_full_size(default_config("face", method="ti"))
    assert 1_631_000 < pivotal <= 2_000_000
    assert 3_072 < ti <= 4_096
    r16 = artifact_bytes_full_size(default_config("face", rank=16))
    assert 6_400_000 < r16 < 6_450_000  # RECIPES: r16 UNet LoRA 6,415,248 B
