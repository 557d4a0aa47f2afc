"""A squad picture belongs to every member in it: any of them may delete it, and ``/forget`` by any of them deletes
every squad they are in — the picture's files and rows, the job (it holds their face key), its arq keys and every
message of it (the result, the request, the invitations, the notices), which ``bot.forget`` deletes with the
member's own (and reports any Discord keeps). Torch-free."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

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


async def forget_squad(services: Services, squad: Squad) -> dict[tuple[int, int], int | None]:
    """Delete one squad and everything of it but its Discord messages, which it returns ((channel id, message
    id) → guild id) for ``/forget`` to delete with the member's own, reporting any that stay."""
    db = services.db
    found = dict.fromkeys(await db.squad_messages(squad.id), squad.guild_id)
    job = await db.get_job(squad.job_id) if squad.job_id is not None else None
    if job is not None:
        if job.status in ("queued", "running"):
            await cancel.cancel_jobs(services, [job], reason="forgotten")
        await delete_files(services, job)
        if job.channel_id and job.message_id:
            found[(job.channel_id, job.message_id)] = job.guild_id
        found.update(dict.fromkeys(await db.delete_job_records(job.id), squad.guild_id))
        await services.arq.delete(*jobs.redis_keys(job))
    for channel_id, message_id in found:
        await db.forget_message(channel_id, message_id)
    await db.delete_squad(squad.id)
    return found


async def forget_member(services: Services, user_id: int) -> dict[tuple[int, int], int | None]:
    """``/forget`` of ``user_id``: every squad they are in, and their invitation settings; the squads' messages
    still to delete."""
    found: dict[tuple[int, int], int | None] = {}
    for squad in await services.db.squads_with(user_id):
        found.update(await forget_squad(services, squad))
    await services.db.forget_squad_settings(user_id)
    return found
