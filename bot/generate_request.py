"""The /generate request: validation (prompt, own face, catalogue, quotas), the request itself, and enqueueing it.

Used by the /generate cog and by the reroll/vary buttons, so both build the same ``GeneratePayload``. Every
check is fast (SQLite and regexes, no REST): a refusal is a ``UserFacingError``. The face is always the
requester's own ready face concept.
"""

from __future__ import annotations

import logging
import re
import secrets
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import discord

from bot import catalogue, jobs, lookalike, quotas, text_checks
from gpu_worker import contract
from kitbooth import limits
from kitbooth.errors import InvalidInput, NotFound
from kitbooth.i18n import keyed, translate
from storage import keys
from training.prompts import find_reserved

if TYPE_CHECKING:
    from bot.services import Services
    from storage.database import Concept, Job

log = logging.getLogger(__name__)

SHAPES: dict[str, tuple[int, int]] = {"square": (512, 512), "portrait": (512, 768), "landscape": (768, 512)}
NO_FACE = "You haven't trained your face yet — run /train with 4-10 selfies."
FACE_TRAINING = "Your face is still being learned — I'll post when it's ready; then try /generate again."

_WORD = re.compile(r"[\w\-]+", re.UNICODE)
# Best-of-N: candidates generated per image shown when the server has not chosen (``/kitbooth settings best_of``).
DEFAULT_BEST_OF = 2


def candidates_for(count: int, best_of: int | None) -> int | None:
    """Images to generate for ``count`` shown: ``count × best_of``, at most ``CANDIDATES_MAX`` (8: twice the
    most shown, so one pipeline call holds at most 2 × ``max_batch`` × 4 images); None when it is off."""
    factor = DEFAULT_BEST_OF if best_of is None else best_of
    n = min(count * factor, limits.CANDIDATES_MAX)
    return n if n > count else None


async def validate_prompt(services: Services, user_id: int, prompt: str) -> str:
    prompt = text_checks.clean_text(prompt)  # zero-width, bidi and other format characters go
    if not (text_checks.has_visible(prompt) and text_checks.has_visible(unicodedata.normalize("NFKC", prompt))):
        raise keyed(InvalidInput, "refusal.empty_prompt")
    if len(prompt) > limits.PROMPT_CHARS:
        raise keyed(InvalidInput, "refusal.prompt_too_long", length=len(prompt), limit=limits.PROMPT_CHARS)
    reserved = find_reserved(prompt) or find_reserved(unicodedata.normalize("NFKC", prompt))
    if reserved:
        shown = ", ".join(f"`{t}`" for t in reserved[:3])
        raise keyed(InvalidInput, "refusal.reserved_tokens", tokens=shown)
    words = {w.lower() for w in _WORD.findall(prompt)}
    owners = await services.db.trigger_token_owners(words)
    # A trigger can be shared (every pure-LoRA face is "ohwx"): one's own trigger is never someone else's.
    own = {t.lower() for c in await services.db.list_concepts(owner_id=user_id, kind="face")
           for t in c.trigger_tokens} if owners else set()
    if any(owner != user_id and tok not in own for tok, owner in owners.items()):
        raise keyed(InvalidInput, "refusal.other_members_trigger")
    return prompt


async def require_own_face(services: Services, user_id: int) -> Concept:
    """The requester's own ready face concept — the only face a request can ever use — or, with the instant face
    configured, their face still in training (``enqueue_generate`` then sends its ``instant_key``)."""
    face = await services.db.ready_face(user_id)
    if face is not None and face.artifact_key:
        return face
    learning = [c for c in await services.db.list_concepts(owner_id=user_id, kind="face")
                if c.status in ("pending", "training")]
    if learning and services.settings.instant_face_adapter:
        return learning[-1]  # the instant face (issue 14) stands in until the trained face is ready
    if learning:
        raise keyed(NotFound, "refusal.face_still_training")
    raise keyed(NotFound, "refusal.no_face_trained")


async def concept_ref(services: Services, concept: Concept) -> contract.ConceptRef:
    assert concept.artifact_key
    sha = await services.db.concept_sha256(concept.id) or ""
    return contract.ConceptRef(key=concept.artifact_key, kind=concept.kind, sha256=sha)


@dataclass(frozen=True)
class CatalogueChoice:
    name: str
    words: str
    concept: contract.ConceptRef | None


async def resolve_entry(services: Services, guild_id: int, name: str, kind: Literal["kit", "style"]
                        ) -> CatalogueChoice:
    r = await catalogue.resolve(services.db, guild_id, name, kind)
    return CatalogueChoice(r.kit.name, r.words, r.concept)


def nsfw_allowed(policy: dict[str, str], channel: Any) -> bool:
    """Guild policy per channel ("allow" / "block"); unset: allowed only in channels Discord marks NSFW."""
    setting = policy.get(str(getattr(channel, "id", "")))
    if setting is not None:
        return setting == "allow"
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    count: int
    seed: int
    width: int
    height: int
    kit: CatalogueChoice | None
    style: CatalogueChoice | None
    allow_nsfw: bool


