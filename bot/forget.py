"""``/forget`` (delete everything of a user, everywhere) and ``/export`` (the user's own concept, by DM). Torch-free.

``forget_user`` runs in this order, so nothing is left half-deleted that a later step could resurrect:

1. jobs: the contract's forget marker is set (a job in flight that ends later deletes its own result, files and
   messages and sends no event), then they are cancelled through ``bot.cancel`` (queued arq jobs removed,
   running ones aborted, the user cancel flag set so running jobs stop between steps);
2. the server catalogue entries the user created stay with their server, without the creator's id;
3. every recorded Discord message that shows the user's face, images or prompt (the ``messages`` table: worker
   edits and channel messages, the bot's deliveries, queued-reply echoes, export DMs; plus each job's own
   message id) is deleted by REST: 404 counts as already gone, anything else is named in the reply;
4. artifacts: everything under ``users/<id>/`` (photos, concepts, checkpoints, outputs, exports);
5. rows: the user row and, by cascade, their concepts, jobs and outputs;
6. Redis, from the ids the rows hold (no scan of the keyspace): arq job/result/retry keys of their jobs (every
   slice of a training), their entries of the events stream (acked in every consumer group first), and the cancel
   flags unless a job of theirs is still running (then they expire with the contract's TTL and carry nothing but
   a time under a hashed user id, like the forget marker);
7. in-process state (rate-limit clock, "training starting" guard).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import discord
from arq.constants import in_progress_key_prefix

from bot import cancel, jobs, squad_forget
from bot.translator import locale_of
from gpu_worker import contract
from kitbooth.errors import NotFound
from kitbooth.i18n import keyed, translate
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
    undeleted: list[str] = field(default_factory=list)  # jump links of messages Discord refused to delete
    redis_keys: int = 0
    events: int = 0
    still_running: int = 0
    detached: dict[str, int] = field(default_factory=dict)

    @property
    def total_files(self) -> int:
        return sum(self.artifacts.values())

    def messages_line(self, locale: str = "en-US") -> str:
        line = translate("forget.line.messages", locale, count=self.discord_messages)
        if self.undeleted:  # named, never skipped silently (a 403, or Discord failing)
            line += translate("forget.line.undeleted", locale, links=" ".join(self.undeleted))
        return line

    def lines(self, locale: str = "en-US") -> list[str]:
        a, r, t = self.artifacts, self.rows, translate
        out = [
            t("forget.line.jobs", locale, count=self.cancelled_jobs),
            t("forget.line.photos", locale, count=a["photos"]),
            t("forget.line.concepts", locale, count=r.get("concepts", 0),
              files=t("forget.files", locale, count=a["concepts"]),
              checkpoints=t("forget.checkpoint_files", locale, count=a["checkpoints"])),
            t("forget.line.outputs", locale, count=r.get("outputs", 0), files=t("forget.files", locale,
                                                                                count=a["outputs"])),
            self.messages_line(locale),
            t("forget.line.exports", locale, count=a["exports"]),
            t("forget.line.job_records", locale, count=r.get("jobs", 0)),
            t("forget.line.account", locale, count=r.get("users", 0)),
            t("forget.line.redis", locale, count=self.redis_keys + self.events),
        ]
        if a["other"]:
            out.append(t("forget.line.other", locale, count=a["other"]))
        if self.detached.get("catalogue_entries") or self.detached.get("catalogue_concepts"):
            out.append(t("forget.line.catalogue", locale, count=self.detached.get("catalogue_entries", 0)))
        return out


# --- Redis --------------------------------------------------------------------------------------------
def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)




async def _running_job_ids(services: Services, user_jobs: list[Job]) -> set[int]:
    """The DB jobs a worker is running now (arq's in-progress marker of any of their arq ids)."""
    pairs = [(job.id, arq_id) for job in user_jobs for arq_id in jobs.arq_ids(job)]
    if not pairs:
        return set()
    async with services.arq.pipeline(transaction=False) as pipe:
        for _db_id, arq_id in pairs:
            pipe.exists(in_progress_key_prefix + arq_id)
        flags = await pipe.execute()
    return {db_id for (db_id, _), running in zip(pairs, flags, strict=True) if running}


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


# --- forget ---------------------------------------------------------------------------------------------
def jump_link(guild_id: int | None, channel_id: int, message_id: int) -> str:
    return f"https://discord.com/channels/{guild_id or '@me'}/{channel_id}/{message_id}"


async def _messages_of(services: Services, user_id: int, user_jobs: list[Job]) -> dict[tuple[int, int], int | None]:
    """Every recorded message of the user and of their jobs: (channel id, message id) → guild id."""
    found = {(m.channel_id, m.message_id): m.guild_id for m in await services.db.list_messages(user_id)}
    for job in user_jobs:
        if job.channel_id and job.message_id:
            found.setdefault((job.channel_id, job.message_id), job.guild_id)
    return found


async def _delete_messages(client: discord.Client | None,
                           found: dict[tuple[int, int], int | None]) -> tuple[int, list[str]]:
    """Delete these messages; (deleted or already gone, jump links of those that stay)."""
    if client is None:
        return 0, [jump_link(g, c, m) for (c, m), g in found.items()]
    n, stayed = 0, []
    for (channel_id, message_id), guild_id in found.items():
        try:
            await client.http.delete_message(channel_id, message_id, reason="/forget")
            n += 1
        except discord.NotFound:
            n += 1  # deleted already (by the user, a moderator, or the worker)
        except discord.HTTPException as exc:  # 403 (no permission any more), 5xx after discord.py's retries
            log.warning("forget: could not delete message %s (status %s)", message_id, exc.status)
            stayed.append(jump_link(guild_id, channel_id, message_id))
    return n, stayed


def _artifact_kind(key: str, user_id: int) -> str:
    rest = key[len(keys.user_prefix(user_id)):]
    head = rest.split("/", 1)[0]
    return head if head in ARTIFACT_KINDS else "other"


async def forget_user(services: Services, user_id: int, *, client: discord.Client | None = None) -> ForgetReport:
    """Delete everything KitBooth holds about ``user_id``; return what went."""
    db, store = services.db, services.store
    report = ForgetReport(user_id)

    # 1. Stop their work first, so nothing new is written while we delete; a job that still ends afterwards sees
    #    the marker and removes what it wrote (gpu_worker.runner).
    await services.arq.set(contract.forgotten_user_key(user_id), str(time.time()), ex=contract.FORGOTTEN_TTL_S)
    user_jobs = await db.list_jobs(user_id=user_id)
    active = {j.id for j in user_jobs if j.status in ("queued", "running")}
    cancelled = await cancel.cancel_user(services, user_id, reason="forgotten")
    report.cancelled_jobs = len(active | set(cancelled.removed) | set(cancelled.aborting) | set(cancelled.flagged))

    # 1b. Every squad photo they are in, whoever asked for it (bot.squad_forget): picture and job now, its
    #     messages with theirs in step 3.
    squad_messages = await squad_forget.forget_member(services, user_id)

    # 2. Server catalogue entries they created stay with the server.
    report.detached = await db.detach_user_catalogue(user_id)

    # 3. Every message that shows their face, images or prompt.
    found = {**squad_messages, **await _messages_of(services, user_id, user_jobs)}
    report.discord_messages, report.undeleted = await _delete_messages(client, found)

    # 4. Artifacts (one prefix holds everything of a user).
    prefix = keys.user_prefix(user_id)
    listed = await asyncio.to_thread(store.list, prefix)
    report.artifacts = Counter(_artifact_kind(k, user_id) for k in listed)
    await asyncio.to_thread(store.delete_prefix, prefix)

    # 5. Rows (concepts, jobs and outputs go by cascade).
    report.rows = await db.delete_user(user_id)

    # 6. Redis, by name: arq's keys of their jobs, their events, the cancel flags (kept while a job still runs).
    running = await _running_job_ids(services, user_jobs)
    report.still_running = len(running)
    stale = [k for j in user_jobs for k in jobs.redis_keys(j)]
    stale += [contract.cancel_job_key(j.id) for j in user_jobs if j.id not in running]
    stale += [contract.train_slice_key(j.id) for j in user_jobs if j.kind == "train" and j.id not in running]
    if not running:
        stale.append(contract.cancel_user_key(user_id))
    if stale:
        report.redis_keys += int(await services.arq.delete(*stale))
    report.events = await _purge_events(services, user_id)

    # 7. In-process state.
    services.last_request_at.pop(user_id, None)
    services.training_starting.discard(user_id)

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
        raise keyed(NotFound, "refusal.nothing_to_export")
    dm_channel_id = interaction.channel_id or 0
    try:
        dm = await interaction.user.create_dm()
        dm_channel_id = dm.id
    except discord.HTTPException:
        log.info("export: could not open a DM with user %s; the worker will answer in the channel", user_id)
    target = contract.DiscordTarget(channel_id=dm_channel_id, user_id=user_id, guild_id=None,
                                    application_id=interaction.application_id, locale=locale_of(interaction))

    def build(job: Job) -> contract.ExportPayload:
        return contract.ExportPayload(
            job_id=job.id, user_id=user_id, concept_key=face.artifact_key,
            output_prefix=f"{keys.user_prefix(user_id)}exports/{job.id}/", target=target,
            name=interaction.user.display_name,
        )

    job, _payload = await jobs.create_and_enqueue(
        services, kind="export", user_id=user_id, build_payload=build, guild_id=interaction.guild_id,
        channel_id=dm_channel_id, interaction_id=interaction.id, concept_id=face.id,
    )
    return job
