"""Messages the bot posts itself when the worker could not (``event.posted`` is False). Torch-free.

Every message comes from the one renderer (``kitbooth.render``) and is sent with
``kitbooth.render_discord.send_kwargs``, so a member gets the same content, files and buttons whoever posts it.
Images are the stored PNG bytes themselves (read from the store off the event loop), so they keep the A1111
``parameters`` text and the AI-generated mark the worker wrote. Only keys under the event owner's
``users/<id>/`` are ever read (``storage.keys.own_keys``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import discord

from kitbooth import render, render_squad
from kitbooth.i18n import translate
from kitbooth.render_discord import send_kwargs
from storage import ArtifactNotFound, keys

if TYPE_CHECKING:
    from bot.services import Services
    from gpu_worker.contract import Event
    from storage import ArtifactStore
    from storage.database import Job

log = logging.getLogger(__name__)

MAX_FILES = 4  # images of one result (the worker posts at most as many)
IMAGE_KINDS = ("generate", "vary", "reroll")


async def resolve_channel(bot: discord.Client, channel_id: int | None) -> Any:
    if not channel_id:
        return None
    channel = bot.get_channel(channel_id)
    if channel is None:
        try:
            channel = await bot.fetch_channel(channel_id)
        except (discord.NotFound, discord.Forbidden):
            return None
    return channel


def _read_all(store: ArtifactStore, wanted: list[str]) -> list[tuple[str, bytes]]:
    """(key, bytes) of every key still in the store — runs in a thread (the store is blocking I/O)."""
    out = []
    for key in wanted:
        try:
            out.append((key, store.get_bytes(key)))
        except ArtifactNotFound:
            log.warning("delivery: %s is missing from the store", key)
    return out


async def _read(services: Services, raw: Any, user_id: int, limit: int = MAX_FILES) -> list[tuple[str, bytes]]:
    return await asyncio.to_thread(_read_all, services.store, keys.own_keys(raw, user_id)[:limit])


def _payload(job: Job | None) -> dict[str, Any]:
    return job.payload if job is not None and isinstance(job.payload, dict) else {}


def _locale(event: Event, payload: dict[str, Any]) -> str:
    """The member's language: the event's target, else the job payload's (older ones: English)."""
    if event.target is not None:
        return event.target.locale
    return str((payload.get("target") or {}).get("locale") or "en-US")


async def render_event(services: Services, event: Event, job: Job | None) -> render.Outgoing | None:
    """The message for ``event`` (None when it has none), exactly as the worker renders it."""
    data, payload = event.data, _payload(job)
    locale = _locale(event, payload)
    if event.type == "job.done" and event.kind in IMAGE_KINDS:
        pngs = [png for _key, png in await _read(services, data.get("output_keys"), event.user_id)]
        return render.generate_result(
            job_id=event.job_id, user_id=event.user_id, prompt=str(data.get("prompt") or payload.get("prompt") or ""),
            seeds=[int(x) for x in data.get("seeds") or []], pngs=pngs, nsfw=data.get("nsfw"),
            seconds=data.get("seconds"), likeness=data.get("likeness"), preview=bool(payload.get("instant_key")),
            locale=locale,
        )
    if event.type == "job.done" and event.kind == "squad":
        found = await _read(services, data.get("output_keys"), event.user_id, limit=1)
        return render_squad.squad_result(
            job_id=event.job_id, member_ids=[int(m) for m in data.get("member_ids") or [event.user_id]],
            prompt=str(payload.get("prompt") or ""), seed=(data.get("seeds") or [None])[0],
            png=found[0][1] if found else None, nsfw=bool((data.get("nsfw") or [False])[0]), locale=locale)
    if event.type == "job.done" and event.kind == "upscale":
        found = await _read(services, data.get("output_keys"), event.user_id, limit=1)
        return render.upscale_result(job_id=event.job_id, png=found[0][1], locale=locale) if found else None
    if event.type == "job.done" and event.kind == "export":
        prefix = str(payload.get("output_prefix") or "")
        found = await _read(services, data.get("file_keys"), event.user_id, limit=render.MAX_FILES)
        files = [(key[len(prefix):] if prefix and key.startswith(prefix) else key.rsplit("/", 1)[-1], png)
                 for key, png in found]
        return render.export_result(formats=list(payload.get("formats") or ["a1111", "kohya"]),
                                    files=[(name.replace("/", "-"), body) for name, body in files], locale=locale)
    if event.type == "concept.ready":
        wanted = keys.own_keys(data.get("sample_keys"), event.user_id)
        if job is not None and job.guild_id is not None and payload.get("kind") in ("kit", "style"):
            wanted += keys.prefixed_keys(data.get("sample_keys"), keys.guild_prefix(job.guild_id))
        found = await asyncio.to_thread(_read_all, services.store, wanted[:MAX_FILES])
        samples = [png for _key, png in found]
        return render.concept_ready_result(
            kind=str(payload.get("kind") or "face"), name=str(payload.get("name") or ""),
            seconds=data.get("seconds"), steps=data.get("steps"), size_bytes=data.get("size_bytes"), samples=samples,
            locale=locale,
        )
    if event.type == "job.failed":
        return render.failure_result(str(data.get("reason") or translate("failure.generic_job", locale)))
    if event.type == "job.cancelled":
        return render.cancelled_result(locale)
    return None


async def deliver(bot: discord.Client, services: Services, event: Event, job: Job | None) -> bool:
    """Post the user-visible message for ``event``; True when something was sent. Exports go by DM.

    Every message sent is recorded (``messages`` table) so ``/forget`` can delete it."""
    if event.type in ("job.done", "concept.ready") and await _delivered_before(services, event):
        log.info("job %s: %s already delivered (a repeated event); not posted again", event.job_id, event.type)
        return False
    msg = await render_event(services, event, job)
    if msg is None:
        return False
    if event.type == "job.done" and event.kind == "export":
        user = bot.get_user(event.user_id) or await bot.fetch_user(event.user_id)
        sent = await user.send(**send_kwargs(msg))
        await _record(services, event, sent, "export")
        return True
    channel_id = (event.target.channel_id if event.target else None) or (job.channel_id if job else None)
    channel = await resolve_channel(bot, channel_id)
    if channel is None:
        log.warning("job %s: no channel to deliver %s to", event.job_id, event.type)
        return False
    sent = await channel.send(**send_kwargs(msg, mention=event.user_id))
    await _record(services, event, sent, "delivery")
    return True


async def _delivered_before(services: Services, event: Event) -> bool:
    """Whether the bot already posted this job's result: a worker try that arq ran again after a shutdown re-sends
    its end event, and a result is shown once."""
    return any(m.job_id == event.job_id and m.kind in ("delivery", "export")
               for m in await services.db.list_messages(event.user_id))


async def _record(services: Services, event: Event, sent: Any, kind: str) -> None:
    if sent is None:
        return
    guild = getattr(sent, "guild", None)
    await services.db.record_message(user_id=event.user_id, channel_id=sent.channel.id, message_id=sent.id,
                                     kind=kind, job_id=event.job_id, guild_id=guild.id if guild else None)
