"""The pieces of one training step every trainer shares: the batch source (``BatchSource``: latent caching,
batch sampling, the noise-prediction loss and their checkpoint state), the optimiser step and the autocast dtype.
A trainer only says what trains (TI vectors, LoRA, a hypernetwork...) and how the text is encoded.

Every random draw takes the trainer's own generator, so the process-wide RNGs do not matter to the result and a
resumed job (generator state restored) continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDPMScheduler
from PIL import Image

from training.config import TrainConfig
from training.data import expand_captions, images_to_tensor, loss_weights, mask_resize, square_resize


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


class BatchSource:
    """The training data of one job, shared by every trainer: the images (centre-cropped to the resolution),
    their face masks and caption variants, the VAE latents cached on first use, the batch sampler with the
    job's own generator (``config.seed + 1``), the fixed batch of ``overfit_fixed_batch``, and the
    noise-prediction loss. ``state()``/``load()`` carry all of it in a checkpoint (a resumed job needs no
    images)."""

    def __init__(self, pipe: Any, images: Sequence[Image.Image], config: TrainConfig, device: torch.device,
                 dtype: torch.dtype | None, *, masks: Sequence[Image.Image | None] | None = None,
                 captions: Sequence[str | None] | None = None):
        if masks is not None and len(masks) != len(images):
            raise ValueError("masks must match images one to one")
        self.pipe, self.config, self.device, self.dtype = pipe, config, device, dtype
        res = config.resolution
        self.images = [square_resize(im, res) for im in images]
        self.masks = [mask_resize(m, res) if m is not None else None for m in (masks or [None] * len(images))]
        self.captions = expand_captions(captions, len(images), config.caption_templates)
        self.gen = torch.Generator().manual_seed(config.seed + 1)
        self.latents: torch.Tensor | None = None  # (M, 4, h, w) fp32 CPU
        self.weights: torch.Tensor | None = None  # (M, 1, h, w)
        self.sample_image: list[int] = []  # sample -> image index (captions)
        self.fixed: Batch | None = None
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        acp = self.noise_scheduler.alphas_cumprod.float()
        self.snr = acp / (1.0 - acp)

    def ensure(self) -> None:
        """Encode the images once (a no-op after a checkpoint was loaded)."""
        if self.latents is not None:
            return
        if not self.images:
            raise ValueError("no training images (and no checkpoint to resume from)")
        self.latents, self.weights, self.sample_image = encode_latents(
            self.pipe, self.images, self.masks, self.config, self.device, self.dtype)

    def sample(self) -> Batch:
        if self.fixed is not None:
            return self.fixed
        assert self.latents is not None
        batch = sample_batch(self.gen, self.latents, self.captions, self.sample_image, self.config.batch_size,
                             self.noise_scheduler.config.num_train_timesteps)
        if self.config.overfit_fixed_batch:
            self.fixed = batch
        return batch

    def loss(self, unet: Any, b: Batch, encode: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """The weighted noise (or velocity) prediction loss of batch ``b``; ``encode`` turns its captions into
        the text embedding (the trainer's, so TI vectors or a text LoRA take part)."""
        assert self.latents is not None and self.weights is not None
        sched = self.noise_scheduler
        latents = self.latents[b.index].to(self.device)
        weights = self.weights[b.index].to(self.device)
        noise, t = b.noise.to(self.device), b.timesteps.to(self.device)
        noisy = sched.add_noise(latents, noise, t)
        v_prediction = sched.config.prediction_type == "v_prediction"
        target = sched.get_velocity(latents, noise, t) if v_prediction else noise
        with autocast(self.device, self.dtype):
            pred = unet(noisy, t, encode(b.captions), return_dict=False)[0]
        return weighted_loss(pred, target, weights, self.snr[b.timesteps], self.config.snr_gamma, v_prediction)

    def state(self) -> dict[str, Any]:
        self.ensure()
        f = self.fixed
        return {
            "generator": self.gen.get_state(), "latents": self.latents, "weights": self.weights,
            "sample_image": list(self.sample_image), "captions": json.dumps(self.captions),
            "fixed": None if f is None else {"index": f.index, "captions": f.captions, "noise": f.noise.cpu(),
                                             "timesteps": f.timesteps},
        }

    def load(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["generator"])
        self.latents, self.weights = state["latents"], state["weights"]
        self.sample_image = list(state["sample_image"])
        self.captions = json.loads(state["captions"])
        f = state["fixed"]
        self.fixed = None if f is None else Batch(f["index"], list(f["captions"]), f["noise"], f["timesteps"])
