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
from kitbooth.i18n import keyed
from storage import InvalidKey, keys
from storage.artifacts import validate_key
from training.config import METHODS as TRAIN_METHODS
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


def _check_prompt(prompt: str, *parts: str | None) -> None:
    """The prompt and its added parts (negative prompt, kit and style words), for /generate and /squad alike."""
    if not prompt or not prompt.strip():
        raise keyed(InvalidInput, "check.prompt_empty")
    if len(prompt) > limits.PROMPT_CHARS:
        raise keyed(InvalidInput, "check.prompt_too_long", length=len(prompt), limit=limits.PROMPT_CHARS)
    for words in parts:
        if words is not None and len(words) > limits.PROMPT_CHARS:
            raise keyed(InvalidInput, "check.prompt_part_too_long", limit=limits.PROMPT_CHARS)
    if any(_has_reserved(part) for part in (prompt, *parts)):
        # Slot tokens (<kb-slot-N>) would reach another request's concept vectors in a shared batch.
        raise keyed(InvalidInput, "check.reserved_tokens")


def _check_catalogue(kit: Any, style: Any, guild_id: int | None) -> None:
    """Kits and styles are the server's own catalogue concepts: never a key under users/ (someone's face)."""
    guild = keys.guild_prefix(guild_id) if guild_id is not None else None
    for ref, kind in ((kit, "kit"), (style, "style")):
        if ref is not None and (ref.kind != kind or guild is None or not key_under(ref.key, guild)):
            raise keyed(NotAllowed, f"check.{kind}_not_this_server")


def validate_generate(p: contract.GeneratePayload) -> None:
    _check_prompt(p.prompt, p.negative_prompt, p.kit_words, p.style_words)
    if not limits.COUNT_MIN <= p.count <= limits.COUNT_MAX:
        raise keyed(InvalidInput, "check.count", min=limits.COUNT_MIN, max=limits.COUNT_MAX)
    limits.check_picture(width=p.width, height=p.height, steps=p.steps, guidance=p.guidance)
    mine = keys.user_prefix(p.user_id)
    if p.face is not None and (p.face.kind != "face" or not key_under(p.face.key, mine)):
        raise keyed(NotAllowed, "check.own_face")
    _check_catalogue(p.kit, p.style, p.guild_id)
    if p.variation_of is not None and not key_under(p.variation_of, mine):
        raise keyed(NotAllowed, "check.vary_own")
    if not key_under(p.output_prefix.rstrip("/") + "/x", mine):
        raise keyed(NotAllowed, "check.own_folder")
    if p.reference_key is not None and not key_under(p.reference_key, mine):
        raise keyed(NotAllowed, "check.compare_own")
    if p.instant_key is not None and (p.face is not None or not key_under(p.instant_key, mine)):
        raise keyed(NotAllowed, "check.instant_own")
    if p.candidates is not None and not p.count <= p.candidates <= limits.CANDIDATES_MAX:
        raise keyed(InvalidInput, "check.candidates", min=p.count, max=limits.CANDIDATES_MAX)
    if p.face_detail not in FACE_DETAIL_MODES:
        raise keyed(InvalidInput, "check.face_detail", modes=", ".join(FACE_DETAIL_MODES))


def check_concept_tokens(art: Any) -> None:
    """Refuse a concept whose trigger tokens name the composer's slot tokens or CLIP's special tokens: such a
    token would pass through unrewritten and read another request's vectors in a shared batch."""
    for tok in getattr(art, "tokens", None) or []:
        t = unicodedata.normalize("NFKC", str(tok)).lower()
        if "kb-slot" in t or "<|" in t:
            raise keyed(IncompatibleArtifact, "check.reserved_trigger")


def validate_train(p: contract.TrainPayload) -> None:
    if not p.photo_keys:
        raise keyed(InvalidInput, "check.no_photos")
    if p.kind == "face":
        mine = keys.user_prefix(p.user_id)
        if not all(key_under(k, mine) for k in (*p.photo_keys, p.artifact_key, p.checkpoint_prefix + "x")):
            raise keyed(NotAllowed, "check.own_photos")
    if p.steps is not None and not 1 <= p.steps <= limits.TRAIN_STEPS_MAX:
        raise keyed(InvalidInput, "check.train_steps", max=limits.TRAIN_STEPS_MAX)
    if p.method not in TRAIN_METHODS:  # training.config's list: one for the CLI, the bot's options and the worker
        raise keyed(InvalidInput, "check.train_method", method=repr(p.method), methods=", ".join(TRAIN_METHODS))
    if p.full_delta and (p.method != "dreambooth" or p.kind == "face"):
        raise keyed(InvalidInput, "check.full_delta")


def validate_upscale(p: contract.UpscalePayload) -> None:
    mine = keys.user_prefix(p.user_id)
    if not (key_under(p.source_key, mine) and key_under(p.output_key, mine)):
        raise keyed(NotAllowed, "check.upscale_own")


def validate_export(p: contract.ExportPayload) -> None:
    mine = keys.user_prefix(p.user_id)
    if not (key_under(p.concept_key, mine) and key_under(p.output_prefix.rstrip("/") + "/x", mine)):
        raise keyed(NotAllowed, "check.export_own")
    unknown = [f for f in p.formats if f not in EXPORT_FORMATS]
    if unknown or not p.formats:
        raise keyed(InvalidInput, "check.export_format", format=repr(unknown[0] if unknown else ""),
                    formats=", ".join(EXPORT_FORMATS))


def validate_squad(p: contract.SquadPayload) -> None:
    """A squad photo: the prompt checks of /generate, then the approval check. Every face must be a face concept
    stored under ``users/<id>/`` of a member whose id is in the approval set the bot recorded, each member once,
    the requester among them. This catches a payload assembled with a face that nobody approved (a bot bug, a
    stale squad, an edited payload that swapped one key); it does not stop someone who can rewrite the whole
    payload in Redis (they could rewrite ``approved`` too) — the same trust boundary as every payload here."""
    _check_prompt(p.prompt, p.kit_words, p.style_words)
    limits.check_picture(width=p.width, height=p.height, steps=p.steps, guidance=p.guidance)
    limits.check_squad_size(len(p.members) - 1)
    ids = [m.user_id for m in p.members]
    approved = set(p.approved)
    if len(set(ids)) != len(ids) or not ids or ids[0] != p.user_id or set(ids) != approved:
        raise keyed(NotAllowed, "check.squad_approved")
    for m in p.members:
        mine = keys.user_prefix(m.user_id)
        if m.user_id not in approved or m.face.kind != "face" or not key_under(m.face.key, mine):
            raise keyed(NotAllowed, "check.squad_approved")
        if m.reference_key is not None and not key_under(m.reference_key, mine):
            raise keyed(NotAllowed, "check.squad_compare_own")
    _check_catalogue(p.kit, p.style, p.guild_id)
    if not key_under(p.output_prefix.rstrip("/") + "/x", keys.user_prefix(p.user_id)):
        raise keyed(NotAllowed, "check.own_folder")
    if p.candidates is not None and not 1 <= p.candidates <= limits.COUNT_MAX:
        raise keyed(InvalidInput, "check.squad_candidates", max=limits.COUNT_MAX)
