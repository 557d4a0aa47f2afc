"""The base model's layer table: every UNet / text-encoder layer a LoRA may patch, with its shape. Torch-free.

The concept-file validator (``training.concept_file``) checks each LoRA layer of a file against this table, so
a file it accepts fits the pipeline the worker composes it on. Two sources give the same table:

- ``from_pipeline(pipe)``: walks the resident pipeline's ``nn.Linear`` / ``nn.Conv2d`` modules (the worker);
- ``from_configs(unet_config, text_config)``: the same layers computed from diffusers' ``UNet2DConditionModel``
  and transformers' ``CLIPTextModel`` configs (the bot, which has no model; ``for_hidden_size`` picks SD 1.5 or
  the tiny test model by ``Settings.base_hidden_size``). A test asserts both agree on SD 1.5 and the tiny model.

Text-encoder paths have no ``text_model.`` prefix (transformers 5's ``CLIPTextModel`` has none; older
transformers' prefix is stripped), as ``training.compose`` looks them up either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from training.models import SD15_TEXT, SD15_UNET
from training.tiny import TINY_HIDDEN

# training/tiny.py's build_tiny_pipeline, as configs (test_concept_file checks they match the built model).
TINY_UNET = {
    "block_out_channels": [32, 64], "layers_per_block": 1, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": TINY_HIDDEN,
}
TINY_TEXT = {"hidden_size": TINY_HIDDEN, "intermediate_size": 64, "num_hidden_layers": 3}


@dataclass(frozen=True)
class Layer:
    """A patchable layer: ``kernel`` is None for a Linear, (kh, kw) for a Conv2d."""

    fan_out: int
    fan_in: int
    kernel: tuple[int, int] | None = None

    def lora_shapes(self, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(down/A shape, up/B shape) of a rank-``rank`` LoRA on this layer, as peft builds it."""
        if self.kernel is None:
            return (rank, self.fan_in), (self.fan_out, rank)
        return (rank, self.fan_in, *self.kernel), (self.fan_out, rank, 1, 1)


@dataclass(frozen=True)
class BaseModel:
    """What a concept file must fit: the text width and the layer tables (``unet`` and ``text``)."""

    name: str
    hidden_size: int
    unet: Mapping[str, Layer] = field(default_factory=dict)
    text: Mapping[str, Layer] = field(default_factory=dict)

    def layers(self, part: str) -> Mapping[str, Layer]:
        return self.unet if part == "unet" else self.text


def _unet_layers(c: Mapping[str, Any]) -> dict[str, Layer]:
    ch = list(c["block_out_channels"])
    per_block = int(c.get("layers_per_block", 2))
    cross = int(c["cross_attention_dim"])
    temb = ch[0] * 4
    out: dict[str, Layer] = {
        "conv_in": Layer(ch[0], int(c.get("in_channels", 4)), (3, 3)),
        "time_embedding.linear_1": Layer(temb, ch[0]),
        "time_embedding.linear_2": Layer(temb, temb),
        "conv_out": Layer(int(c.get("out_channels", 4)), ch[0], (3, 3)),
    }

    def resnet(prefix: str, cin: int, cout: int) -> None:
        out[f"{prefix}.conv1"] = Layer(cout, cin, (3, 3))
        out[f"{prefix}.time_emb_proj"] = Layer(cout, temb)
        out[f"{prefix}.conv2"] = Layer(cout, cout, (3, 3))
        if cin != cout:
            out[f"{prefix}.conv_shortcut"] = Layer(cout, cin, (1, 1))

    def attention(prefix: str, dim: int) -> None:  # Transformer2DModel, conv projections, one block
        out[f"{prefix}.proj_in"] = Layer(dim, dim, (1, 1))
        out[f"{prefix}.proj_out"] = Layer(dim, dim, (1, 1))
        blk = f"{prefix}.transformer_blocks.0"
        for attn, kv in (("attn1", dim), ("attn2", cross)):
            out[f"{blk}.{attn}.to_q"] = Layer(dim, dim)
            out[f"{blk}.{attn}.to_k"] = Layer(dim, kv)
            out[f"{blk}.{attn}.to_v"] = Layer(dim, kv)
            out[f"{blk}.{attn}.to_out.0"] = Layer(dim, dim)
        out[f"{blk}.ff.net.0.proj"] = Layer(dim * 8, dim)  # GEGLU: 2 x (4 x dim)
        out[f"{blk}.ff.net.2"] = Layer(dim, dim * 4)

    for i, kind in enumerate(c["down_block_types"]):
        cin, cout = ch[max(i - 1, 0)], ch[i]
        for j in range(per_block):
            resnet(f"down_blocks.{i}.resnets.{j}", cin if j == 0 else cout, cout)
            if kind.startswith("CrossAttn"):
                attention(f"down_blocks.{i}.attentions.{j}", cout)
        if i < len(ch) - 1:
            out[f"down_blocks.{i}.downsamplers.0.conv"] = Layer(cout, cout, (3, 3))
    resnet("mid_block.resnets.0", ch[-1], ch[-1])
    attention("mid_block.attentions.0", ch[-1])
    resnet("mid_block.resnets.1", ch[-1], ch[-1])
    rev = ch[::-1]
    prev = rev[0]
    for i, kind in enumerate(c["up_block_types"]):
        cout, cin = rev[i], rev[min(i + 1, len(rev) - 1)]
        for j in range(per_block + 1):
            skip = cin if j == per_block else cout
            resnet(f"up_blocks.{i}.resnets.{j}", (prev if j == 0 else cout) + skip, cout)
            if kind.startswith("CrossAttn"):
                attention(f"up_blocks.{i}.attentions.{j}", cout)
        if i < len(rev) - 1:
            out[f"up_blocks.{i}.upsamplers.0.conv"] = Layer(cout, cout, (3, 3))
        prev = cout
    return out


