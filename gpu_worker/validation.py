"""The worker's own checks of each payload, before any work: it does not trust the bot (or anything that can
write to Redis) to keep one user's face, photos or images away from another user's request.

Limits come from ``contract.limits`` (``kitbooth.limits``), defined once for the bot, the worker and the CLI.
Every refusal is a ``UserFacingError`` whose message says what to do.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from gpu_worker import contract
from gpu_worker.contract import limits
from kitbooth.errors import IncompatibleArtifact, InvalidInput, NotAllowed
from storage import InvalidKey, keys
from storage.artifacts import validate_key
from training.prompts import find_reserved

EXPORT_FORMATS = ("a1111", "kohya", "diffusers")
FACE_DETAIL_MODES = ("auto", "always", "off")


def key_under(key: str, prefix: str) -> bool:
    """``key`` is a valid store key inside ``prefix`` (no ``..`` or other tricks)."""
    try:
        validate_key(key)
    except InvalidKey:
        return False
    return key.startswith(prefix)


def _has_reserved(text: str | None) -> bool:
    return bool(text) and bool(find_reserved(text) or find_reserved(unicodedata.normalize("NFKC", text)))


def validate_generate(p: contract.GeneratePayload) -> None:
    if not p.prompt or not p.prompt.strip():
        raise InvalidInput("Your prompt is empty. Describe the scene you want.")
    if len(p.prompt) > limits.PROMPT_CHARS:
        raise InvalidInput(f"Your prompt is too long ({len(p.prompt)} characters; the most is "
                           f"{limits.PROMPT_CHARS}). Shorten it and try again.")
    for words in (p.negative_prompt, p.kit_words, p.style_words):
        if words is not None and len(words) > limits.PROMPT_CHARS:
            raise InvalidInput(f"A prompt part is too long (the most is {limits.PROMPT_CHARS} characters).")
    if not limits.COUNT_MIN <= p.count <= limits.COUNT_MAX:
        raise InvalidInput(f"You can ask for {limits.COUNT_MIN} to {limits.COUNT_MAX} images.")
    limits.check_picture(width=p.width, height=p.height, steps=p.steps, guidance=p.guidance)
    if any(_has_reserved(part) for part in (p.prompt, p.kit_words, p.style_words, p.negative_prompt)):
        # Slot tokens (<kb-slot-N>) would reach another request's concept vectors in a shared batch.
        raise InvalidInput("Your prompt contains reserved tokens (`<...>`, `<|...|>`): remove them.")
    mine = keys.user_prefix(p.user_id)
    if p.face is not None and (p.face.kind != "face" or not key_under(p.face.key, mine)):
        raise NotAllowed("You can only use your own face.")
    guild = keys.guild_prefix(p.guild_id) if p.guild_id is not None else None
    for ref, kind in ((p.kit, "kit"), (p.style, "style")):
        # Kits and styles are the server's own catalogue concepts: never a key under users/ (someone's face).
        if ref is not None and (ref.kind != kind or guild is None or not key_under(ref.key, guild)):
            raise NotAllowed(f"That {kind} does not belong to this server. Pick one from `/kit list`.")
    if p.variation_of is not None and not key_under(p.variation_of, mine):
        raise NotAllowed("You can only vary your own images.")
    if not key_under(p.output_prefix.rstrip("/") + "/x", mine):
        raise NotAllowed("Results can only be stored under your own folder.")
    if p.reference_key is not None and not key_under(p.reference_key, mine):
        raise NotAllowed("You can only be compared with your own face.")
    if p.instant_key is not None and (p.face is not None or not key_under(p.instant_key, mine)):
        raise NotAllowed("The instant face can only be your own, and only until your trained face is ready.")
    if p.candidates is not None and not p.count <= p.candidates <= limits.CANDIDATES_MAX:
        raise InvalidInput(f"Best-of-N generates {p.count} to {limits.CANDIDATES_MAX} candidates.")
    if p.face_detail not in FACE_DETAIL_MODES:
        raise InvalidInput(f"The face-detail pass is one of {', '.join(FACE_DETAIL_MODES)}.")


def check_concept_tokens(art: Any) -> None:
    """Refuse a concept whose trigger tokens name the composer's slot tokens or CLIP's special tokens: such a
    token would pass through unrewritten and read another request's vectors in a shared batch."""
    for tok in getattr(art, "tokens", None) or []:
        t = unicodedata.normalize("NFKC", str(tok)).lower()
        if "kb-slot" in t or "<|" in t:
            raise IncompatibleArtifact("A concept in this request uses a reserved trigger token and cannot be "
                                       "used. Re-import or retrain it.")


def validate_train(p: contract.TrainPayload) -> None:
    if not p.photo_keys:
        raise InvalidInput("No training photos were found. Upload them again with the command.")
    if p.kind == "face":
        mine = keys.user_prefix(p.user_id)
        if not all(key_under(k, mine) for k in (*p.photo_keys, p.artifact_key, p.checkpoint_prefix + "x")):
            raise NotAllowed("A face can only be trained from your own photos.")
    if p.steps is not None and not 1 <= p.steps <= limits.TRAIN_STEPS_MAX:
        raise InvalidInput(f"Training steps must be between 1 and {limits.TRAIN_STEPS_MAX}.")


def validate_upscale(p: contract.UpscalePayload) -> None:
    mine = keys.user_prefix(p.user_id)
    if not (key_under(p.source_key, mine) and key_under(p.output_key, mine)):
        raise NotAllowed("You can only upscale your own images.")


def validate_export(p: contract.ExportPayload) -> None:
    mine = keys.user_prefix(p.user_id)
    if not (key_under(p.concept_key, mine) and key_under(p.output_prefix.rstrip("/") + "/x", mine)):
        raise NotAllowed("You can only export your own concepts.")
    unknown = [f for f in p.formats if f not in EXPORT_FORMATS]
    if unknown or not p.formats:
        raise InvalidInput(f"Unknown export format {unknown[0] if unknown else ''!r}: use "
                           f"{', '.join(EXPORT_FORMATS)}.")
