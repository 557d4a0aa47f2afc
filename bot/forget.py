"""``/forget`` (delete everything of a user, everywhere) and ``/export`` (the user's own concept, by DM). Torch-free.

``forget_user`` runs in this order, so nothing is left half-deleted that a later step could resurrect:

1. jobs: the contract's user cancel flag is set (running jobs stop between steps) and queued arq jobs are removed
   (``bot.jobs.cancel_user_jobs``);
2. the server catalogue entries the user created stay with their server, without the creator's id;
3. the bot's own messages that carried the user's results are deleted from Discord (best effort);
4. artifacts: everything under ``users/<id>/`` (photos, concepts, checkpoints, outputs, exports);
5. rows: the user row and, by cascade, their concepts, jobs and outputs;
6. Redis: arq job/result/retry keys of their jobs, their entries of the events stream (acked in every consumer
   group first), any other ``kitbooth:…:<id>…`` key, and the cancel flag itself unless a job of theirs is still
   running (then it expires with the contract's TTL and carries nothing but a time);
7. in-process caches (rate-limit clock, "training starting" guard).
"""

from __future__ import annotations

import asyncio
import io
import logging
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import discord
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix

from bot import jobs
from gpu_worker import contract
from kitbooth.errors import NotFound
from storage import keys

if TYPE_CHECKING:
    from bot.services import Services
    from storage.database import Job

log = logging.getLogger(__name__)

ARTIFACT_KINDS = ("photos", "concepts", "checkpoints", "outputs", "exports")


@dataclass
class ForgetReport:
    user_id: int
    cancelled_jobs: int = 0  # queued removed + running asked to stop
    artifacts: Counter = field(default_factory=Counter)  # by folder (photos, concepts, outputs, ...)
    rows: dict[str, int] = field(default_factory=dict)  # concepts, jobs, outputs, users
    discord_messages: int = 0
    redis_keys: int = 0
    events: int = 0
    still_running: int = 0
    detached: dict[str, int] = field(default_factory=dict)

    @property
    def total_files(self) -> int:
        return sum(self.artifacts.values())

    def lines(self) -> list[str]:
        a, r = self.artifacts, self.rows
        out = [
            f"• jobs cancelled: {self.cancelled_jobs}",
            f"• photos: {a['photos']}",
            f"• face concepts: {r.get('concepts', 0)} ({a['concepts']} file{'s' * (a['concepts'] != 1)}"
            f", {a['checkpoints']} checkpoint file{'s' * (a['checkpoints'] != 1)})",
            f"• generated images: {r.get('outputs', 0)} ({a['outputs']} file{'s' * (a['outputs'] != 1)}"
            f", {self.discord_messages} Discord message{'s' * (self.discord_messages != 1)})",
            f"• exports: {a['exports']}",
            f"• job records: {r.get('jobs', 0)}",
            f"• account record: {r.get('users', 0)}",
            f"• queue and cache entries: {self.redis_keys + self.events}",
        ]
        if a["other"]:
            out.append(f"• other files: {a['other']}")
        if self.detached.get("catalogue_entries") or self.detached.get("catalogue_concepts"):
            out.append(f"• server kits/styles you added stay with the server, without your name "
                       f"({self.detached.get('catalogue_entries', 0)})")
        return out


# --- Redis --------------------------------------------------------------------------------------------
def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def _arq_keys_of(services: Services, job_ids: set[int]) -> list[str]:
    """arq keys (queued, retry, result) that belong to these DB jobs, train slices included."""
    r = services.arq
    found = []
    for prefix in (job_key_prefix, retry_key_prefix, result_key_prefix):
        async for key in r.scan_iter(match=prefix + "kb-*", count=500):
            k = _s(key)
            parsed = contract.parse_arq_job_id(k[len(prefix):])
            if parsed and parsed[0] in job_ids:
                found.append(k)
    return found


async def _running_job_ids(services: Services, job_ids: set[int]) -> set[int]:
    running = set()
    async for key in services.arq.scan_iter(match=in_progress_key_prefix + "kb-*", count=500):
        parsed = contract.parse_arq_job_id(_s(key)[len(in_progress_key_prefix):])
        if parsed and parsed[0] in job_ids:
            running.add(parsed[0])
    return running


