"""Messages the bot posts itself when the worker could not (``event.posted`` is False). Torch-free."""

from __future__ import annotations

import asyncio
import io
import logging
from typing import TYPE_CHECKING, Any

import discord

from storage import ArtifactNotFound

if TYPE_CHECKING:
    from bot.services import Services
    from gpu_worker.contract import Event
    from storage.database import Job

log = logging.getLogger(__name__)

MAX_FILES = 4


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


def _mention(user_id: int) -> discord.AllowedMentions:
    return discord.AllowedMentions(users=[discord.Object(id=user_id)], roles=False, everyone=False)


async def _files(services: Services, keys: list[str], user_id: int) -> list[discord.File]:
    from bot.events import _own_keys

    out = []
    for i, key in enumerate(_own_keys(keys, user_id)[:MAX_FILES]):
        try:
            data = await asyncio.to_thread(services.store.get_bytes, key)
        except ArtifactNotFound:
            log.warning("delivery: output %s is missing from the store", key)
            continue
        ext = key.rsplit(".", 1)[-1] if "." in key else "png"
        out.append(discord.File(io.BytesIO(data), filename=f"kitbooth-{i + 1}.{ext}"))
    return out


async def deliver(bot: discord.Client, services: Services, event: Event, job: Job | None) -> bool:
    """Post the user-visible message for ``event``; True when something was sent."""
    from bot.buttons import result_view

    channel_id = (event.target.channel_id if event.target else None) or (job.channel_id if job else None)
    channel = await resolve_channel(bot, channel_id)
    if channel is None:
        log.warning("job %s: no channel to deliver %s to", event.job_id, event.type)
        return False
    who = f"<@{event.user_id}>"
    kind = event.kind
    if event.type == "job.done" and kind in ("generate", "vary", "reroll"):
        keys = list(event.data.get("output_keys") or [])
        files = await _files(services, keys, event.user_id)
        prompt = event.data.get("prompt") or (job.payload.get("prompt") if job else "") or ""
        seeds = event.data.get("seeds") or []
        seed_text = f" · seed {seeds[0]}" if seeds else ""
        await channel.send(
            f"{who} **{discord.utils.escape_markdown(prompt)[:300]}**{seed_text}", files=files,
            view=result_view(event.job_id, event.user_id, len(files)), allowed_mentions=_mention(event.user_id),
        )
        return True
    if event.type == "job.done" and kind == "upscale":
        keys = list(event.data.get("output_keys") or [])
        files = await _files(services, keys, event.user_id)
        await channel.send(f"{who} here's your upscaled image.", files=files, allowed_mentions=_mention(event.user_id))
        return True
    if event.type == "job.done" and kind == "export":
        keys = list(event.data.get("file_keys") or [])
        user = bot.get_user(event.user_id) or await bot.fetch_user(event.user_id)
        await user.send("Your KitBooth concept, exported:", files=await _files(services, keys, event.user_id))
        return True
    if event.type == "concept.ready":
        concept_kind = job.payload.get("kind") if job is not None else None
        what = "your face is" if concept_kind == "face" else f"the {concept_kind or 'new concept'} is"
        await channel.send(f"✅ {who} {what} ready — try `/generate prompt:scoring the winner in the final`.",
                           allowed_mentions=_mention(event.user_id))
        return True
    if event.type == "job.failed":
        reason = str(event.data.get("reason") or "the job failed")
        await channel.send(f"⚠️ {who} {reason[:400]}", allowed_mentions=_mention(event.user_id))
        return True
    return False
