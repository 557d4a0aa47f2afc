"""Squad photos (issue 15): the request, the invitations, the answers, the launch and the expiry. Torch-free.

1. ``prepare``: every check of ``/squad`` before anything is written — the prompt (``validate_prompt``), the
   requester's own ready face, 1-4 other human members each named once, each with invitations on, not blocking
   the requester and with a ready face (all three refused with the same "can't be invited": nothing is revealed
   about a member), the kit (required) and style from the server's catalogue, and the requester's quota.
2. ``open_squad``: the squad row and its members, each with a random token their buttons carry.
3. ``answer``: a member's Approve/Decline (their own token, while pending and before ``expires_at``). A decline
   cancels the squad and tells the requester who declined, nothing else; the last approval launches it.
4. ``launch``: the job row and ``SquadPayload`` with the approved members' faces only (each member's face as it
   was when they approved it) and the approval set, which the worker re-checks. It counts against the
   requester's quota (checked at the request) and is enqueued like any image job.
5. ``expire_due``: the sweep (``bot.cogs.squad``'s loop) cancels squads past their timeout and tells the requester
   who didn't answer.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord

from bot import catalogue, delivery, jobs, lookalike, quotas
from bot.generate_request import CatalogueChoice, concept_ref, nsfw_allowed, resolve_entry, validate_prompt
from bot.squad_texts import guild_locale, refusal, t
from gpu_worker import contract
from kitbooth import limits
from kitbooth.errors import InvalidInput, NotAllowed, NotFound
from storage import keys

if TYPE_CHECKING:
    from bot.services import Services
    from storage.database import Job
    from storage.repo_squads import Squad

log = logging.getLogger(__name__)

SQUAD_SIDE = (768, 512)  # landscape: people side by side


def mention(user_id: int) -> str:
    return f"<@{int(user_id)}>"


def mentions(user_ids: Sequence[int]) -> str:
    return ", ".join(mention(u) for u in user_ids)


@dataclass(frozen=True)
class SquadRequest:
    prompt: str
    kit: CatalogueChoice
    style: CatalogueChoice | None
    invitee_ids: list[int]
    face_id: int  # the requester's ready face


async def can_be_invited(services: Services, user_id: int, requester_id: int) -> bool:
    """Invitations on, not blocking the requester, a ready face: the one rule, whatever the reason."""
    db = services.db
    if not await db.squad_invitations_on(user_id) or await db.blocks_squad(user_id, requester_id):
        return False
    face = await db.ready_face(user_id)
    return face is not None and bool(face.artifact_key)


async def prepare(services: Services, interaction: discord.Interaction, *, prompt: str, kit: str,
                  style: str | None, invitees: Sequence[Any]) -> SquadRequest:
    """Every check of ``/squad``; raises a ``UserFacingError`` on the first failure. No REST calls."""
    requester, guild_id = interaction.user.id, interaction.guild_id
    assert guild_id is not None
    named = [m for m in invitees if m is not None]
    ids = [m.id for m in named]
    limits.check_squad_size(len(ids))
    if len(set(ids)) != len(ids) or requester in ids or any(getattr(m, "bot", False) for m in named):
        raise refusal(InvalidInput, "refusal.squad_others")
    prompt = await validate_prompt(services, requester, prompt)
    face = await services.db.ready_face(requester)
    if face is None or not face.artifact_key:
        raise refusal(NotFound, "refusal.squad_no_face")
    refused = [u for u in ids if not await can_be_invited(services, u, requester)]
    if refused:
        raise refusal(NotAllowed, "refusal.squad_cant_invite", members=mentions(refused))
    await catalogue.ensure_seeded(services.db, guild_id)
    kit_choice = await resolve_entry(services, guild_id, kit, "kit")
    style_choice = await resolve_entry(services, guild_id, style, "style") if style else None
    await quotas.check_image_request(services, requester, guild_id, 1)
    return SquadRequest(prompt, kit_choice, style_choice, ids, face.id)


async def open_squad(services: Services, interaction: discord.Interaction, req: SquadRequest) -> Squad:
    members = [(interaction.user.id, secrets.token_hex(8))] + [(u, secrets.token_hex(8)) for u in req.invitee_ids]
    return await services.db.create_squad(
        requester_id=interaction.user.id, guild_id=interaction.guild_id or 0, channel_id=interaction.channel_id or 0,
        prompt=req.prompt, kit=req.kit.name, style=req.style.name if req.style else None,
        expires_at=time.time() + services.settings.squad_invite_timeout_s, members=members,
        requester_concept_id=req.face_id)


async def record(services: Services, squad: Squad, sent: Any, user_id: int) -> None:
    """Remember a message of this squad for ``/forget`` (every member's forget deletes it, bot.squad_forget)."""
    channel = getattr(sent, "channel", None)
    if sent is None or channel is None:
        return
    await services.db.record_squad_message(squad.id, channel.id, sent.id)
    await services.db.record_message(user_id=user_id, channel_id=channel.id, message_id=sent.id, kind="squad",
                                     job_id=squad.job_id, guild_id=squad.guild_id)


async def notify(services: Services, client: discord.Client, squad: Squad, key: str, **fields: Any) -> None:
    """A notice to the requester in the squad's channel (mentioning only them), in the server's language."""
    text = t(key, guild_locale(client, squad.guild_id), requester=mention(squad.requester_id), **fields)
    channel = await delivery.resolve_channel(client, squad.channel_id)
    if channel is None:
        log.warning("squad %s: no channel to tell the requester", squad.id)
        return
    sent = await channel.send(text, allowed_mentions=discord.AllowedMentions(
        users=[discord.Object(squad.requester_id)], everyone=False, roles=False))
    await record(services, squad, sent, squad.requester_id)


# --- answers ------------------------------------------------------------------------------------
async def answer(services: Services, client: discord.Client, squad_id: int, member_id: int, token: str, *,
                 approve: bool) -> tuple[Squad, Job | None]:
    """Record ``member_id``'s answer (their token, while pending); the job when this approval launched it."""
    db = services.db
    squad = await db.get_squad(squad_id)
    if squad is None:
        raise refusal(NotFound, "refusal.squad_gone")
    if not any(m.user_id == member_id and m.token == token and m.position > 0 for m in await db.squad_members(squad_id)):
        raise refusal(NotAllowed, "refusal.squad_forged")
    if squad.status != "pending":
        raise refusal(InvalidInput, "refusal.squad_closed")
    if time.time() >= squad.expires_at:
        await expire(services, client, squad)
        raise refusal(InvalidInput, "refusal.squad_expired")
    concept_id = None
    if approve:
        face = await db.ready_face(member_id)
        if face is None or not face.artifact_key:
            raise refusal(NotFound, "refusal.squad_no_face")
        concept_id = face.id
    if not await db.answer_squad(squad_id, member_id, token, "approved" if approve else "declined", concept_id):
        raise refusal(InvalidInput, "refusal.squad_closed")
    if not approve:
        if await db.set_squad_status(squad_id, "declined"):
            await notify(services, client, squad, "squad.declined", member=mention(member_id))
        return squad, None
    members = await db.squad_members(squad_id)
    if all(m.answer == "approved" for m in members):
        return squad, await launch(services, client, squad)
    return squad, None


async def expire(services: Services, client: discord.Client, squad: Squad) -> bool:
    if not await services.db.set_squad_status(squad.id, "expired"):
        return False
    waiting = [m.user_id for m in await services.db.squad_members(squad.id) if m.answer == "pending"]
    await notify(services, client, squad, "squad.expired", members=mentions(waiting))
    log.info("squad %s expired (%d unanswered)", squad.id, len(waiting))
    return True


async def expire_due(services: Services, client: discord.Client, now: float | None = None) -> int:
    """Cancel every pending squad past its timeout; how many."""
    due = await services.db.due_squads(time.time() if now is None else now)
    return sum([await expire(services, client, s) for s in due])


# --- launch -------------------------------------------------------------------------------------
async def _faces(services: Services, squad: Squad) -> list[contract.SquadFace] | None:
    """Each member's face as approved (reading order), or None when one is no longer theirs and ready."""
    out = []
    for m in await services.db.squad_members(squad.id):
        face = await services.db.get_concept(m.concept_id) if m.concept_id is not None else None
        if face is None or face.owner_id != m.user_id or face.status != "ready" or not face.artifact_key:
            return None
        ref = await lookalike.reference_key_for(services, m.user_id, face.id)
        out.append(contract.SquadFace(user_id=m.user_id, face=await concept_ref(services, face),
                                      reference_key=ref))
    return out


async def launch(services: Services, client: discord.Client, squad: Squad) -> Job | None:
    """Everyone approved: write the job row, enqueue the payload, tell the channel (queue position)."""
    db = services.db
    if not await db.set_squad_status(squad.id, "queued"):
        return None  # someone else launched or cancelled it meanwhile
    faces = await _faces(services, squad)
    if faces is None:
        await db.set_squad_status(squad.id, "cancelled", only_from="queued")
        await notify(services, client, squad, "squad.face_gone")
        return None
    kit = await resolve_entry(services, squad.guild_id, squad.kit, "kit")
    style = await resolve_entry(services, squad.guild_id, squad.style, "style") if squad.style else None
    gs = await db.guild_settings(squad.guild_id)
    channel = await delivery.resolve_channel(client, squad.channel_id)
    target = contract.DiscordTarget(channel_id=squad.channel_id, user_id=squad.requester_id, guild_id=squad.guild_id,
                                    application_id=getattr(client, "application_id", None),
                                    locale=guild_locale(client, squad.guild_id))
    best_of = gs.best_of if gs.best_of is not None else 2
    s = services.settings
    width, height = (s.generate_side, s.generate_side) if s.generate_side else SQUAD_SIDE

    def build(job: Job) -> contract.SquadPayload:
        return contract.SquadPayload(
            job_id=job.id, user_id=squad.requester_id, squad_id=squad.id, prompt=squad.prompt,
            output_prefix=keys.outputs_prefix(squad.requester_id, job.id), target=target, members=faces,
            approved=[f.user_id for f in faces], guild_id=squad.guild_id, kit=kit.concept, kit_words=kit.words,
            style=style.concept if style else None, style_words=style.words if style else None,
            seed=secrets.randbelow(limits.SEED_MAX + 1), width=width, height=height, steps=s.generate_steps or 25,
            candidates=min(best_of, limits.COUNT_MAX) if best_of > 1 and all(f.reference_key for f in faces) else None,
            allow_nsfw=nsfw_allowed(gs.nsfw_policy, channel))

    job, _ = await jobs.create_and_enqueue(
        services, kind="squad", user_id=squad.requester_id, build_payload=build, guild_id=squad.guild_id,
        channel_id=squad.channel_id, concept_id=(await db.squad_members(squad.id))[0].concept_id)
    await db.set_squad_status(squad.id, "queued", job_id=job.id, only_from="queued")
    squad = await db.get_squad(squad.id) or squad
    queue = await jobs.queue_position(services, job)
    await notify(services, client, squad, "squad.queued", queue=jobs.format_queue(queue), job=job.id)
    log.info("squad %s: everyone approved; job %s enqueued", squad.id, job.id)
    return job


# --- /me settings -------------------------------------------------------------------------------
async def apply_settings(services: Services, user_id: int, *, invitations: str | None = None,
                         block: Any = None, unblock: Any = None, locale: str = "en-US") -> str:
    """``/me squads on|off``, ``/me block member``, ``/me unblock member``: what changed, one line each."""
    db, lines = services.db, []
    if invitations is not None:
        await db.set_squad_invitations(user_id, invitations == "on")
        lines.append(t("squad.settings_on" if invitations == "on" else "squad.settings_off", locale))
    for member, blocked in ((block, True), (unblock, False)):
        if member is None:
            continue
        if member.id == user_id:
            raise refusal(InvalidInput, "refusal.squad_block_self")
        await db.set_squad_block(user_id, member.id, blocked)
        lines.append(t("squad.blocked" if blocked else "squad.unblocked", locale, member=mention(member.id)))
    return "\n".join(lines)