async def _purge_events(services: Services, user_id: int) -> int:
    """Delete the user's entries from the events stream (after acking them in every consumer group)."""
    r, stream = services.redis, services.settings.events_stream
    if not await r.exists(stream):
        return 0
    groups = [_s(g["name"]) for g in await r.xinfo_groups(stream)]
    mine, start = [], "-"
    while True:
        batch = await r.xrange(stream, min=start, max="+", count=500)
        if not batch:
            break
        for entry_id, fields in batch:
            try:
                event = contract.Event.from_fields(fields)
                owner = event.user_id
                target_user = event.target.user_id if event.target else None
            except Exception:
                continue
            if user_id in (owner, target_user):
                mine.append(_s(entry_id))
        last = _s(batch[-1][0])
        if len(batch) < 500:
            break
        ms, seq = last.split("-")
        start = f"{ms}-{int(seq) + 1}"
    if not mine:
        return 0
    for g in groups:
        await r.xack(stream, g, *mine)
    return int(await r.xdel(stream, *mine))


def _mentions_user(key: str, user_id: int) -> bool:
    return str(user_id) in key.split(":")


async def _purge_user_keys(services: Services, user_id: int, *, keep: set[str]) -> int:
    """Any other ``kitbooth:*`` key naming the user as a ``:``-separated segment (caches, rate limits)."""
    r, n = services.redis, 0
    async for key in r.scan_iter(match=f"kitbooth:*{int(user_id)}*", count=500):
        k = _s(key)
        if k not in keep and _mentions_user(k, user_id):
            n += int(await r.delete(k))
    return n


# --- forget ---------------------------------------------------------------------------------------------
async def _delete_messages(client: discord.Client | None, user_jobs: list[Job]) -> int:
    if client is None:
        return 0
    n = 0
    seen = set()
    for job in user_jobs:
        if not (job.channel_id and job.message_id) or (job.channel_id, job.message_id) in seen:
            continue
        seen.add((job.channel_id, job.message_id))
        try:
            await client.http.delete_message(job.channel_id, job.message_id, reason="/forget")
            n += 1
        except (discord.NotFound, discord.Forbidden):
            pass
        except discord.HTTPException as exc:
            log.warning("forget: could not delete message %s (status %s)", job.message_id, exc.status)
    return n


def _artifact_kind(key: str, user_id: int) -> str:
    rest = key[len(keys.user_prefix(user_id)):]
    head = rest.split("/", 1)[0]
    return head if head in ARTIFACT_KINDS else "other"


async def forget_user(services: Services, user_id: int, *, client: discord.Client | None = None) -> ForgetReport:
    """Delete everything KitBooth holds about ``user_id``; return what went."""
    db, store = services.db, services.store
    report = ForgetReport(user_id)

    # 1. Stop their work first, so nothing new is written while we delete.
    user_jobs = await db.list_jobs(user_id=user_id)
    job_ids = {j.id for j in user_jobs}
    active = {j.id for j in user_jobs if j.status in ("queued", "running")}
    removed = set(await jobs.cancel_user_jobs(services, user_id))
    report.cancelled_jobs = len(active | removed)

    # 2. Server catalogue entries they created stay with the server.
    report.detached = await db.detach_user_catalogue(user_id)

    # 3. The bot's messages that carried their results.
    report.discord_messages = await _delete_messages(client, user_jobs)

    # 4. Artifacts (one prefix holds everything of a user).
    prefix = keys.user_prefix(user_id)
    listed = await asyncio.to_thread(store.list, prefix)
    report.artifacts = Counter(_artifact_kind(k, user_id) for k in listed)
    await asyncio.to_thread(store.delete_prefix, prefix)

    # 5. Rows (concepts, jobs and outputs go by cascade).
    report.rows = await db.delete_user(user_id)

    # 6. Redis.
    running = await _running_job_ids(services, job_ids)
    report.still_running = len(running)
    stale = await _arq_keys_of(services, job_ids)
    if stale:
        report.redis_keys += int(await services.arq.delete(*stale))
    report.events = await _purge_events(services, user_id)
    flag = contract.cancel_user_key(user_id)
    report.redis_keys += await _purge_user_keys(services, user_id, keep={flag})
    if not running:
        await services.arq.delete(flag)

    # 7. In-process caches.
    extras = services.extras
    extras.get("last_request_at", {}).pop(user_id, None)
    starting = extras.get("training_starting")
    if isinstance(starting, set):
        starting.discard(user_id)

    # Anything a running job wrote between steps 4 and 6 (it stops at its next step).
    late = await asyncio.to_thread(store.list, prefix)
    if late:
        report.artifacts.update(_artifact_kind(k, user_id) for k in late)
        await asyncio.to_thread(store.delete_prefix, prefix)
    log.info("forget: user %s — %d files, rows %s, %d jobs cancelled, %d redis keys, %d events, %d messages",
             user_id, report.total_files, report.rows, report.cancelled_jobs, report.redis_keys, report.events,
             report.discord_messages)
    return report


