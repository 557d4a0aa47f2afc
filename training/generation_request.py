"""What one member asks the generator for, checked on construction, and the prompt template applied to it.

The range checks read :mod:`kitbooth.limits`, the same numbers the bot and the worker enforce, so a request the
CLI builds is refused for the same reasons as one from Discord.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from kitbooth import limits
from kitbooth.errors import InvalidInput
from training.compose import ConceptUse
from training.prompts import BuiltPrompt, build_prompt

# Each image's seed is ``seed + k``; this keeps every one within torch's 64-bit generator seed.
MAX_SEED = 2**63 - 16


@dataclass
class GenerationRequest:
    """One user's request: ``count`` images of ``prompt`` with their concepts (face, kit, style)."""

    prompt: str
    concepts: list[ConceptUse] = field(default_factory=list)
    seed: int = 0
    count: int = 1
    width: int = 512
    height: int = 512
    steps: int = 25
    guidance: float = 7.0
    negative_prompt: str | None = None
    kit_words: str | None = None
    style_words: str | None = None
    init_image: Image.Image | None = None  # img2img ("vary") from this image
    strength: float = 0.35  # img2img strength
    upscale: bool = False  # ×2 latent upscaler, when one is configured
    # A scene of several people (``training.squad``) instead of the template's one person: its subject, with
    # ``{kit}`` where the kit's trigger and words go.
    scene: str | None = None

    def __post_init__(self) -> None:
        if not limits.COUNT_MIN <= self.count <= limits.COUNT_MAX:
            raise InvalidInput(f"Ask for {limits.COUNT_MIN} to {limits.COUNT_MAX} images.")
        if not (0 <= self.seed <= MAX_SEED):
            raise InvalidInput("The seed must be a non-negative 63-bit number.")
        limits.check_picture(width=self.width, height=self.height, steps=self.steps, guidance=self.guidance)
        if self.init_image is not None and not 0.0 < self.strength <= 1.0:
            raise InvalidInput("Variation strength must be in (0, 1].")

    @property
    def seeds(self) -> list[int]:
        return [self.seed + k for k in range(self.count)]

    @property
    def schedule_steps(self) -> int:
        """``num_inference_steps`` for the pipeline. img2img denoises only ``int(n × strength)`` of the ``n``
        scheduled steps (diffusers' formula), which is 0 for "vary" at few steps (2 × 0.35): the schedule is
        lengthened until that is at least one step, so a variation always changes the picture."""
        n = self.steps
        if self.init_image is not None:
            while int(n * self.strength) < 1:
                n += 1
        return n

    @property
    def denoising_steps(self) -> int:
        """The denoising steps the pipeline call actually runs (what progress counts)."""
        if self.init_image is None:
            return self.steps
        return int(self.schedule_steps * self.strength)

    def batch_key(self) -> tuple:
        """Requests with equal keys can share one pipeline call."""
        img2img = self.init_image is not None
        return (self.width, self.height, self.steps, float(self.guidance), img2img,
                float(self.strength) if img2img else None)


@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int
    prompt: str  # the built prompt, with trigger words (never slot tokens)
    png: bytes  # PNG with A1111 parameters and the AI-generated mark
    negative: str = ""
    nsfw: bool = False
    upscaled: bool = False
    parameters: str = ""
    notice: str | None = None  # e.g. what was cut from a too-long prompt


def vary(request: GenerationRequest, image: Image.Image, *, strength: float = 0.35, seed: int | None = None,
         count: int | None = None) -> GenerationRequest:
    """A request for variations of ``image``: img2img at ``strength`` with the same prompt and concepts.

    Keeps the composition and identity of the picked image and changes details. The seed defaults to a
    different one derived from the request's (so "vary" twice gives different variations only if the caller
    passes new seeds).
    """
    return dataclasses.replace(
        request, init_image=image, strength=strength,
        seed=seed if seed is not None else (request.seed + 7919) % MAX_SEED,
        count=count or request.count, upscale=False,
    )


def _concept_of(req: GenerationRequest, kind: str) -> Any:
    return next((u.artifact for u in req.concepts if getattr(u.artifact, "kind", None) == kind), None)


def _join_words(art: Any, words: str | None, default: str) -> str | None:
    trigger = " ".join(getattr(art, "tokens", []) or []) if art is not None else ""
    if trigger and words:
        return f"{trigger} {words}"
    if trigger:
        return f"{trigger} {default}".strip()
    return words or None


def build_request_prompt(req: GenerationRequest, tokenizer: Any = None) -> BuiltPrompt:
    """The template applied to a request: face trigger, kit (trigger + words), user prompt, style."""
    face = _concept_of(req, "face")
    kit = _join_words(_concept_of(req, "kit"), req.kit_words, "football kit")
    return build_prompt(
        req.prompt,
        face_trigger=" ".join(face.tokens) if face is not None and face.tokens else None,
        kit_words=kit,
        style_words=_join_words(_concept_of(req, "style"), req.style_words, "style"),
        negative=req.negative_prompt,
        tokenizer=tokenizer,
        subject=req.scene.replace("{kit}", kit or "football kits") if req.scene else None,
    )


def plain_text(text: str) -> str:
    """Text without ``<...>`` placeholder tokens (for models that do not know them, e.g. the upscaler)."""
    return " ".join(re.sub(r"<[^<>\s]+>", " ", text).split())
