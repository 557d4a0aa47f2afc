"""The one training loop behind TI, LoRA and pivotal tuning, run in slices on the worker's resident pipeline.

``Trainer`` touches the shared pipeline only inside ``run()``: it installs a TI hook on the token embedding and
injects its LoRA adapter(s) under a unique name, freezes the base weights, optionally turns on gradient
checkpointing / xformers / TF32, and undoes all of it in ``finally`` — so between slices (and after ``close()``)
the pipeline is bit-identical to what it was. The trainable tensors, the optimizer and the cached latents are the
trainer's own and live on between ``run()`` calls; ``state_dict()``/``load_state_dict()`` carry them across
processes (a resumed job in a new Trainer on a freshly loaded pipeline ends with the same tensors as an
uninterrupted one).

One step: sample a batch of cached latents (originals and mirror images) and a caption variant each, add noise
at a uniform timestep, predict it with the UNet given the caption's text embedding (cached when the text side is
frozen), and take the MSE — weighted by the face mask at latent size and by min-SNR-γ — then one AdamW step on
whatever the phase trains (see ``training.pivotal``). All sampling draws from the trainer's own generator, so the
process-wide RNGs do not matter to the result.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import torch
from diffusers import DDPMScheduler
from PIL import Image

from kitbooth import __version__
from training import checkpoint as ckpt
from training.artifact import ConceptArtifact
from training.caption_embeddings import CaptionEmbeddings
from training.config import TrainConfig
from training.data import expand_captions, mask_resize, square_resize
from training.lora import LoraParams
from training.pivotal import learning_rates, phase_at
from training.textual_inversion import TokenVectors
from training.train_pipeline import training_mode
from training.train_step import (
    Batch,
    amp_dtype,
    apply_gradients,
    autocast,
    encode_latents,
    sample_batch,
    set_learning_rates,
    weighted_loss,
)

log = logging.getLogger(__name__)

# Config fields that may differ between the job that wrote a checkpoint and the one resuming it.
_RESUME_FREE = {"checkpoint_every", "mixed_precision", "gradient_checkpointing", "use_xformers", "allow_tf32"}


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    loss: float
    eta_seconds: float


class Trainer:
    """One training job (TI, LoRA or pivotal, from ``config.method``) on a resident ``StableDiffusionPipeline``.

    ``images`` are RGB PIL images (centre-cropped and resized to ``config.resolution`` if they are not already);
    ``masks`` optional "L" face masks for the masked loss; ``captions`` optional per-image captions with ``{}``
    (or ``{trigger}``) where the concept goes. ``images`` may be empty when the job resumes from a checkpoint
    (the checkpoint carries the cached latents).
    """

    def __init__(
        self,
        pipe,
        images: Sequence[Image.Image],
        config: TrainConfig,
        *,
        masks: Sequence[Image.Image | None] | None = None,
        captions: Sequence[str | None] | None = None,
        base_model_id: str = "",
        progress: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_checkpoint: Callable[[int, bytes], None] | None = None,
    ):
        if masks is not None and len(masks) != len(images):
            raise ValueError("masks must match images one to one")
        self.pipe = pipe
        self.config = config
        self.base_model_id = base_model_id
        self.progress = progress
        self.should_stop = should_stop
        self.on_checkpoint = on_checkpoint
        self.device = pipe.unet.device
        self.stopped = False
        self._closed = False
        self._step = 0
        self._last_loss = float("nan")

        res = config.resolution
        self._images = [square_resize(im, res) for im in images]
        self._masks = [mask_resize(m, res) if m is not None else None for m in (masks or [None] * len(images))]
        self._captions = expand_captions(captions, len(images), config.caption_templates)

        # Cached data (filled lazily by _ensure_latents, or by load_state_dict).
        self._latents: torch.Tensor | None = None  # (M, 4, h, w) fp32 CPU
        self._weights: torch.Tensor | None = None  # (M, 1, h, w)
        self._sample_image: list[int] = []  # sample -> image index (captions)
        self._fixed: Batch | None = None

        init_gen = torch.Generator().manual_seed(config.seed)
        self._gen = torch.Generator().manual_seed(config.seed + 1)
        self.ti: TokenVectors | None = None
        self.unet_lora: LoraParams | None = None
        self.text_lora: LoraParams | None = None
        if config.uses_ti:
            self.ti = TokenVectors(pipe.text_encoder, pipe.tokenizer, config.num_vectors, config.init_word)
            self.ti.to(self.device)
        if config.uses_unet_lora:
            self.unet_lora = LoraParams(pipe.unet, config.unet_targets, config.rank, config.lora_alpha,
                                        generator=init_gen, device=self.device)
        if config.uses_text_lora:
            self.text_lora = LoraParams(pipe.text_encoder, config.text_targets, config.rank, config.lora_alpha,
                                        generator=init_gen, device=self.device)
        self._text = CaptionEmbeddings(pipe.tokenizer, pipe.text_encoder, config.tokens, self.ti, self.device)
        self._groups = self._param_groups()
        self.optimizer = torch.optim.AdamW(
            [{"params": ps, "name": name, "weight_decay": 0.0 if name == "ti" else config.weight_decay, "lr": 0.0}
             for name, ps in self._groups.items()],
            lr=0.0, betas=(0.9, 0.999), eps=1e-8,
        )
        self._amp_dtype = amp_dtype(config, self.device, pipe.unet.dtype)
        self.scaler = torch.amp.GradScaler(self.device.type) if self._amp_dtype == torch.float16 else None

        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        acp = self.noise_scheduler.alphas_cumprod.float()
        self._snr = acp / (1.0 - acp)

    # -- public API ---------------------------------------------------------------------------------
    @classmethod
    def from_photos(cls, pipe, photos: Sequence[Any], config: TrainConfig, **kwargs: Any) -> Trainer:
        """Build from ``training.faces`` prepared photos (objects with ``.image``, ``.mask``, ``.caption``)."""
        return cls(pipe, [p.image for p in photos], config, masks=[getattr(p, "mask", None) for p in photos],
                   captions=[getattr(p, "caption", None) for p in photos], **kwargs)

    @property
    def step(self) -> int:
        return self._step

    @property
    def done(self) -> bool:
        return self._step >= self.config.steps

    @property
    def last_loss(self) -> float:
        return self._last_loss

    def run(self, *, max_steps: int | None = None, max_seconds: float | None = None) -> int:
        """Train until the job is done, ``max_steps`` more steps were taken, ``max_seconds`` passed, or
        ``should_stop()`` returned True (checked before every step). Returns the step reached."""
        if self._closed:
            raise RuntimeError("trainer is closed")
        self.stopped = False
        target = self.config.steps if max_steps is None else min(self.config.steps, self._step + max_steps)
        if self._step >= target:
            return self._step
        started, first = time.monotonic(), self._step
        self._ensure_latents()
        with self._attached():
            while self._step < target:
                if self.should_stop is not None and self.should_stop():
                    self.stopped = True
                    break
                if max_seconds is not None and time.monotonic() - started >= max_seconds:
                    break
                loss = self._train_step()
                self._step += 1
                self._last_loss = loss
                if self.progress is not None:
                    per_step = (time.monotonic() - started) / (self._step - first)
                    self.progress(Progress(self._step, self.config.steps, loss,
                                           per_step * (self.config.steps - self._step)))
                every = self.config.checkpoint_every
                if self.on_checkpoint is not None and every > 0 and self._step % every == 0 and not self.done:
                    self.on_checkpoint(self._step, self.state_dict())
        log.info("trained %s/%s %s steps %d->%d in %.2fs (loss %.4f)", self.config.kind, self.config.method,
                 "stopped" if self.stopped else "slice", first, self._step, time.monotonic() - started,
                 self._last_loss)
        return self._step

    def state_dict(self) -> bytes:
        """A checkpoint (bytes): trainable tensors, optimizer, scaler, generator and RNG states, step, cached
        latents and captions. Load it with ``load_state_dict`` in this or a new Trainer."""
        self._ensure_latents()
        fixed = None
        if self._fixed is not None:
            f = self._fixed
            fixed = {"index": f.index, "captions": f.captions, "noise": f.noise.cpu(), "timesteps": f.timesteps}
        return ckpt.dumps({
            "config": self.config.to_json(),
            "step": self._step,
            "params": {k: v.detach().cpu().clone() for k, v in self._named_params().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "generator": self._gen.get_state(),
            "rng": ckpt.capture_rng(),
            "latents": self._latents,
            "weights": self._weights,
            "sample_image": list(self._sample_image),
            "captions": json.dumps(self._captions),
            "fixed": fixed,
        })

    def load_state_dict(self, data: bytes) -> None:
        """Resume from ``state_dict()`` bytes (refused if they come from a job with another config)."""
        state = ckpt.loads(data)
        theirs = TrainConfig.from_json(state["config"])
        diff = [k for k, v in vars(self.config).items() if k not in _RESUME_FREE and getattr(theirs, k) != v]
        if diff:
            raise ckpt.BadCheckpoint(f"checkpoint is from a job with another config ({', '.join(sorted(diff))})")
        params = self._named_params()
        if set(params) != set(state["params"]):
            raise ckpt.BadCheckpoint("checkpoint tensors do not match this trainer (another base model?)")
        with torch.no_grad():
            for k, p in params.items():
                src = state["params"][k]
                if src.shape != p.shape:
                    raise ckpt.BadCheckpoint(f"checkpoint tensor {k} has shape {tuple(src.shape)}, "
                                             f"expected {tuple(p.shape)} (another base model?)")
                p.copy_(src.to(p.device, p.dtype))
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
        self._text.clear()
        self._step = int(state["step"])

    def artifact(self) -> ConceptArtifact:
        """The concept trained so far, as a ``ConceptArtifact`` (fp32 CPU tensors)."""
        c = self.config
        return ConceptArtifact(
            kind=c.kind, method=c.method, base_model=self.base_model_id,
            hidden_size=int(self.pipe.text_encoder.config.hidden_size), tokens=list(c.tokens),
            embeddings=self.ti.vectors.detach().float().cpu().clone() if self.ti is not None else None,
            unet_lora=self.unet_lora.peft_state_dict() if self.unet_lora is not None else {},
            text_lora=self.text_lora.peft_state_dict() if self.text_lora is not None else {},
            rank=c.rank if (c.uses_unet_lora or c.uses_text_lora) else None,
            alpha=c.lora_alpha if (c.uses_unet_lora or c.uses_text_lora) else None,
            steps=self._step, created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), version=__version__,
            extra={"resolution": str(c.resolution), "images": str(len(self._sample_image) or len(self._images)),
                   "init_word": c.init_word if c.uses_ti else "", "loss": f"{self._last_loss:.5f}"},
        )

    def close(self) -> None:
        """Release the trainer's tensors. The pipeline is already restored (it is only modified inside run())."""
        self._closed = True
        self._text.clear()
        self.optimizer.state.clear()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------------
    def _param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        groups: dict[str, list[torch.nn.Parameter]] = {}
        if self.ti is not None:
            groups["ti"] = [self.ti.vectors]
        if self.unet_lora is not None:
            groups["unet"] = list(self.unet_lora.named_tensors().values())
        if self.text_lora is not None:
            groups["text"] = list(self.text_lora.named_tensors().values())
        return groups

    def _named_params(self) -> dict[str, torch.nn.Parameter]:
        out: dict[str, torch.nn.Parameter] = {}
        if self.ti is not None:
            out["ti.vectors"] = self.ti.vectors
        if self.unet_lora is not None:
            out.update({f"unet.{k}": v for k, v in self.unet_lora.named_tensors().items()})
        if self.text_lora is not None:
            out.update({f"text.{k}": v for k, v in self.text_lora.named_tensors().items()})
        return out

    def _ensure_latents(self) -> None:
        if self._latents is not None:
            return
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

    def _train_step(self) -> float:
        assert self._latents is not None and self._weights is not None
        cfg = self.config
        phase = phase_at(cfg, self._step)
        set_learning_rates(self.optimizer, learning_rates(cfg, self._step))
        b = self._sample()
        latents = self._latents[b.index].to(self.device)
        weights = self._weights[b.index].to(self.device)
        noise = b.noise.to(self.device)
        t = b.timesteps.to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        v_prediction = self.noise_scheduler.config.prediction_type == "v_prediction"
        target = self.noise_scheduler.get_velocity(latents, noise, t) if v_prediction else noise
        with autocast(self.device, self._amp_dtype):
            enc = self._text(b.captions, text_frozen=phase.text_frozen)
            pred = self.pipe.unet(noisy, t, enc, return_dict=False)[0]
        loss = weighted_loss(pred, target, weights, self._snr[b.timesteps], cfg.snr_gamma, v_prediction)
        apply_gradients(self.optimizer, loss, self.scaler, cfg.max_grad_norm)
        return float(loss.detach())

    def _attached(self) -> AbstractContextManager[None]:
        """Everything ``run()`` changes on the resident pipeline, undone on exit (see ``training.train_pipeline``)."""
        pipe = self.pipe
        attachments: list[AbstractContextManager] = []
        if self.unet_lora is not None:
            attachments.append(self.unet_lora.attached(pipe.unet))
        if self.text_lora is not None:
            attachments.append(self.text_lora.attached(pipe.text_encoder))
        if self.ti is not None:
            attachments.append(self.ti.attached(pipe.text_encoder))
        return training_mode(pipe, self.config, self.device, attachments)
