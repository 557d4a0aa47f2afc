"""Training a hypernetwork on the resident pipeline, with the shared step pieces of ``training.train_step``.

Same recipe as ``training.loop.Trainer`` (cached VAE latents and mirrors, the caption templates with the trigger
word, uniform timesteps, the face-masked min-SNR-γ MSE, AdamW with clipping, every draw from the trainer's own
generator) — only the trainable tensors differ: the hypernetwork's MLPs, applied at strength 1 (A1111 ignores the
multiplier while training). The base weights are frozen by ``training_mode`` and the hooks are removed after each
``run()``, so between slices the pipeline is the base model, bit for bit. The text side never trains, so caption
embeddings are computed once. Wiring it into ``TrainConfig.method`` / the worker is left to the callers: this
takes a ``TrainConfig`` for the shared fields (resolution, batch, steps, seed, loss, precision) and ignores its
method.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence

import torch
from diffusers import DDPMScheduler
from PIL import Image

from training import checkpoint as ckpt
from training.caption_embeddings import CaptionEmbeddings
from training.config import TrainConfig
from training.data import expand_captions, mask_resize, square_resize
from training.hypernetwork import Hypernetwork, HypernetworkConfig, context_sizes
from training.train_pipeline import training_mode
from training.train_step import (
    Batch,
    amp_dtype,
    apply_gradients,
    autocast,
    encode_latents,
    sample_batch,
    weighted_loss,
)

log = logging.getLogger(__name__)

DEFAULT_LR = 1e-5  # A1111's default hypernetwork learning rate is 0.00001; tests pass a higher one


class HypernetworkTrainer:
    """Train ``Hypernetwork(hyper_config)`` (sizes default to the UNet's cross-attention width) on ``images``
    (which may be empty when the job resumes from ``load_state_dict``: the checkpoint carries the latents)."""

    def __init__(self, pipe, images: Sequence[Image.Image], config: TrainConfig,
                 hyper_config: HypernetworkConfig | None = None, *, masks: Sequence[Image.Image | None] | None = None,
                 captions: Sequence[str | None] | None = None, lr: float = DEFAULT_LR, name: str = "hypernetwork",
                 base_model_id: str = "", progress: Callable[[int, float], None] | None = None):
        if masks is not None and len(masks) != len(images):
            raise ValueError("masks must match images one to one")
        self.pipe, self.config, self.progress = pipe, config, progress
        self.device = pipe.unet.device
        hyper_config = hyper_config or HypernetworkConfig(sizes=context_sizes(pipe.unet))
        self.network = Hypernetwork(hyper_config, name=name, sd_checkpoint_name=base_model_id or None,
                                    generator=torch.Generator().manual_seed(config.seed)).to(self.device)
        res = config.resolution
        self._images = [square_resize(im, res) for im in images]
        self._masks = [mask_resize(m, res) if m is not None else None for m in (masks or [None] * len(images))]
        self._captions = expand_captions(captions, len(images), config.caption_templates)
        self._gen = torch.Generator().manual_seed(config.seed + 1)
        self._latents: torch.Tensor | None = None
        self._weights: torch.Tensor | None = None
        self._sample_image: list[int] = []
        self._fixed: Batch | None = None
        self._text = CaptionEmbeddings(pipe.tokenizer, pipe.text_encoder, [config.lora_trigger], None, self.device)
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=lr, weight_decay=config.weight_decay)
        self._amp_dtype = amp_dtype(config, self.device, pipe.unet.dtype)
        self.scaler = torch.amp.GradScaler(self.device.type) if self._amp_dtype == torch.float16 else None
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        acp = self.noise_scheduler.alphas_cumprod.float()
        self._snr = acp / (1.0 - acp)
        self.last_loss = float("nan")

    @property
    def step(self) -> int:
        return self.network.step

    @property
    def done(self) -> bool:
        return self.network.step >= self.config.steps

    def run(self, *, max_steps: int | None = None) -> int:
        """Train until done or ``max_steps`` more steps; returns the step reached (the pipeline is restored)."""
        target = self.config.steps if max_steps is None else min(self.config.steps, self.step + max_steps)
        if self.step >= target:
            return self.step
        started, first = time.monotonic(), self.step
        self._ensure_latents()
        self.network.train()
        try:
            with training_mode(self.pipe, self.config, self.device, [self.network.applied(self.pipe.unet, 1.0)]):
                while self.step < target:
                    self.last_loss = self._train_step()
                    self.network.step += 1
                    if self.progress is not None:
                        self.progress(self.step, self.last_loss)
        finally:
            self.network.eval()
        log.info("trained hypernetwork steps %d->%d in %.2fs (loss %.4f)", first, self.step,
                 time.monotonic() - started, self.last_loss)
        return self.step

    def state_dict(self) -> bytes:
        """A checkpoint (``training.checkpoint`` bytes, weights_only-loadable) to resume in a new trainer."""
        self._ensure_latents()
        f = self._fixed
        return ckpt.dumps({
            "config": self.config.to_json(), "hyper": json.dumps(dataclasses.asdict(self.network.config)),
            "step": self.step, "params": {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()},
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else {},
            "generator": self._gen.get_state(), "rng": ckpt.capture_rng(), "latents": self._latents,
            "weights": self._weights, "sample_image": list(self._sample_image), "captions": json.dumps(self._captions),
            "fixed": None if f is None else {"index": f.index, "captions": f.captions, "noise": f.noise,
                                             "timesteps": f.timesteps},
        })

    def load_state_dict(self, data: bytes) -> None:
        """Resume from ``state_dict()`` bytes (refused if they come from a job with another config)."""
        state = ckpt.loads(data)
        if state["config"] != self.config.to_json() or state["hyper"] != json.dumps(
                dataclasses.asdict(self.network.config)):
            raise ckpt.BadCheckpoint("checkpoint is from a hypernetwork job with another config")
        try:
            self.network.load_state_dict(state["params"])
        except RuntimeError:
            raise ckpt.BadCheckpoint("checkpoint tensors do not match this hypernetwork (another base model?)") from None
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self._gen.set_state(state["generator"])
        ckpt.restore_rng(state["rng"])
        self._latents, self._weights = state["latents"], state["weights"]
        self._sample_image = list(state["sample_image"])
        self._captions = json.loads(state["captions"])
        f = state["fixed"]
        self._fixed = None if f is None else Batch(f["index"], list(f["captions"]), f["noise"], f["timesteps"])
        self.network.step = int(state["step"])

    def fixed_batch_loss(self) -> float:
        """The loss on the trainer's fixed batch (``overfit_fixed_batch``) without training — for checks."""
        self._ensure_latents()
        with torch.no_grad(), training_mode(self.pipe, self.config, self.device,
                                            [self.network.applied(self.pipe.unet, 1.0)]):
            return float(self._loss(self._sample()))

    def _ensure_latents(self) -> None:
        if self._latents is None:
            if not self._images:
                raise ValueError("no training images (and no checkpoint to resume from)")
            self._latents, self._weights, self._sample_image = encode_latents(
                self.pipe, self._images, self._masks, self.config, self.device, self._amp_dtype)

    def _sample(self) -> Batch:
        if self._fixed is not None:
            return self._fixed
        assert self._latents is not None
        batch = sample_batch(self._gen, self._latents, self._captions, self._sample_image, self.config.batch_size,
                             self.noise_scheduler.config.num_train_timesteps)
        if self.config.overfit_fixed_batch:
            self._fixed = batch
        return batch

    def _loss(self, b: Batch) -> torch.Tensor:
        assert self._latents is not None and self._weights is not None
        latents = self._latents[b.index].to(self.device)
        weights = self._weights[b.index].to(self.device)
        noise, t = b.noise.to(self.device), b.timesteps.to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        v_prediction = self.noise_scheduler.config.prediction_type == "v_prediction"
        target = self.noise_scheduler.get_velocity(latents, noise, t) if v_prediction else noise
        with autocast(self.device, self._amp_dtype):
            enc = self._text(b.captions, text_frozen=True)
            pred = self.pipe.unet(noisy, t, enc, return_dict=False)[0]
        return weighted_loss(pred, target, weights, self._snr[b.timesteps], self.config.snr_gamma, v_prediction)

    def _train_step(self) -> float:
        loss = self._loss(self._sample())
        apply_gradients(self.optimizer, loss, self.scaler, self.config.max_grad_norm)
        return float(loss.detach())
