"""The calls generation makes on the resident SD 1.5 pipeline, outside the denoising loop itself.

Everything here leaves the pipeline as it found it, except :func:`use_dpm_solver`, which installs the sampler
once and for good.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionImg2ImgPipeline
from PIL import Image

_IMG2IMG: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def use_dpm_solver(pipe: Any) -> None:
    """Install DPM-Solver++ 2M Karras from the pipeline's own scheduler config (once; idempotent)."""
    if isinstance(pipe.scheduler, DPMSolverMultistepScheduler):
        return
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
    )


def img2img(pipe: Any) -> Any:
    """The img2img twin of ``pipe``, sharing its modules and scheduler (built once per pipeline)."""
    p = _IMG2IMG.get(pipe)
    if p is None:
        # Built from the same modules, not with ``from_pipe``: that casts every shared module to its ``dtype``
        # argument (default float32), which silently turned a resident fp16/bf16 pipeline into fp32.
        p = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
        p.set_progress_bar_config(disable=True)
        _IMG2IMG[pipe] = p
    p.scheduler = pipe.scheduler
    return p


def encode_text(pipe: Any, texts: Sequence[str]) -> torch.Tensor:
    """CLIP hidden states for ``texts`` (as the SD pipeline computes them, without clip-skip)."""
    tok, te = pipe.tokenizer, pipe.text_encoder
    enc = tok(list(texts), padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt")
    mask = enc.attention_mask.to(te.device) if getattr(te.config, "use_attention_mask", False) else None
    with torch.no_grad():
        out = te(enc.input_ids.to(te.device), attention_mask=mask)[0]
    return out.to(dtype=te.dtype)


def initial_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Starting latents of one image. CPU generators: the same seed gives the same image on any device."""
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


def model_name(pipe: Any) -> str:
    """The model's name for the PNG metadata: its hub id, or a local folder's name (never a local path)."""
    ref = getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path", "") or "unknown"
    return Path(str(ref)).name if Path(str(ref)).exists() else str(ref)


def decode(pipe: Any, latents: torch.Tensor, chunk: int = 4) -> list[Image.Image]:
    """Latents to PIL images, a few at a time (the VAE decoder is the memory peak of a big batch)."""
    out: list[Image.Image] = []
    vae = pipe.vae
    with torch.no_grad():
        for k in range(0, latents.shape[0], chunk):
            lat = latents[k : k + chunk].to(vae.device, vae.dtype) / vae.config.scaling_factor
            img = vae.decode(lat, return_dict=False)[0]
            out.extend(pipe.image_processor.postprocess(img, output_type="pil"))
    return out


def latent_upscale(upscaler: Any, latents: torch.Tensor, prompt: str, seed: int, steps: int) -> Image.Image:
    """×2 with the latent upscaler; ``prompt`` must be plain text (it has no TI slots)."""
    upscaler.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return upscaler(prompt=[prompt], image=latents, num_inference_steps=steps, guidance_scale=0.0,
                        generator=torch.Generator("cpu").manual_seed(seed)).images[0]


def check_safety(pipe: Any, images: list[Image.Image], checker: Any = None) -> tuple[list[Image.Image], list[bool]]:
    """Run the safety checker: ``checker`` False = off; a callable(images) -> flags; else the pipeline's own.
    Flagged images come back black, so nothing downstream can post them by mistake."""
    flags = [False] * len(images)
    if checker is False:
        return images, flags
    if callable(checker) and not isinstance(checker, torch.nn.Module):
        flags = [bool(f) for f in checker(images)]
    else:
        model = checker if isinstance(checker, torch.nn.Module) else getattr(pipe, "safety_checker", None)
        fe = getattr(pipe, "feature_extractor", None)
        if model is None or fe is None:
            return images, flags
        p = next(model.parameters())
        inp = fe(images, return_tensors="pt").pixel_values.to(p.device, p.dtype)
        arr = np.stack([np.asarray(im, np.float32) / 255.0 for im in images])
        with torch.no_grad():
            _, found = model(images=arr, clip_input=inp)
        flags = [bool(f) for f in found]
    return [Image.new("RGB", im.size) if f else im for im, f in zip(images, flags, strict=True)], flags
