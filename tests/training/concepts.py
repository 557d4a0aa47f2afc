"""Helpers for artifact/format tests: synthetic concepts with the tiny model's exact LoRA shapes."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from training.artifact import ConceptArtifact
from training.lora import find_targets


def make_artifact(  # values are fp16-exact, so files written in fp16 hold exactly these tensors
    pipe, *, method: str = "pivotal", text: bool = False, rank: int = 4, alpha: float | None = None,
                  seed: int = 0, kind: str = "face", scale: float = 0.3) -> ConceptArtifact:
    g = torch.Generator().manual_seed(seed)
    hidden = pipe.text_encoder.config.hidden_size

    def lora(model, targets):
        out = {}
        for path, fan_in, fan_out in find_targets(model, targets):
            out[f"{path}.lora_A.weight"] = fp16(torch.randn(rank, fan_in, generator=g) * scale)
            out[f"{path}.lora_B.weight"] = fp16(torch.randn(fan_out, rank, generator=g) * scale)
        return out

    has_ti = method in ("ti", "pivotal")
    has_lora = method in ("lora", "pivotal")
    return ConceptArtifact(
        kind=kind, method=method, base_model="tiny", hidden_size=hidden,
        tokens=[f"<kb-{kind}-0>", f"<kb-{kind}-1>"] if has_ti else ["zwkit"],
        embeddings=fp16(torch.randn(2, hidden, generator=g)) if has_ti else None,
        unet_lora=lora(pipe.unet, ("to_q", "to_k", "to_v", "to_out.0")) if has_lora else {},
        text_lora=lora(pipe.text_encoder, ("q_proj", "k_proj", "v_proj", "out_proj")) if text else {},
        rank=rank if has_lora or text else None,
        alpha=(alpha if alpha is not None else float(rank)) if has_lora or text else None,
        steps=500, created="2026-11-25T10:00:00Z", version="0.1.0", extra={"resolution": "64"},
    )


def fp16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float16).float()


def load_pipe(model_dir, **kwargs):
    """A fresh tiny pipeline (no progress bars); ``kwargs`` go to ``from_pretrained``."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, local_files_only=True, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def synthetic_images() -> list[Image.Image]:
    """Three 64×64 training images with a dominant colour each (deterministic)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(3):
        arr = np.zeros((64, 64, 3), np.uint8)
        arr[..., i] = 200
        arr += rng.integers(0, 40, (64, 64, 3), dtype=np.uint8)
        out.append(Image.fromarray(arr))
    return out