async def prepare_request(
    services: Services, interaction: discord.Interaction, *, prompt: str, kit: str | None, style: str | None,
    count: int, seed: int | None, shape: str,
) -> tuple[GenerateRequest, Concept]:
    """Every check of /generate; raises a ``UserFacingError`` on the first failure. No REST calls."""
    user_id, guild_id = interaction.user.id, interaction.guild_id
    assert guild_id is not None
    prompt = await validate_prompt(services, user_id, prompt)
    face = await require_own_face(services, user_id)
    await catalogue.ensure_seeded(services.db, guild_id)
    kit_choice = await resolve_entry(services, guild_id, kit, "kit") if kit else None
    style_choice = await resolve_entry(services, guild_id, style, "style") if style else None
    await quotas.check_image_request(services, user_id, guild_id, count)
    gs = await services.db.guild_settings(guild_id)
    width, height = SHAPES.get(shape, SHAPES["square"])
    return GenerateRequest(
        prompt=prompt, count=count, seed=secrets.randbelow(limits.SEED_MAX + 1) if seed is None else seed,
        width=width, height=height, kit=kit_choice, style=style_choice,
        allow_nsfw=nsfw_allowed(gs.nsfw_policy, interaction.channel),
    ), face


async def enqueue_generate(
    services: Services, interaction: discord.Interaction, req: GenerateRequest, face: Concept, *,
    kind: str = "generate", variation_of: str | None = None,
) -> tuple[Job, jobs.QueueInfo]:
    """Write the job row and enqueue the ``GeneratePayload`` (the face is always ``face``, the requester's)."""
    user_id = interaction.user.id
    assert face.owner_id == user_id, "a face concept is usable only by its owner"
    instant = face.status != "ready" or not face.artifact_key  # still learning: the instant face's embedding
    face_ref = None if instant else await concept_ref(services, face)
    target = jobs.target_from_interaction(interaction)
    reference_key = None if instant else await lookalike.reference_key_for(services, user_id, face.id)
    gs = await services.db.guild_settings(interaction.guild_id) if interaction.guild_id is not None else None
    candidates = candidates_for(req.count, gs.best_of if gs else None) \
        if reference_key and variation_of is None else None

    def build(job) -> contract.GeneratePayload:
        fields: dict[str, Any] = dict(
            job_id=job.id, user_id=user_id, prompt=req.prompt, output_prefix=keys.outputs_prefix(user_id, job.id),
            target=target, guild_id=interaction.guild_id, face=face_ref,
            kit=req.kit.concept if req.kit else None, kit_words=req.kit.words if req.kit else None,
            style=req.style.concept if req.style else None, style_words=req.style.words if req.style else None,
            count=req.count, seed=req.seed, width=req.width, height=req.height,
            variation_of=variation_of, allow_nsfw=req.allow_nsfw, reference_key=reference_key,
            candidates=candidates, instant_key=keys.instant_key(user_id, face.id) if instant else None,
        )
        s = services.settings
        if s.generate_steps is not None:  # deployment/test defaults (e.g. 2 steps at 64² on the tiny model)
            fields["steps"] = s.generate_steps
        if s.generate_side is not None:
            fields["width"] = fields["height"] = s.generate_side
        return contract.GeneratePayload(**fields)

    job, _ = await jobs.create_and_enqueue(
        services, kind=kind, user_id=user_id, build_payload=build, guild_id=interaction.guild_id,
        channel_id=interaction.channel_id, interaction_id=interaction.id, concept_id=face.id,
    )
    return job, await jobs.queue_position(services, job)


def request_from_payload(old: contract.GeneratePayload) -> GenerateRequest:
    """A new request like an earlier one (reroll, vary): same prompt, kit, style, size and count, a new seed."""
    kit = CatalogueChoice("", old.kit_words or "", old.kit) if (old.kit or old.kit_words) else None
    style = CatalogueChoice("", old.style_words or "", old.style) if (old.style or old.style_words) else None
    return GenerateRequest(prompt=old.prompt, count=old.count, seed=secrets.randbelow(limits.SEED_MAX + 1),
                           width=old.width, height=old.height, kit=kit, style=style, allow_nsfw=old.allow_nsfw)


def describe(req: GenerateRequest, locale: str = "en-US") -> str:
    """What was asked, in the member's language (the prompt itself is shown as typed, never translated)."""
    extra = "".join(
        [translate("request.in_kit", locale, kit=req.kit.name) if req.kit and req.kit.name else "",
         translate("request.with_style", locale, style=req.style.name) if req.style and req.style.name else ""]
    )
    return translate("request.images_of_you", locale, count=req.count, extra=extra,
                     prompt=discord.utils.escape_markdown(req.prompt))
