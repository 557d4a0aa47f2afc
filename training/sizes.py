"""Artifact sizes at real SD 1.5 size, computed without allocating a model or its weights.

The SD 1.5 UNet and CLIP text encoder are built on the ``meta`` device (shapes only, no memory) from their
published configs; the artifact's tensor shapes follow from the LoRA targets; and the file size from the
safetensors layout (8-byte header length + JSON header padded to 8 bytes + raw fp16 data), which
``safetensors_nbytes`` reproduces byte for byte (tested against the real serializer on the tiny model).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence

from training.config import TrainConfig

SD15_BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu", projection_dim=768)
SD15_HIDDEN = 768
_DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4}


def safetensors_nbytes(shapes: Mapping[str, Sequence[int]], metadata: Mapping[str, str] | None = None,
                       dtype: str = "F16") -> int:
    """Exact size of a safetensors file holding tensors of ``shapes`` (one dtype) and ``metadata``."""
    item = _DTYPE_BYTES[dtype]
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name in sorted(shapes):  # safetensors orders tensors by dtype, then name
        nbytes = math.prod(shapes[name]) * item
        header[name] = {"dtype": dtype, "shape": list(shapes[name]), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return 8 + len(text) + (-len(text)) % 8 + offset


@functools.lru_cache(maxsize=4)
def _meta_targets(which: str, targets: tuple[str, ...]) -> tuple[tuple[str, int, int], ...]:
    """(path, in, out) of the LoRA target layers of SD 1.5's UNet or text encoder, built on the meta device."""
    import torch

    from training.lora import find_targets

    with torch.device("meta"):
        if which == "unet":
            from diffusers import UNet2DConditionModel

            model = UNet2DConditionModel(**SD15_UNET)
        else:
            from transformers import CLIPTextConfig, CLIPTextModel

            model = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
    return tuple(find_targets(model, targets))


def artifact_shapes(config: TrainConfig, hidden_size: int = SD15_HIDDEN) -> dict[str, tuple[int, ...]]:
    """File keys -> shapes of the artifact ``config`` trains, at full SD 1.5 size."""
    shapes: dict[str, tuple[int, ...]] = {}
    if config.uses_ti:
        shapes["embeddings"] = (config.num_vectors, hidden_size)
    parts = []
    if config.uses_unet_lora:
        parts.append(("unet", "unet", config.unet_targets))
    if config.uses_text_lora:
        parts.append(("text_encoder", "text", config.text_targets))
    for prefix, which, targets in parts:
        for path, fan_in, fan_out in _meta_targets(which, tuple(targets)):
            shapes[f"{prefix}.{path}.lora_A.weight"] = (config.rank, fan_in)
            shapes[f"{prefix}.{path}.lora_B.weight"] = (fan_out, config.rank)
    return shapes


def default_metadata(config: TrainConfig, hidden_size: int = SD15_HIDDEN) -> dict[str, str]:
    """The metadata a trained artifact of ``config`` carries (typical values where they vary per job)."""
    from kitbooth import __version__
    from training.artifact import ConceptArtifact, artifact_metadata

    lora = config.uses_unet_lora or config.uses_text_lora
    art = ConceptArtifact(
        kind=config.kind, method=config.method, base_model=SD15_BASE_MODEL, hidden_size=hidden_size,
        tokens=list(config.tokens), embeddings=None, unet_lora={}, text_lora={},
        rank=config.rank if lora else None, alpha=config.lora_alpha if lora else None, steps=config.steps,
        created="2026-01-01T00:00:00Z", version=__version__,
        extra={"resolution": str(config.resolution), "images": "10",
               "init_word": config.init_word if config.uses_ti else "", "loss": "0.12345"},
    )
    return artifact_metadata(art)


def artifact_bytes_full_size(config: TrainConfig) -> int:
    """Bytes of the artifact ``config`` trains on real SD 1.5 (fp16 tensors + header), without allocating."""
    return safetensors_nbytes(artifact_shapes(config), default_metadata(config))


def parameters_full_size(config: TrainConfig) -> int:
    """Trainable parameters of ``config`` at full SD 1.5 size."""
    return sum(math.prod(s) for s in artifact_shapes(config).values())
