"""Training configuration: one frozen dataclass, with defaults per concept kind that nobody has to touch.

Torch-free (the bot and the CLI read defaults without importing torch).

Pivotal tuning schedule (the default for faces), following cloneofsimo's PTI rather than diffusers' advanced
script: the first ``ti_fraction`` of the steps train only the TI vectors (high learning rate, the UNet LoRA
untouched); the remaining steps train the UNet LoRA with the TI vectors frozen. Freezing the vectors in the second
phase keeps the "pivot" stable and lets that phase use cached text embeddings (no text-encoder forward or backward),
which is what makes the LoRA phase as fast as plain LoRA.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

KINDS = ("face", "kit", "style")
METHODS = ("pivotal", "lora", "ti", "hypernetwork", "dreambooth")
PRECISIONS = ("auto", "no", "fp16", "bf16")

# Caption templates per kind; "{}" is replaced by the concept's trigger.
CAPTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "face": (
        "a photo of {} person",
        "a close-up photo of {} person",
        "a portrait photo of {} person",
        "a selfie of {} person",
    ),
    "kit": (
        "a photo of a {} football kit",
        "a photo of a person wearing a {} football kit",
        "a {} football shirt",
    ),
    "style": (
        "a picture in {} style",
        "an image in {} style",
        "a painting in {} style",
    ),
}

# The class word TI vectors start from, per kind.
INIT_WORDS = {"face": "person", "kit": "shirt", "style": "art"}
# Trigger word of a pure-LoRA concept (no TI vectors): rare-ish words, distinct per kind so a kit and a style
# composed in one prompt do not share a trigger.
LORA_TRIGGERS = {"face": "ohwx", "kit": "zwkit", "style": "qzstyle"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training job needs besides the images and the pipeline. Frozen: a job's config never changes.

    ``steps`` is the total for the job (a slice runs part of it, see ``Trainer.run``).
    """

    kind: str = "face"
    method: str = "pivotal"
    steps: int = 500
    resolution: int = 512
    batch_size: int = 2
    # LoRA
    rank: int = 4
    alpha: float | None = None  # None: alpha = rank (LoRA scale 1)
    text_lora: bool = False
    unet_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    text_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
    # TI
    num_vectors: int = 2
    init_word: str = "person"
    token_prefix: str = "kb"  # tokens are "<{prefix}-{kind}-{i}>"
    lora_trigger: str = "ohwx"  # trigger of a pure-LoRA concept
    # Hypernetwork (A1111's, training.hypernetwork): MLP width multipliers, activation, layer norm, dropout; its
    # tokens are ``lora_trigger`` (the captions' word; a hypernetwork itself acts on every prompt).
    hyper_layer_structure: tuple[float, ...] = (1.0, 2.0, 1.0)
    hyper_activation: str = "linear"
    hyper_layer_norm: bool = False
    hyper_dropout: bool = False
    lr_hyper: float = 1e-5  # A1111's default
    # DreamBooth (training.dreambooth): the UNet itself is fine-tuned (a copy; text encoder optional) with prior
    # preservation on ``num_class_images`` images of ``class_word`` ("": INIT_WORDS[kind]) drawn by the base model
    # in ``class_steps`` steps; stored as a rank-``rank`` SVD of the delta, or whole with ``full_delta`` (kit/style).
    prior_loss_weight: float = 1.0
    num_class_images: int = 100
    class_word: str = ""
    class_steps: int = 25
    train_text_encoder: bool = False
    full_delta: bool = False
    # Pivotal: fraction of the steps that are TI-only (then LoRA with TI frozen)
    ti_fraction: float = 0.3
    # Optimiser
    lr_unet: float = 2e-4
    lr_text: float = 5e-5
    lr_ti: float = 3e-3
    lr_warmup_steps: int = 0
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    # Loss
    snr_gamma: float | None = 5.0
    masked_loss: bool = True
    mask_outside_weight: float = 0.3
    mirror: bool = True  # also train on mirror images (cached like the originals)
    # Speed and numerics
    # auto: bf16 (or fp16) on CUDA, fp32 on CPU. A pipeline resident in fp16/bf16 (any device) always autocasts in
    # its own dtype, whatever this says (fp16 with a grad scaler): see training.train_step.amp_dtype.
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    use_xformers: bool = True  # only when installed AND on CUDA
    allow_tf32: bool = True
    seed: int = 0
    checkpoint_every: int = 50
    # Diagnostics: reuse one sampled batch (noise, timesteps, images) every step — for overfitting tests
    overfit_fixed_batch: bool = False
    captions: tuple[str, ...] = field(default=())  # override the kind's caption templates ("{}" = trigger)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {self.kind!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {self.method!r}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {PRECISIONS}")
        if self.steps < 1 or self.batch_size < 1 or self.rank < 1 or self.num_vectors < 1:
            raise ValueError("steps, batch_size, rank and num_vectors must be positive")
        if self.resolution < 8 or self.resolution % 8:
            raise ValueError("resolution must be a positive multiple of 8")
        if not 0.0 <= self.ti_fraction <= 1.0:
            raise ValueError("ti_fraction must be in [0, 1]")
        if self.full_delta and (self.method != "dreambooth" or self.kind == "face"):
            raise ValueError("full_delta is for DreamBooth kits and styles only (a face is always compressed)")
        if self.method == "dreambooth" and (self.num_class_images < 1 or self.prior_loss_weight < 0):
            raise ValueError("num_class_images must be positive and prior_loss_weight not negative")
        ls = self.hyper_layer_structure
        if len(ls) < 2 or ls[0] != 1 or ls[-1] != 1 or any(m <= 0 for m in ls):
            raise ValueError("hyper_layer_structure must start and end with 1 and be positive, like 1,2,1")

    # -- derived --------------------------------------------------------------------------------------
    @property
    def uses_ti(self) -> bool:
        return self.method in ("ti", "pivotal")

    @property
    def uses_unet_lora(self) -> bool:
        return self.method in ("lora", "pivotal")

    @property
    def uses_text_lora(self) -> bool:
        return self.method == "lora" and self.text_lora

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def ti_steps(self) -> int:
        """Number of TI-only steps at the start (pivotal); all steps for TI; none for LoRA."""
        if self.method == "ti":
            return self.steps
        if self.method == "pivotal":
            return int(round(self.steps * self.ti_fraction))
        return 0

    @property
    def tokens(self) -> list[str]:
        """The concept's trigger tokens: TI placeholders, or the LoRA trigger word."""
        if self.uses_ti:
            return [f"<{self.token_prefix}-{self.kind}-{i}>" for i in range(self.num_vectors)]
        return [self.lora_trigger]

    @property
    def caption_templates(self) -> tuple[str, ...]:
        return self.captions or CAPTION_TEMPLATES[self.kind]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        data: dict[str, Any] = json.loads(text)
        for key in ("unet_targets", "text_targets", "captions", "hyper_layer_structure"):
            if key in data:
                data[key] = tuple(data[key])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **overrides: Any) -> TrainConfig:
        return dataclasses.replace(self, **overrides)


