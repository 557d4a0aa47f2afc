"""DreamBooth (Ruiz et al. 2022) with prior preservation, on a private copy of the UNet, stored as an SVD delta.

The resident pipeline other jobs use is only *read*: its UNet (and, with ``train_text_encoder``, its text
encoder) is copied once per trainer, in fp32 on the same device, without any LoRA adapter the worker keeps
resident, and only the copy trains. The base pipeline also draws the class images (``training.dreambooth_prior``:
once per base model, class word, count and resolution, shared in the store) and encodes every image once.

One step: a batch of the member's latents with their captions ("a photo of ohwx person") and a batch of class
latents with the bare class prompt ("a photo of a person"), each through the trained UNet; the loss is the
member's (face-masked, min-SNR weighted, as every trainer here) plus ``prior_loss_weight`` times the class
images' — the paper's prior-preservation loss. What trains: the weight of every Linear and Conv2d layer (biases
and norms stay frozen, so the whole change is a set of matrices the SVD delta can hold). Gradient checkpointing
on the copy; 8-bit AdamW when bitsandbytes imports on CUDA, else torch's AdamW.

Slicing: between slices the trainer keeps its copy; a checkpoint (``state_dict``) holds the trained weights
(fp32, the full set of Linear/Conv2d weights: as large as the UNet's), the optimizer's two moments (twice that
with AdamW, about half with 8-bit AdamW) and the cached latents of photos and class images — so a resumed slice
in a new process rebuilds the copy from the base and needs neither photos nor class images. On SD 1.5 that is
~3.4 GB of weights + ~6.9 GB of AdamW state per checkpoint; on the tiny test model ~9 MB (see the test).

``artifact()``: per layer ``W_trained − W_base``, truncated SVD at ``config.rank`` (``training.svd_delta``), as a
LoRA/LoCon concept file (method ``dreambooth``) that composes and exports like any LoRA; ``full_delta`` (kits and
styles only) keeps every singular value instead (exact, and only as small as the model allows).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import torch
from diffusers import ModelMixin
from PIL import Image

from kitbooth import __version__, limits
from kitbooth.errors import IncompatibleArtifact
from training.artifact import ConceptArtifact
from training.caption_embeddings import CaptionEmbeddings
from training.config import INIT_WORDS, TrainConfig
from training.data import square_resize
from training.dreambooth_prior import ClassSet, class_images
from training.sliced_trainer import SlicedTrainer
from training.svd_delta import compress, full_rank, weight_layers
from training.train_step import BatchSource, amp_dtype, apply_gradients, set_learning_rates

log = logging.getLogger(__name__)


def clean_copy(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A new fp32 module with ``model``'s base weights (peft adapters and wrappers left out); ``model`` is
    only read."""
    sd = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}
    cls = type(model)
    with torch.device(device):  # diffusers models are built from their config dict, transformers' from theirs
        copy = cls.from_config(model.config) if isinstance(model, ModelMixin) else cls(model.config)
    copy.load_state_dict(sd, strict=True)  # cast to the copy's fp32
    return copy


def make_optimizer(params: list[torch.nn.Parameter], config: TrainConfig, device: torch.device) -> Any:
    """8-bit AdamW (bitsandbytes) on CUDA when it imports, else torch's AdamW."""
    kw = dict(lr=0.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=config.weight_decay)
    groups = [{"params": params, "name": "unet"}]
    if device.type == "cuda" and importlib.util.find_spec("bitsandbytes") is not None:
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(groups, **kw)
        except Exception as exc:  # noqa: BLE001 - a broken bitsandbytes build: full-precision AdamW
            log.warning("bitsandbytes unusable (%s); using torch AdamW", exc)
    return torch.optim.AdamW(groups, **kw)


