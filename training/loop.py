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

import contextlib
import importlib.util
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import torch
from PIL import Image

from training import checkpoint as ckpt
from training.config import TrainConfig
from training.data import (
    TokenizedCaption,
    expand_captions,
    images_to_tensor,
    loss_weights,
    mask_resize,
    square_resize,
    tokenize_caption,
)
from training.lora import LoraParams
from training.pivotal import Phase, learning_rates, phase_at
from training.textual_inversion import TokenVectors

log = logging.getLogger(__name__)

# Config fields that may differ between the job that wrote a checkpoint and the one resuming it.
_RESUME_FREE = {"checkpoint_every", "mixed_precision", "gradient_checkpointing", "use_xformers", "allow_tf32"}


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    loss: float
    eta_seconds: float


@dataclass
class _Batch:
    index: torch.Tensor  # (B,) sample indices into the cached latents
    captions: list[str]
    noise: torch.Tensor
    timesteps: torch.Tensor


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
        self._fixed: _Batch | None = None
        self._text_cache: dict[str, torch.Tensor] = {}
        self._token_cache: dict[str, TokenizedCaption] = {}

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
        self._groups = self._param_groups()
        self.optimizer = torch.optim.AdamW(
            [{"params": ps, "name": name, "weight_decay": 0.0 if name == "ti" else config.weight_decay, "lr": 0.0}
             for name, ps in self._groups.items()],
            lr=0.0, betas=(0.9, 0.999), eps=1e-8,
        )
        self._amp_dtype = _amp_dtype(config, self.device, pipe.unet.dtype)
        self.scaler = torch.amp.GradScaler(self.device.type) if self._amp_dtype == torch.float16 else None

        from diffusers import DDPMScheduler

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
        self._fixed = None if f is None else _Batch(f["index"], list(f["captions"]), f["noise"], f["timesteps"])
        self._text_cache.clear()
        self._step = int(state["step"])

    def artifact(self):
        """The concept trained so far, as a ``ConceptArtifact`` (fp32 CPU tensors)."""
        from kitbooth import __version__
        from training.artifact import ConceptArtifact

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
        self._text_cache.clear()
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

    def _autocast(self):
        if self._amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._amp_dtype)

    def _ensure_latents(self) -> None:
        """Encode every crop and its mirror image once (VAE mean × scaling factor), plus latent-size weights."""
        if self._latents is not None:
            return
        if not self._images:
            raise ValueError("no training images (and no checkpoint to resume from)")
        vae = self.pipe.vae
        pixels = images_to_tensor(self._images)
        latent_size = self.config.resolution // self.pipe.vae_scale_factor
        weights = loss_weights(self._masks, latent_size, self.config.mask_outside_weight,
                               enabled=self.config.masked_loss)
        if self.config.mirror:
            pixels = torch.cat([pixels, pixels.flip(3)])
            weights = torch.cat([weights, weights.flip(3)])
        out = []
        with torch.no_grad(), self._autocast():
            for chunk in pixels.split(self.config.batch_size):
                dist = vae.encode(chunk.to(self.device, vae.dtype)).latent_dist
                out.append((dist.mean * vae.config.scaling_factor).float().cpu())
        self._latents, self._weights = torch.cat(out), weights
        n = len(self._images)
        self._sample_image = [i % n for i in range(len(pixels))]

    def _tokens(self, caption: str) -> TokenizedCaption:
        tok = self._token_cache.get(caption)
        if tok is None:
            tok = tokenize_caption(
                self.pipe.tokenizer, caption, trigger_words=self.config.tokens,
                num_slots=self.ti.num_vectors if self.ti is not None else 0,
                stand_in_id=self.ti.stand_in_id if self.ti is not None else 0,
            )
            self._token_cache[caption] = tok
        return tok

    def _encode(self, captions: list[str]) -> torch.Tensor:
        toks = [self._tokens(c) for c in captions]
        ids = torch.tensor([t.ids for t in toks], device=self.device)
        if self.ti is None:
            return self.pipe.text_encoder(ids)[0]
        slots = torch.tensor([t.slots for t in toks], device=self.device)
        return self.ti.encode(self.pipe.text_encoder, ids, slots)

    def _text_embeddings(self, captions: list[str], phase: Phase) -> torch.Tensor:
        if not phase.text_frozen:
            return self._encode(captions)
        missing = [c for c in dict.fromkeys(captions) if c not in self._text_cache]
        if missing:
            with torch.no_grad():
                for cap, emb in zip(missing, self._encode(missing), strict=True):
                    self._text_cache[cap] = emb
        return torch.stack([self._text_cache[c] for c in captions])

    def _sample(self) -> _Batch:
        if self._fixed is not None:
            return self._fixed
        assert self._latents is not None
        g, bs = self._gen, self.config.batch_size
        index = torch.randint(0, len(self._latents), (bs,), generator=g)
        captions = []
        for i in index.tolist():
            variants = self._captions[self._sample_image[i]]
            captions.append(variants[int(torch.randint(0, len(variants), (1,), generator=g))])
        noise = torch.randn((bs, *self._latents.shape[1:]), generator=g)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (bs,), generator=g)
        batch = _Batch(index, captions, noise, timesteps)
        if self.config.overfit_fixed_batch:
            self._fixed = batch
        return batch

    def _train_step(self) -> float:
        assert self._latents is not None and self._weights is not None
        cfg = self.config
        phase = phase_at(cfg, self._step)
        lrs = learning_rates(cfg, self._step)
        for group in self.optimizer.param_groups:
            group["lr"] = lrs[group["name"]]
            for p in group["params"]:
                p.requires_grad_(lrs[group["name"]] > 0)

        b = self._sample()
        latents = self._latents[b.index].to(self.device)
        weights = self._weights[b.index].to(self.device)
        noise = b.noise.to(self.device)
        t = b.timesteps.to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, t)
        else:
            target = noise

        with self._autocast():
            enc = self._text_embeddings(b.captions, phase)
            pred = self.pipe.unet(noisy, t, enc, return_dict=False)[0]
        err = (pred.float() - target.float()) ** 2 * weights
        per_sample = err.mean(dim=(1, 2, 3)) / weights.mean(dim=(1, 2, 3))
        if cfg.snr_gamma is not None:
            snr = self._snr[b.timesteps]
            w = torch.clamp(snr, max=cfg.snr_gamma) / snr
            if self.noise_scheduler.config.prediction_type == "v_prediction":
                w = torch.clamp(snr, max=cfg.snr_gamma) / (snr + 1)
            per_sample = per_sample * w.to(per_sample.device)
        loss = per_sample.mean()

        self.optimizer.zero_grad(set_to_none=True)
        trainable = [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad]
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            self.optimizer.step()
        return float(loss.detach())

    @contextlib.contextmanager
    def _attached(self) -> Iterator[None]:
        """Everything ``run()`` changes on the resident pipeline, undone in ``finally``."""
        pipe, cfg = self.pipe, self.config
        modules = [m for m in (pipe.unet, pipe.text_encoder, pipe.vae) if m is not None]
        grads = [(p, p.requires_grad) for m in modules for p in m.parameters()]
        cuda = self.device.type == "cuda"
        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        had_ckpt = bool(getattr(pipe.unet, "is_gradient_checkpointing", False))
        processors = None
        try:
            with contextlib.ExitStack() as stack:
                try:
                    for m in modules:
                        m.requires_grad_(False)
                    if self.unet_lora is not None:
                        stack.enter_context(self.unet_lora.attached(pipe.unet))
                    if self.text_lora is not None:
                        stack.enter_context(self.text_lora.attached(pipe.text_encoder))
                    if self.ti is not None:
                        stack.enter_context(self.ti.attached(pipe.text_encoder))
                    if cfg.gradient_checkpointing and not had_ckpt:
                        pipe.unet.enable_gradient_checkpointing()
                    if cuda and cfg.allow_tf32:
                        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
                    if cuda and cfg.use_xformers and importlib.util.find_spec("xformers") is not None:
                        processors = pipe.unet.attn_processors
                        try:
                            pipe.unet.enable_xformers_memory_efficient_attention()
                        except Exception as exc:  # a broken/mismatched xformers build: PyTorch SDPA instead
                            log.warning("xformers unavailable (%s); using PyTorch SDPA", exc)
                    yield
                finally:
                    if processors is not None:
                        pipe.unet.set_attn_processor(processors)
                    if cfg.gradient_checkpointing and not had_ckpt:
                        pipe.unet.disable_gradient_checkpointing()
                    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
                    # (the ExitStack detaches TI and LoRA after this block)
        finally:
            for p, flag in grads:
                p.requires_grad_(flag)


def _amp_dtype(config: TrainConfig, device: torch.device, weight_dtype: torch.dtype) -> torch.dtype | None:
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