_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    # Faces: pivotal tuning, 512², ~500 steps: 150 TI steps then 350 LoRA steps, 2 vectors from "person".
    "face": dict(method="pivotal", steps=500, num_vectors=2, init_word=INIT_WORDS["face"], rank=4,
                 masked_loss=True, lora_trigger=LORA_TRIGGERS["face"]),
    # Kits: a UNet LoRA (the look of a shirt is mostly texture and layout); no face mask.
    "kit": dict(method="lora", steps=400, num_vectors=1, init_word=INIT_WORDS["kit"], rank=4,
                masked_loss=False, lora_trigger=LORA_TRIGGERS["kit"]),
    # Styles: a UNet LoRA as well.
    "style": dict(method="lora", steps=400, num_vectors=1, init_word=INIT_WORDS["style"], rank=4,
                  masked_loss=False, lora_trigger=LORA_TRIGGERS["style"]),
}


# Per method, over the kind's defaults (and under the caller's overrides).
_METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    # DreamBooth: the whole UNet at a low rate (the paper's 5e-6), rank-32 SVD storage, checkpointed activations.
    "dreambooth": dict(steps=800, lr_unet=5e-6, rank=32, gradient_checkpointing=True, batch_size=1),
}


def default_config(kind: str, **overrides: Any) -> TrainConfig:
    """The default config of a kind (``face``: pivotal 512² 500 steps; ``kit``/``style``: LoRA), with overrides.

    Overrides set to ``None`` are ignored, so a CLI can pass its optional flags straight through.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    values: dict[str, Any] = {"kind": kind, **_KIND_DEFAULTS[kind]}
    values.update(_METHOD_DEFAULTS.get(overrides.get("method") or values["method"], {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)
