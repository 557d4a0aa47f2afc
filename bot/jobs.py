"""Enqueueing through arq, queue positions, rough ETAs and cancellation. Torch-free.

The arq ``_job_id`` is always ``contract.arq_job_id(db_job_id)``: enqueueing the same DB job twice (a double
click, a reconcile racing a live job) is refused by arq itself. The bot imports only ``gpu_worker.contract``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix

from gpu_worker import contract
from kitbooth.errors import UserFacingError

if TYPE_CHECKING:
    from bot.services import Services
    from storage.database import Job

log = logging.getLogger(__name__)

# Rough seconds per job kind on one GPU (used only for the ETA shown to users).
ROUGH_SECONDS = {contract.GENERATE_JOB: 8.0, contract.UPSCALE_JOB: 6.0, contract.TRAIN_JOB: 20.0,
                 contract.EXPORT_JOB: 3.0}
TRAIN_TOTAL_SECONDS = 60.0  # a whole face training, all slices


def job_function(kind: str) -> str:
    """The arq function for a DB job kind (``vary``/``reroll`` are generate jobs)."""
    return {"train": contract.TRAIN_JOB, "generate": contract.GENERATE_JOB, "vary": contract.GENERATE_JOB,
            "reroll": contract.GENERATE_JOB, "upscale": contract.UPSCALE_JOB,
            "export": contract.EXPORT_JOB}.get(kind, kind)


def target_from_interaction(interaction: discord.Interaction) -> contract.DiscordTarget:
    """Where the worker posts: the channel, the user, and the interaction token (valid 15 minutes)."""
    return contract.DiscordTarget(
        channel_id=interaction.channel_id or 0,
        user_id=interaction.user.id,
        guild_id=interaction.guild_id,
        application_id=interaction.application_id,
        interaction_token=interaction.token,
        interaction_created_at=interaction.created_at.timestamp(),
    )


async def enqueue(services: Services, job: Job, payload: Any) -> bool:
    """Enqueue ``payload`` for DB ``job`` (and store the payload on the row). False when arq already has it."""
    data = payload.to_dict() if hasattr(payload, "to_dict") else dict(payload)
    func = job_function(job.kind)
    slice_index = data.get("slice_index") if func == contract.TRAIN_JOB else None
    arq_id = contract.arq_job_id(job.id, slice_index)
    queued = await services.arq.enqueue_job(func, data, _job_id=arq_id, _queue_name=services.settings.queue_name)
    if queued is None:
        log.info("job %s: arq already has %s (duplicate refused)", job.id, arq_id)
        return False
    log.info("job %s: enqueued %s as %s", job.id, func, arq_id)
    return True


async def create_and_enqueue(
    services: Services, *, kind: str, user_id: int, build_payload, guild_id: int | None = None,
    channel_id: int | None = None, interaction_id: int | None = None, concept_id: int | None = None,
) -> tuple[Job, Any]:
    """Write the job row, build its payload (``build_payload(job) -> payload``), store it, enqueue it.

    On an enqueue failure the row is marked failed and a ``UserFacingError`` is raised.
    """
    db = services.db
    await db.ensure_user(user_id)
    job = await db.create_job(kind=kind, user_id=user_id, guild_id=guild_id, channel_id=channel_id,
                              interaction_id=interaction_id, concept_id=concept_id)
    payload = build_payload(job)
    job = await db.update_job(job.id, payload=payload.to_dict())
    try:
        await enqueue(services, job, payload)
    except Exception as exc:
        await db.update_job(job.id, status="failed", error=f"enqueue failed: {type(exc).__name__}")
        log.exception("job %s: enqueue failed", job.id)
        raise UserFacingError("The job queue is unavailable right now. Try again in a minute.") from exc
    return job, payload


# --- queue inspection ------------------------------------------------------------------------------
@dataclass(frozen=True)
class QueueInfo:
    position: int  # 1 = next to run; 0 = running or unknown
    depth: int  # jobs waiting in the queue
    eta_seconds: float


async def _queue_members(services: Services) -> list[str]:
    raw = await services.arq.zrange(services.settings.queue_name, 0, -1)
    return [m.decode() if isinstance(m, bytes) else str(m) for m in raw]


def _db_id(arq_id: str) -> int | None:
    parsed = contract.parse_arq_job_id(arq_id)
    return parsed[0] if parsed else None


async def queue_position(services: Services, job_id: int) -> QueueInfo:
    """Where DB job ``job_id`` stands in the arq queue, and a rough ETA until it is done."""
    members = await _queue_members(services)
    depth = len(members)
    position = 0
    for i, member in enumerate(members):
        if _db_id(member) == job_id:
            position = i + 1
            break
    ahead = (position - 1) if position else 0
    job = await services.db.get_job(job_id)
    own = TRAIN_TOTAL_SECONDS if job is not None and job.kind == "train" else ROUGH_SECONDS[contract.GENERATE_JOB]
    busy = 1 if await _any_in_progress(services) else 0
    eta = (ahead + busy) * ROUGH_SECONDS[contract.GENERATE_JOB] + own
    return QueueInfo(position=position, depth=depth, eta_seconds=eta)


async def _any_in_progress(services: Services) -> bool:
    async for _ in services.arq.scan_iter(match=in_progress_key_prefix + "kb-*", count=100):
        return True
    return False


def format_eta(seconds: float) -> str:
    if seconds < 60:
        return f"about {max(5, round(seconds / 5) * 5):.0f} s"
    return f"about {round(seconds / 60):.0f} min"


def format_queue(info: QueueInfo) -> str:
    if info.position <= 1:
        where = "next in the queue" if info.position == 1 else "starting now"
    else:
        where = f"position {info.position} in the queue"
    return f"{where} (ETA {format_eta(info.eta_seconds)})"


async def known_arq_job_ids(services: Services) -> set[int]:
    """DB job ids that arq knows about: queued, in progress, retrying or with a stored result."""
    known = {i for m in await _queue_members(services) if (i := _db_id(m)) is not None}
    for prefix in (job_key_prefix, in_progress_key_prefix, result_key_prefix, retry_key_prefix):
        async for key in services.arq.scan_iter(match=prefix + "kb-*", count=500):
            k = key.decode() if isinstance(key, bytes) else key
            i = _db_id(k[len(prefix):])
            if i is not None:
                known.add(i)
    return known


async def arq_gave_up(services: Services, db_ids: Iterable[int]) -> set[int]:
    """The jobs among ``db_ids`` that arq itself ended in failure (timed out, or retries used up after worker
    crashes).

    The worker reports every failure it handles as a successful arq result with ``ok: False`` plus a
    ``job.failed`` event; an arq-level failure has no event, so the bot must notice it. Only a job's newest
    attempt counts (a training's latest slice), and only when nothing of the job is queued or running.
    """
    from arq.jobs import deserialize_result

    wanted = set(db_ids)
    if not wanted:
        return set()
    r = services.arq
    latest: dict[int, tuple[int, str]] = {}  # db id -> (slice, arq id) of its newest result
    async for key in r.scan_iter(match=f"{result_key_prefix}kb-*", count=1000):
        arq_id = (key.decode() if isinstance(key, bytes) else key)[len(result_key_prefix):]
        parsed = contract.parse_arq_job_id(arq_id)
        if parsed is not None and parsed[0] in wanted:
            cand = (parsed[1] or 0, arq_id)
            latest[parsed[0]] = max(latest.get(parsed[0], cand), cand)
    for m in await _queue_members(services):
        parsed = contract.parse_arq_job_id(m)
        if parsed is not None and parsed[0] in latest and (parsed[1] or 0) >= latest[parsed[0]][0]:
            del latest[parsed[0]]  # a later slice (or a retry) is still to run
    gave_up = set()
    for db_id, (_slice, arq_id) in latest.items():
        if await r.exists(in_progress_key_prefix + arq_id):
            continue
        raw = await r.get(result_key_prefix + arq_id)
        try:
            if raw is not None and not deserialize_result(raw).success:
                gave_up.add(db_id)
        except Exception:  # noqa: BLE001 - an unreadable result is not ours to judge
            continue
    return gave_up


# --- cancellation ----------------------------------------------------------------------------------
async def cancel_user_jobs(services: Services, user_id: int, job_ids: Iterable[int] | None = None) -> list[int]:
    """Cancel the user's jobs: set the cancel flag the worker checks between steps (running jobs) and remove
    their queued arq jobs (queue entry and job key). Queued rows are marked cancelled. Returns the DB ids
    removed from the queue."""
    r = services.arq
    await r.set(contract.cancel_user_key(user_id), str(time.time()), ex=contract.CANCEL_TTL_S)
    mine = {j.id for j in await services.db.list_jobs(user_id=user_id)}
    if job_ids is not None:
        mine &= set(job_ids)
    removed: list[int] = []
    for member in await _queue_members(services):
        db_id = _db_id(member)
        if db_id in mine:
            async with r.pipeline(transaction=True) as pipe:
                pipe.zrem(services.settings.queue_name, member)
                pipe.delete(job_key_prefix + member)
                await pipe.execute()
            removed.append(db_id)
    for db_id in sorted(set(removed)):
        job = await services.db.get_job(db_id)
        if job is not None and job.status == "queued":
            await services.db.update_job(db_id, status="cancelled", error="cancelled")
    if removed:
        log.info("user %s: removed %d queued job(s) from the queue", user_id, len(set(removed)))
    return sorted(set(removed))
