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

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import torch
from PIL import Image

from kitbooth import __version__
from training.artifact import ConceptArtifact
from training.caption_embeddings import CaptionEmbeddings
from training.config import TrainConfig
from training.lora import LoraParams
from training.pivotal import learning_rates, phase_at
from training.sliced_trainer import RESUME_FREE, Progress, SlicedTrainer
from training.textual_inversion import TokenVectors
from training.train_pipeline import training_mode
from training.train_step import BatchSource, amp_dtype, apply_gradients, set_learning_rates

log = logging.getLogger(__name__)

__all__ = ["RESUME_FREE", "Progress", "Trainer"]


class Trainer(SlicedTrainer):
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
        super().__init__(pipe, config, base_model_id=base_model_id, progress=progress, should_stop=should_stop,
                         on_checkpoint=on_checkpoint)

        init_gen = torch.Generator().manual_seed(config.seed)
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
        # The images, cached latents, sampler and loss (shared with every trainer: training.train_step).
        self.data = BatchSource(pipe, images, config, self.device, self._amp_dtype, masks=masks, captions=captions)

    # -- public API (run, state_dict, load_state_dict: training.sliced_trainer) ---------------------
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
            extra={"resolution": str(c.resolution), "images": str(len(self.data.sample_image) or len(self.data.images)),
                   "init_word": c.init_word if c.uses_ti else "", "loss": f"{self._last_loss:.5f}"},
        )

    def close(self) -> None:
        """Release the trainer's tensors. The pipeline is already restored (it is only modified inside run())."""
        super().close()
        self._text.clear()

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

    def _load_extra(self, state: dict[str, Any]) -> None:
        self._text.clear()

    def _train_step(self) -> float:
        cfg = self.config
        phase = phase_at(cfg, self._step)
        set_learning_rates(self.optimizer, learning_rates(cfg, self._step))
        loss = self.data.loss(self.pipe.unet, self.data.sample(),
                              lambda captions: self._text(captions, text_frozen=phase.text_frozen))
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