class DreamBoothTrainer(SlicedTrainer):
    """The ``training.loop.Trainer`` interface for ``method="dreambooth"``; ``store``: the artifact store that
    caches the class images (None: drawn for this trainer only)."""

    uses_store = True  # training.trainers passes the artifact store

    def __init__(
        self,
        pipe,
        images: Sequence[Image.Image],
        config: TrainConfig,
        *,
        masks: Sequence[Image.Image | None] | None = None,
        captions: Sequence[str | None] | None = None,
        base_model_id: str = "",
        progress: Callable[[Any], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_checkpoint: Callable[[int, bytes], None] | None = None,
        store: Any = None,
    ):
        if config.method != "dreambooth":
            raise ValueError("DreamBoothTrainer trains method 'dreambooth'")
        super().__init__(pipe, config, base_model_id=base_model_id, progress=progress, should_stop=should_stop,
                         on_checkpoint=on_checkpoint)
        self.store = store
        self._drawing_may_stop = True
        self.class_generated = 0  # class images drawn by this trainer (0: reused from the store)

        self.unet = clean_copy(pipe.unet, self.device)
        self.unet.train()
        self.text_encoder = clean_copy(pipe.text_encoder, self.device) if config.train_text_encoder else None
        self._trained: dict[str, dict[str, torch.nn.Parameter]] = {}
        for part, model in (("unet", self.unet), ("text", self.text_encoder)):
            if model is None:
                continue
            model.requires_grad_(False)
            layers = {path: mod.weight for path, mod in weight_layers(model)}
            for w in layers.values():
                w.requires_grad_(True)
            self._trained[part] = layers
        if config.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.optimizer = make_optimizer([w for d in self._trained.values() for w in d.values()], config, self.device)
        self._amp_dtype = amp_dtype(config, self.device, torch.float32)
        self.scaler = torch.amp.GradScaler(self.device.type) if self._amp_dtype == torch.float16 else None

        self.class_word = config.class_word or INIT_WORDS[config.kind]
        self.class_set = ClassSet(base_model_id, self.class_word, config.num_class_images, config.resolution,
                                  config.class_steps)
        self.data = BatchSource(pipe, images, config, self.device, self._amp_dtype, masks=masks, captions=captions)
        class_config = config.replace(mirror=False, masked_loss=False, captions=(self.class_set.prompt,),
                                      seed=config.seed + 7919)
        self.prior = BatchSource(pipe, [], class_config, self.device, self._amp_dtype)
        encoder = self.text_encoder if self.text_encoder is not None else pipe.text_encoder
        self._text = CaptionEmbeddings(pipe.tokenizer, encoder, config.tokens, None, self.device)
        self._class_text = CaptionEmbeddings(pipe.tokenizer, encoder, [], None, self.device)

    # -- the Trainer interface (run, load_state_dict: training.sliced_trainer) ---------------------
    def state_dict(self) -> bytes:
        """Trained weights, optimizer, scaler, RNG states, step, and both cached latent sets."""
        self._drawing_may_stop = False  # a checkpoint needs the whole class set
        try:
            self._prepare()
        finally:
            self._drawing_may_stop = True
        return super().state_dict()

    def _stop_drawing(self) -> bool:
        return self._drawing_may_stop and self.should_stop is not None and self.should_stop()

    def deltas(self) -> dict[str, dict[str, torch.Tensor]]:
        """part -> layer path -> ``W_trained − W_base`` (fp32, on the training device)."""
        return {part: dict(self._deltas(part)) for part in self._trained}

    def _deltas(self, part: str) -> Iterator[tuple[str, torch.Tensor]]:
        """One layer's delta at a time (the base read from the resident pipeline, under any resident adapter)."""
        base = dict(weight_layers(self.pipe.unet if part == "unet" else self.pipe.text_encoder))
        for k, w in self._trained[part].items():
            yield k, w.detach() - base[k].weight.detach().to(w.device, torch.float32)

    def artifact(self) -> ConceptArtifact:
        c = self.config
        rank = c.rank
        if c.full_delta:  # every singular value: exact, as long as the file format's rank limit allows
            rank = full_rank(w.shape for d in self._trained.values() for w in d.values())
            if rank > limits.LORA_RANK_MAX:
                raise IncompatibleArtifact(f"The full delta of this model needs rank {rank}, over the concept "
                                           f"file limit of {limits.LORA_RANK_MAX}: train it without full_delta.")
        unet, report = compress(self._deltas("unet"), rank)
        text, text_report = compress(self._deltas("text"), rank) if "text" in self._trained else ({}, None)
        extra = {"resolution": str(c.resolution), "images": str(len(self.data.sample_image) or len(self.data.images)),
                 "loss": f"{self._last_loss:.5f}", "class_word": self.class_word,
                 "class_images": str(c.num_class_images), "prior_loss_weight": f"{c.prior_loss_weight:g}",
                 "full_delta": "true" if c.full_delta else "false", **report.as_metadata()}
        if text_report is not None:
            extra.update({f"text_{k}": v for k, v in text_report.as_metadata().items()})
        return ConceptArtifact(
            kind=c.kind, method="dreambooth", base_model=self.base_model_id,
            hidden_size=int(self.pipe.text_encoder.config.hidden_size), tokens=list(c.tokens), embeddings=None,
            unet_lora=unet, text_lora=text, rank=rank, alpha=float(rank), steps=self._step,
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), version=__version__, extra=extra)

    def close(self) -> None:
        """Drop the copy, the optimizer state and the caches (the resident pipeline was never changed)."""
        super().close()
        self._text.clear()
        self._class_text.clear()
        self._trained.clear()
        self.unet = self.text_encoder = None  # type: ignore[assignment]

    # -- internals ----------------------------------------------------------------------------------
    def _named_params(self) -> dict[str, torch.nn.Parameter]:
        return {f"{part}.{k}": w for part, d in self._trained.items() for k, w in d.items()}

    def _extra_state(self) -> dict[str, Any]:
        return {"prior": self.prior.state()}

    def _load_extra(self, state: dict[str, Any]) -> None:
        self.prior.load(state["prior"])
        self._text.clear()
        self._class_text.clear()

    def _prepare(self) -> None:
        self.data.ensure()
        if self.prior.latents is None:
            images, self.class_generated = class_images(self.pipe, self.class_set, self.store, self._stop_drawing)
            if len(images) < self.class_set.count:  # cancelled while drawing (the drawn ones are in the store)
                self.stopped = True
                return
            self.prior.images = [square_resize(im, self.config.resolution) for im in images]
            self.prior.masks = [None] * len(images)
            self.prior.captions = [[self.class_set.prompt]] * len(images)
            self.prior.ensure()

    def _train_step(self) -> float:
        cfg = self.config
        lr = cfg.lr_unet * min(1.0, (self._step + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps else cfg.lr_unet
        set_learning_rates(self.optimizer, {"unet": lr})
        frozen = self.text_encoder is None
        loss = self.data.loss(self.unet, self.data.sample(), lambda caps: self._text(caps, text_frozen=frozen).float())
        if cfg.prior_loss_weight > 0:
            prior = self.prior.loss(self.unet, self.prior.sample(),
                                    lambda caps: self._class_text(caps, text_frozen=frozen).float())
            loss = loss + cfg.prior_loss_weight * prior
        apply_gradients(self.optimizer, loss, self.scaler, cfg.max_grad_norm)
        return float(loss.detach())
