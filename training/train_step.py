"""The pieces of one training step that depend on no trainer state: latent caching, batch sampling, the loss,
the optimiser step and the autocast dtype.

Every random draw takes the trainer's own generator, so the process-wide RNGs do not matter to the result and a
resumed job (generator state restored) continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from training.config import TrainConfig
from training.data import images_to_tensor, loss_weights


@dataclass
class Batch:
    index: torch.Tensor  # (B,) sample indices into the cached latents
    captions: list[str]
    noise: torch.Tensor
    timesteps: torch.Tensor


def amp_dtype(config: TrainConfig, device: torch.device, weight_dtype: torch.dtype) -> torch.dtype | None:
    """Autocast dtype. Half-precision resident weights always autocast in their own dtype, on any device (CUDA,
    or a CPU pipeline loaded in bf16/fp16): the cached latents, noise and trainable tensors are fp32, and fp16
    weights under bf16 autocast would still send fp16 gradients through the ops autocast leaves alone (without
    a grad scaler). fp32 weights: on CUDA bf16/fp16 per config ('auto': bf16 where supported, else fp16), on
    CPU none."""
    if weight_dtype in (torch.float16, torch.bfloat16):
        return weight_dtype
    mp = config.mixed_precision
    if device.type != "cuda" or mp == "no":
        return None
    if mp == "fp16":
        return torch.float16
    if mp == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def encode_latents(pipe: Any, images: Sequence[Image.Image], masks: Sequence[Image.Image | None],
                   config: TrainConfig, device: torch.device,
                   dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Every crop (and its mirror image) through the VAE once: (latents fp32 CPU, latent-size loss weights,
    sample -> image index). The VAE mean, not a sample: the noise the loss adds dwarfs the VAE's own."""
    vae = pipe.vae
    pixels = images_to_tensor(images)
    latent_size = config.resolution // pipe.vae_scale_factor
    weights = loss_weights(masks, latent_size, config.mask_outside_weight, enabled=config.masked_loss)
    if config.mirror:
        pixels = torch.cat([pixels, pixels.flip(3)])
        weights = torch.cat([weights, weights.flip(3)])
    out = []
    with torch.no_grad(), autocast(device, dtype):
        for chunk in pixels.split(config.batch_size):
            dist = vae.encode(chunk.to(device, vae.dtype)).latent_dist
            out.append((dist.mean * vae.config.scaling_factor).float().cpu())
    n = len(images)
    return torch.cat(out), weights, [i % n for i in range(len(pixels))]


def sample_batch(gen: torch.Generator, latents: torch.Tensor, captions: list[list[str]], sample_image: list[int],
                 batch_size: int, num_train_timesteps: int) -> Batch:
    """Random samples, one caption variant each, noise and uniform timesteps — all from ``gen``."""
    index = torch.randint(0, len(latents), (batch_size,), generator=gen)
    chosen = []
    for i in index.tolist():
        variants = captions[sample_image[i]]
        chosen.append(variants[int(torch.randint(0, len(variants), (1,), generator=gen))])
    noise = torch.randn((batch_size, *latents.shape[1:]), generator=gen)
    timesteps = torch.randint(0, num_train_timesteps, (batch_size,), generator=gen)
    return Batch(index, chosen, noise, timesteps)


def set_learning_rates(optimizer: torch.optim.Optimizer, lrs: dict[str, float]) -> None:
    """Each named group's rate for this step; a group at 0 also stops taking gradients (frozen this phase)."""
    for group in optimizer.param_groups:
        group["lr"] = lrs[group["name"]]
        for p in group["params"]:
            p.requires_grad_(lrs[group["name"]] > 0)


def weighted_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, snr: torch.Tensor,
                  snr_gamma: float | None, v_prediction: bool) -> torch.Tensor:
    """MSE weighted by the face mask (normalised per sample, so a small face is not a small loss) and by
    min-SNR-γ, which keeps the easy low-noise timesteps from dominating."""
    err = (pred.float() - target.float()) ** 2 * weights
    per_sample = err.mean(dim=(1, 2, 3)) / weights.mean(dim=(1, 2, 3))
    if snr_gamma is not None:
        w = torch.clamp(snr, max=snr_gamma) / snr
        if v_prediction:
            w = torch.clamp(snr, max=snr_gamma) / (snr + 1)
        per_sample = per_sample * w.to(per_sample.device)
    return per_sample.mean()


def apply_gradients(optimizer: torch.optim.Optimizer, loss: torch.Tensor, scaler: torch.amp.GradScaler | None,
                    max_grad_norm: float) -> None:
    """Backward, clip the trainable tensors' gradients, step (through the grad scaler under fp16)."""
    optimizer.zero_grad(set_to_none=True)
    trainable = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
        optimizer.step()
