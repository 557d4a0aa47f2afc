"""The events consumer: reads the worker's Redis stream with a consumer group and updates the DB. Torch-free.

- ``XGROUP CREATE ... MKSTREAM`` on start (and again if Redis lost the group); on start the consumer first
  re-reads its own pending entries (id ``0``) and claims entries idle in dead consumers (``XAUTOCLAIM``).
- Each entry: DB updates (each committed), then the user-visible message when the worker could not post it
  (``event.posted`` False), then ``XACK`` — never before the commit. Handling is idempotent, so an entry
  re-read after a crash between commit and ack changes nothing twice.
- The loop is a ``discord.ext.tasks`` loop polling without blocking (``interval`` seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import tasks
from redis.exceptions import ResponseError

from bot import delivery, reconcile
from gpu_worker import contract
from gpu_worker.contract import Event, PayloadError
from storage import keys
from storage.keys import own_keys

if TYPE_CHECKING:
    from bot.services import Services

log = logging.getLogger(__name__)

GROUP = "kitbooth-bot"
CONSUMER = "bot"
BATCH = 50
MAX_ATTEMPTS = 5
CLAIM_IDLE_MS = 60_000
SWEEP_INTERVAL_S = 60.0  # how often jobs arq gave up on (no worker event) are looked for


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _message_ids(event: Event) -> list[int]:
    raw = [event.data.get("message_id"), *(event.data.get("message_ids") or [])]
    return list(dict.fromkeys(int(m) for m in raw if isinstance(m, int | str) and str(m).isdigit() and int(m)))


class EventConsumer:
    def __init__(self, bot: Any, *, interval: float = 1.0, consumer: str = CONSUMER) -> None:
        self.bot = bot
        self.consumer = consumer
        self.interval = interval
        self._failures: dict[str, int] = {}
        self._recovered = False
        self._lock = asyncio.Lock()
        self._next_sweep = 0.0  # the first tick sweeps at once
        self._loop = tasks.loop(seconds=interval)(self._tick)

    @property
    def services(self) -> Services:
        return self.bot.services

    @property
    def stream(self) -> str:
        return self.services.settings.events_stream

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.ensure_group()
        if not self._loop.is_running():
            self._loop.start()

    async def stop(self) -> None:
        if self._loop.is_running():
            self._loop.cancel()

    async def _tick(self) -> None:
        try:
            await self.poll_once()
        except Exception:
            log.exception("events consumer: poll failed; retrying in %.1f s", self.interval)
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + SWEEP_INTERVAL_S
            try:
                await self.sweep()
            except Exception:
                log.exception("events consumer: sweep for abandoned jobs failed")

    async def sweep(self) -> int:
        """Jobs Redis lost while the bot ran are enqueued again (a restart of Redis, not only of the bot, must not
        leave them queued forever); jobs arq gave up on without a worker event become failures the user hears
        about (returns how many)."""
        async with self._lock:
            await reconcile.reconcile(self.services)
            return await reconcile.fail_abandoned(self.services, self.handle)

    async def ensure_group(self) -> None:
        try:
            await self.services.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # --- reading --------------------------------------------------------------------------------
    async def poll_once(self) -> int:
        """Handle what is available now (pending first on the first call); return entries acked."""
        async with self._lock:
            try:
                return await self._poll()
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("events consumer: the group vanished (Redis lost data?); recreating it")
                await self.ensure_group()
                self._recovered = False
                return await self._poll()

    async def drain(self, rounds: int = 20) -> int:
        """Poll until nothing is left (tests and start-up)."""
        total = 0
        for _ in range(rounds):
            n = await self.poll_once()
            total += n
            if n == 0:
                break
        return total

    async def _poll(self) -> int:
        r = self.services.redis
        done = 0
        if not self._recovered:
            # Our own entries delivered before a crash/restart but never acked.
            resp = await r.xreadgroup(GROUP, self.consumer, {self.stream: "0"}, count=BATCH)
            done += await self._handle_all(resp)
            try:
                claimed = await r.xautoclaim(self.stream, GROUP, self.consumer, min_idle_time=CLAIM_IDLE_MS,
                                             start_id="0-0", count=BATCH)
                entries = claimed[1] if claimed else []
                done += await self._handle_entries(entries)
            except ResponseError:  # pragma: no cover - older Redis without XAUTOCLAIM
                pass
            self._recovered = True
        resp = await r.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=BATCH)
        done += await self._handle_all(resp)
        return done

    async def _handle_all(self, resp: Any) -> int:
        n = 0
        for _stream, entries in resp or []:
            n += await self._handle_entries(entries)
        return n

    async def _handle_entries(self, entries: list) -> int:
        n = 0
        for entry_id, fields in entries:
            eid = _s(entry_id)
            if fields is None:  # deleted by XTRIM while pending
                await self._ack(eid)
                continue
            try:
                event = Event.from_fields(fields)
            except PayloadError as exc:
                log.error("events: dropping malformed entry %s: %s", eid, exc)
                await self._ack(eid)
                n += 1
                continue
            try:
                await self.handle(event)
            except Exception:
                tries = self._failures[eid] = self._failures.get(eid, 0) + 1
                log.exception("events: %s for job %s failed (attempt %d)", event.type, event.job_id, tries)
                if tries < MAX_ATTEMPTS:
                    continue  # stays pending; re-read from id 0 on the next recovery pass
                log.error("events: giving up on entry %s after %d attempts", eid, tries)
            self._failures.pop(eid, None)
            await self._ack(eid)
            n += 1
        if any(self._failures.values()):
            self._recovered = False  # re-read our pending entries next time
        return n

    async def _ack(self, eid: str) -> None:
        await self.services.redis.xack(self.stream, GROUP, eid)

    # --- handling -------------------------------------------------------------------------------
    async def handle(self, event: Event) -> None:
        """Apply one event to the DB, then deliver its message when the worker did not."""
        db = self.services.db
        job = await db.get_job(event.job_id)
        if job is None or job.user_id != event.user_id:
            await self._orphan(event)
            return
        t = event.type
        await self._note_arq_id(event, job)
        await self._note_messages(event, job)
        if t == "job.started":
            if job.status == "queued":
                await db.update_job(job.id, status="running", attempts=job.attempts + 1)
        elif t == "job.progress":
            return
        elif t == "job.done":
            await self._job_done(event, job)
        elif t == "job.failed":
            await self._job_failed(event, job)
        elif t == "job.cancelled":
            if job.status not in ("done", "failed", "cancelled"):
                await db.update_job(job.id, status="cancelled", error="cancelled")
            await self._concept_failed(job, "cancelled")
        elif t == "concept.ready":
            await self._concept_ready(event, job)
        job = await db.get_job(event.job_id)
        if not event.posted and t in ("job.done", "job.failed", "job.cancelled", "concept.ready"):
            if t == "job.done" and job is not None and job.kind == "train":
                return  # concept.ready carries the user-visible message of a training
            await delivery.deliver(self.bot, self.services, event, job)

    async def _note_arq_id(self, event: Event, job: Any) -> None:
        """Keep the job's newest arq attempt on its row (a training's slices: ``arq_id`` is the slice running,
        ``next_arq_id`` the one it just enqueued), so cancelling and queue positions need no scan."""
        newest = job.arq_id
        for cand in (event.data.get("arq_id"), event.data.get("next_arq_id")):
            parsed = contract.parse_arq_job_id(cand) if isinstance(cand, str) else None
            if parsed is None or parsed[0] != job.id:
                continue
            current = contract.parse_arq_job_id(newest or "")
            if current is None or (parsed[1] or 0) > (current[1] or 0):
                newest = cand
        if newest != job.arq_id:
            await self.services.db.update_job(job.id, arq_id=newest)

    async def _note_messages(self, event: Event, job: Any) -> None:
        """Record every message the worker posted for this job (its edit of the original reply, or its channel
        message), so ``/forget`` can delete it."""
        channel_id = (event.target.channel_id if event.target else None) or job.channel_id
        for message_id in _message_ids(event):
            await self.services.db.record_message(user_id=job.user_id, channel_id=channel_id, message_id=message_id,
                                                  kind=event.type, job_id=job.id, guild_id=job.guild_id)

    async def _job_done(self, event: Event, job: Any) -> None:
        db = self.services.db
        changes: dict[str, Any] = {}
        if job.status != "done":
            changes["status"] = "done"
        if event.data.get("message_id") and not job.message_id:
            changes["message_id"] = int(event.data["message_id"])
        if changes:
            await db.update_job(job.id, **changes)
        keys_ = own_keys(event.data.get("output_keys"), job.user_id)
        if keys_:
            have = {o.artifact_key for o in await db.list_outputs(job_id=job.id, limit=1000)}
            seeds = list(event.data.get("seeds") or [])
            for i, key in enumerate(keys_):
                if key not in have:
                    await db.add_output(job_id=job.id, user_id=job.user_id, artifact_key=key,
                                        seed=seeds[i] if i < len(seeds) else None)

    async def _job_failed(self, event: Event, job: Any) -> None:
        reason = str(event.data.get("reason") or "failed")[:500]
        if job.status not in ("done", "failed", "cancelled"):
            await self.services.db.update_job(job.id, status="failed", error=reason)
        await self._concept_failed(job, reason)

    async def _concept_failed(self, job: Any, reason: str) -> None:
        if job.kind != "train" or job.concept_id is None:
            return
        concept = await self.services.db.get_concept(job.concept_id)
        if concept is None or concept.status in ("ready", "superseded", "failed"):
            return
        await self.services.db.update_concept(concept.id, status="failed", error=reason[:500])
        await self._delete_training_files(concept)

    async def _concept_ready(self, event: Event, job: Any) -> None:
        db, store = self.services.db, self.services.store
        cid = int(event.data.get("concept_id") or job.concept_id or 0)
        concept = await db.get_concept(cid)
        if concept is None or concept.owner_id != job.user_id:
            return
        if concept.status != "ready":
            changes: dict[str, Any] = {"status": "ready"}
            if event.data.get("artifact_key"):
                changes["artifact_key"] = event.data["artifact_key"]
            if event.data.get("size_bytes") is not None:
                changes["size_bytes"] = int(event.data["size_bytes"])
            if event.data.get("trigger_tokens") is not None:
                changes["trigger_tokens"] = list(event.data["trigger_tokens"])
            concept = await db.update_concept(cid, **changes)
            if event.data.get("sha256"):
                await db.set_concept_sha256(cid, event.data["sha256"])
        if job.status != "done":
            await db.update_job(job.id, status="done")
        if concept.kind == "face":
            # Retraining: the old face is replaced only now that the new one is ready.
            for old in await db.list_concepts(owner_id=concept.owner_id, kind="face"):
                if old.id != concept.id and old.status == "ready":
                    await db.update_concept(old.id, status="superseded")
                    if old.artifact_key and old.artifact_key != concept.artifact_key:
                        await asyncio.to_thread(store.delete, old.artifact_key)
                    log.info("concept %s supersedes face %s of user %s", concept.id, old.id, concept.owner_id)
        await self._delete_training_files(concept)

    async def _delete_training_files(self, concept: Any) -> None:
        """Face crops are kept only while training; checkpoints only until the concept is final."""
        store = self.services.store
        if concept.kind == "face" and concept.owner_id is not None:
            prefixes = [keys.photos_prefix(concept.owner_id, concept.id),
                        keys.checkpoint_prefix(concept.owner_id, concept.id)]
        elif concept.guild_id is not None:
            prefixes = [keys.guild_checkpoint_prefix(concept.guild_id, concept.id)]
        else:
            return
        for prefix in prefixes:
            await asyncio.to_thread(store.delete_prefix, prefix)

    async def _orphan(self, event: Event) -> None:
        """An event for a job the DB no longer has (the user ran /forget): leave no trace of its files."""
        store = self.services.store
        gone = own_keys(event.data.get("output_keys"), event.user_id) + own_keys(event.data.get("file_keys"),
                                                                                  event.user_id)
        if event.type == "concept.ready":
            gone += own_keys([event.data.get("artifact_key")], event.user_id)
        for key in gone:
            await asyncio.to_thread(store.delete, key)
        channel_id = event.target.channel_id if event.target else None
        for message_id in _message_ids(event) if channel_id else ():
            with contextlib.suppress(discord.HTTPException):  # best effort: gone already, or not ours to delete
                await self.bot.http.delete_message(channel_id, message_id, reason="/forget")
        log.info("events: %s for unknown job %s ignored (files removed)", event.type, event.job_id)