def _text_layers(c: Mapping[str, Any]) -> dict[str, Layer]:
    h, inter = int(c["hidden_size"]), int(c["intermediate_size"])
    out: dict[str, Layer] = {}
    for n in range(int(c["num_hidden_layers"])):
        p = f"encoder.layers.{n}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[f"{p}.self_attn.{proj}"] = Layer(h, h)
        out[f"{p}.mlp.fc1"] = Layer(inter, h)
        out[f"{p}.mlp.fc2"] = Layer(h, inter)
    return out


def from_configs(unet: Mapping[str, Any], text: Mapping[str, Any], name: str) -> BaseModel:
    return BaseModel(name=name, hidden_size=int(text["hidden_size"]), unet=_unet_layers(unet), text=_text_layers(text))


SD15 = from_configs(SD15_UNET, SD15_TEXT, "Stable Diffusion 1.5")
TINY = from_configs(TINY_UNET, TINY_TEXT, "Stable Diffusion 1.5 (tiny test model)")
_BY_HIDDEN = {SD15.hidden_size: SD15, TINY.hidden_size: TINY}


def for_hidden_size(hidden_size: int) -> BaseModel:
    """The bot's base model, from ``Settings.base_hidden_size``."""
    try:
        return _BY_HIDDEN[hidden_size]
    except KeyError:
        raise ValueError(f"no layer table for a base model with text width {hidden_size} "
                         f"(known: {sorted(_BY_HIDDEN)})") from None


def _table(model: Any) -> dict[str, Layer]:
    out: dict[str, Layer] = {}
    for name, mod in model.named_modules():
        # Plain torch layers only (peft's wrappers share the class names but live in peft); duck-typed: torch-free.
        if type(mod).__name__ not in ("Linear", "Conv2d") or not type(mod).__module__.startswith("torch.nn"):
            continue
        parts = name.split(".")
        if any(p.startswith("lora_") for p in parts):
            continue
        if parts[-1] == "base_layer":
            parts = parts[:-1]
        path = ".".join(parts)
        path = path[len("text_model."):] if path.startswith("text_model.") else path
        shape = tuple(int(d) for d in mod.weight.shape)
        out[path] = Layer(shape[0], shape[1], tuple(shape[2:4]) if len(shape) == 4 else None)  # type: ignore[arg-type]
    return out


def from_pipeline(pipe: Any) -> BaseModel:
    """The resident pipeline's own table (the worker's truth), named after the preset it matches."""
    unet, text = _table(pipe.unet), _table(pipe.text_encoder)
    hidden = int(pipe.text_encoder.config.hidden_size)
    known = next((b.name for b in _BY_HIDDEN.values() if (b.hidden_size, b.unet, b.text) == (hidden, unet, text)),
                 "the worker's base model")
    return BaseModel(name=known, hidden_size=hidden, unet=unet, text=text)