# --- export -------------------------------------------------------------------------------------------
async def start_export(services: Services, interaction: discord.Interaction) -> Job:
    """Enqueue an ``ExportPayload`` for the user's ready face concept; the files arrive by DM."""
    user_id = interaction.user.id
    face = await services.db.ready_face(user_id)
    if face is None or not face.artifact_key:
        raise NotFound("You have no trained face to export yet — run `/train` first (see `/me` for its status).")
    dm_channel_id = interaction.channel_id or 0
    try:
        dm = await interaction.user.create_dm()
        dm_channel_id = dm.id
    except discord.HTTPException:
        log.info("export: could not open a DM with user %s; the worker will answer in the channel", user_id)
    target = contract.DiscordTarget(channel_id=dm_channel_id, user_id=user_id, guild_id=None,
                                    application_id=interaction.application_id)

    def build(job: Job) -> contract.ExportPayload:
        return contract.ExportPayload(
            job_id=job.id, user_id=user_id, concept_key=face.artifact_key,
            output_prefix=f"{keys.user_prefix(user_id)}exports/{job.id}/", target=target,
        )

    job, _payload = await jobs.create_and_enqueue(
        services, kind="export", user_id=user_id, build_payload=build, guild_id=interaction.guild_id,
        channel_id=dm_channel_id, interaction_id=interaction.id, concept_id=face.id,
    )
    return job


EXPORT_MESSAGE = ("📦 Your KitBooth face concept, ready for other tools:\n"
                  "• `*-a1111*` — AUTOMATIC1111 / ComfyUI (embedding + LoRA)\n"
                  "• `*-kohya*` — kohya-format LoRA\n"
                  "Keep them private: they can draw your face. `/forget` deletes KitBooth's copies.")


async def deliver_export(bot: Any, event: contract.Event) -> bool:
    """For B1's events consumer: on ``job.done`` of an export job that the worker could not post itself, DM the
    files to their owner. Returns True when the event was an export and is handled (delivered or posted)."""
    if event.type != "job.done" or event.kind != "export":
        return False
    if event.posted:
        return True
    services: Services = bot.services
    file_keys = [k for k in event.data.get("file_keys", []) if k.startswith(keys.user_prefix(event.user_id))]
    files = []
    for key in file_keys[:10]:
        try:
            data = await asyncio.to_thread(services.store.get_bytes, key)
        except Exception:
            log.warning("export job %s: file %s is gone", event.job_id, key)
            continue
        files.append(discord.File(io.BytesIO(data), filename=posixpath.basename(key)))
    if not files:
        log.warning("export job %s: nothing to deliver", event.job_id)
        return True
    user = bot.get_user(event.user_id) or await bot.fetch_user(event.user_id)
    await user.send(EXPORT_MESSAGE, files=files)
    log.info("export job %s: %d file(s) sent by DM to user %s", event.job_id, len(files), event.user_id)
    return True
