"""A squad picture belongs to every member in it: any of them may delete it, and ``/forget`` by any of them deletes
every squad they are in — the picture's files and rows, the job (it holds their face key), its arq keys and every
message of it (the result, the request, the invitations, the notices). Torch-free."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import discord
from arq.constants import job_key_prefix, result_key_prefix, retry_key_prefix

from bot import cancel, jobs
from storage import keys

if TYPE_CHECKING:
    from bot.services import Services
    from storage.database import Job
    from storage.repo_squads import Squad

log = logging.getLogger(__name__)


async def delete_files(services: Services, job: Job) -> int:
    """The picture's output rows and files (under the requester's folder); how many files."""
    found = set(await services.db.delete_outputs(job.id))
    prefix = job.payload.get("output_prefix") or keys.outputs_prefix(job.user_id, job.id)
    if str(prefix).startswith(keys.user_prefix(job.user_id)):
        found |= set(await asyncio.to_thread(services.store.list, prefix))
    for key in found:
        await asyncio.to_thread(services.store.delete, key)
    return len(found)


async def _delete_messages(client: discord.Client | None, found: set[tuple[int, int]]) -> int:
    n = 0
    for channel_id, message_id in found:
        if client is None:
            continue
        try:
            await client.http.delete_message(channel_id, message_id, reason="/forget")
            n += 1
        except discord.NotFound:
            n += 1
        except discord.HTTPException as exc:
            log.warning("squad forget: could not delete message %s (status %s)", message_id, exc.status)
    return n


async def forget_squad(services: Services, client: discord.Client | None, squad: Squad) -> int:
    """Delete one squad and everything of it; the messages deleted."""
    db = services.db
    found = set(await db.squad_messages(squad.id))
    job = await db.get_job(squad.job_id) if squad.job_id is not None else None
    if job is not None:
        if job.status in ("queued", "running"):
            await cancel.cancel_jobs(services, [job], reason="forgotten")
        await delete_files(services, job)
        if job.channel_id and job.message_id:
            found.add((job.channel_id, job.message_id))
        found |= set(await db.delete_job_records(job.id))
        stale = [p + a for a in jobs.arq_ids(job) for p in (job_key_prefix, retry_key_prefix, result_key_prefix)]
        await services.arq.delete(*stale)
    for channel_id, message_id in found:
        await db.forget_message(channel_id, message_id)
    await db.delete_squad(squad.id)
    return await _delete_messages(client, found)


async def forget_member(services: Services, user_id: int, client: discord.Client | None) -> int:
    """``/forget`` of ``user_id``: every squad they are in, and their invitation settings; messages deleted."""
    n = 0
    for squad in await services.db.squads_with(user_id):
        n += await forget_squad(services, client, squad)
    await services.db.forget_squad_settings(user_id)
    return n
