"""A tiny, randomly initialised, SD-1.5-shaped pipeline built offline: the base model of every test.

Same architecture family and the exact SD 1.5 tokenizer (rebuilt from the CLIP BPE file shipped by
open-clip-torch), so token ids, trigger handling and artifact key sets behave as at full size; only the
widths are tiny (hidden size 32 instead of 768). Deterministic: the same seed gives the same weights.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from pathlib import Path

TINY_HIDDEN = 32
_VOCAB_SIZE = 49408
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    # OpenAI CLIP's reversible byte -> printable unicode map.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def clip_bpe_path() -> Path:
    """Locate ``bpe_simple_vocab_16e6.txt.gz`` inside open-clip-torch without importing it."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "open-clip-torch is needed for the offline CLIP tokenizer: pip install --no-deps open-clip-torch"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise RuntimeError(f"CLIP BPE file not found at {path}")
    return path


def write_clip_tokenizer(out_dir: str | Path) -> Path:
    """Write SD 1.5's tokenizer files (vocab.json, merges.txt, configs) to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(clip_bpe_path()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += [_BOS, _EOS]
    assert len(vocab) == _VOCAB_SIZE, len(vocab)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), "utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", "utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": _BOS, "eos_token": _EOS,
        "unk_token": _EOS, "pad_token": _EOS, "do_lower_case": True, "add_prefix_space": False,
        "errors": "replace", "clean_up_tokenization_spaces": True,
    }, indent=2), "utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": _BOS, "eos_token": _EOS, "unk_token": _EOS, "pad_token": _EOS}, indent=2), "utf-8")
    return out


def build_tiny_pipeline(seed: int = 0):
    """Build the tiny StableDiffusionPipeline in memory (random weights, seeded)."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_HIDDEN, attention_head_dim=8, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=32, sample_size=64, scaling_factor=0.18215,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=TINY_HIDDEN, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=77, vocab_size=_VOCAB_SIZE, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=TINY_HIDDEN,
    ))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp))
    scheduler = PNDMScheduler.from_config({
        "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "skip_prk_steps": True, "steps_offset": 1,
        "set_alpha_to_one": False, "prediction_type": "epsilon", "clip_sample": False,
    })
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def make_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Build and save the tiny model as a diffusers folder (skipped when it is already there)."""
    out = Path(out_dir)
    if (out / "model_index.json").is_file() and (out / "unet").is_dir():
        return out
    import shutil

    pipe = build_tiny_pipeline(seed)
    # Per-process temp folder: parallel test workers may build it at the same time; the first rename wins.
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    pipe.save_pretrained(tmp, safe_serialization=True)
    if (out / "model_index.json").is_file() and (out / "unet").is_dir():
        shutil.rmtree(tmp)
        return out
    if out.exists():
        shutil.rmtree(out)
    try:
        tmp.rename(out)
    except OSError:  # another process renamed its copy in between
        shutil.rmtree(tmp, ignore_errors=True)
    return out
