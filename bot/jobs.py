"""Enqueueing through arq, the arq ids of a DB job, queue positions and rough ETAs. Torch-free.

The arq ``_job_id`` is always ``contract.arq_job_id(db_job_id[, slice])``: enqueueing the same DB job twice (a
double click, a reconcile racing a live job) is refused by arq itself. The row keeps the id of the job's newest
arq attempt (``jobs.arq_id``; a training's latest slice, from the worker's events), so every question about a
job — its queue position, its status, cancelling it (``bot.cancel``) — is asked of arq per id, never by
scanning Redis. The bot imports only ``gpu_worker.contract`` of the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord
from arq.constants import job_key_prefix, result_key_prefix, retry_key_prefix
from arq.jobs import Job as ArqJob
from arq.jobs import JobStatus

from bot.translator import locale_of
from gpu_worker import contract
from kitbooth.errors import UserFacingError
from kitbooth.i18n import keyed, translate

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
        locale=locale_of(interaction),
    )


def first_arq_id(job: Job, payload: dict[str, Any] | None = None) -> str:
    """The arq id the bot enqueues a DB job under (a training: its first slice, from the payload)."""
    data = job.payload if payload is None else payload
    if job_function(job.kind) == contract.TRAIN_JOB:
        return contract.arq_job_id(job.id, int((data or {}).get("slice_index") or 0))
    return contract.arq_job_id(job.id)


def arq_ids(job: Job) -> list[str]:
    """Every arq id the DB knows for ``job``, newest first: the latest recorded attempt, then the bot's own
    enqueue. A training's slices run as ``kb-<id>-s<n>``; all slices up to the latest recorded one are listed
    (so ``/forget`` can delete each one's keys by name)."""
    ids = [job.arq_id] if job.arq_id else []
    first = first_arq_id(job)
    parsed = contract.parse_arq_job_id(job.arq_id or "")
    if parsed is not None and parsed[1] is not None:
        ids += [contract.arq_job_id(job.id, n) for n in range(parsed[1] - 1, -1, -1)]
    if first not in ids:
        ids.append(first)
    return ids


def redis_keys(job: Job) -> list[str]:
    """arq's keys (job, retry, result) of every attempt of ``job``, by name, and the worker's delivered mark."""
    return [prefix + arq_id for arq_id in arq_ids(job)
            for prefix in (job_key_prefix, retry_key_prefix, result_key_prefix)] + [contract.delivered_key(job.id)]


async def enqueue(services: Services, job: Job, payload: Any) -> bool:
    """Enqueue ``payload`` for DB ``job``. False when arq already has it."""
    data = payload.to_dict() if hasattr(payload, "to_dict") else dict(payload)
    func = job_function(job.kind)
    arq_id = first_arq_id(job, data)
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
    data = payload.to_dict()
    job = await db.update_job(job.id, payload=data, arq_id=first_arq_id(job, data))
    try:
        await enqueue(services, job, payload)
    except Exception as exc:
        await db.update_job(job.id, status="failed", error=f"enqueue failed: {type(exc).__name__}")
        log.exception("job %s: enqueue failed", job.id)
        raise keyed(UserFacingError, "refusal.queue_unavailable") from exc
    return job, payload


async def record_echo(services: Services, job: Job, sent: Any) -> None:
    """Record the bot's public "queued" reply that echoes the request (``/forget`` deletes it; the worker later
    edits the same message while the interaction token is valid)."""
    channel = getattr(sent, "channel", None)
    if sent is None or channel is None:
        return
    await services.db.record_message(user_id=job.user_id, channel_id=channel.id, message_id=sent.id, kind="echo",
                                     job_id=job.id, guild_id=job.guild_id)


# --- queue inspection ------------------------------------------------------------------------------
@dataclass(frozen=True)
class QueueInfo:
    position: int  # 1 = next to run; 0 = running or unknown
    depth: int  # jobs in the queue (arq keeps a running job in it until it ends)
    eta_seconds: float


async def queue_position(services: Services, job: Job | int) -> QueueInfo:
    """Where a DB job stands in the arq queue, and a rough ETA until it is done.

    The queue is arq's sorted set (score = when a job may run): ZSCORE of the job's arq id, then ZCOUNT of the
    lower scores — O(log n) whatever else Redis holds, never the whole queue.
    """
    row = await services.db.get_job(job) if isinstance(job, int) else job
    r, queue = services.arq, services.settings.queue_name
    ids = arq_ids(row) if row is not None else []
    async with r.pipeline(transaction=False) as pipe:
        pipe.zcard(queue)
        for arq_id in ids:
            pipe.zscore(queue, arq_id)
        depth, *scores = await pipe.execute()
    score = next((sc for sc in scores if sc is not None), None)
    position = 0
    if score is not None:
        position = int(await r.zcount(queue, "-inf", f"({score!r}")) + 1
    ahead = (position - 1) if position else 0
    own = TRAIN_TOTAL_SECONDS if row is not None and row.kind == "train" else ROUGH_SECONDS[contract.GENERATE_JOB]
    eta = ahead * ROUGH_SECONDS[contract.GENERATE_JOB] + own
    return QueueInfo(position=position, depth=int(depth), eta_seconds=eta)


def format_eta(seconds: float, locale: str = "en-US") -> str:
    if seconds < 60:
        return translate("queue.about_seconds", locale, seconds=int(max(5, round(seconds / 5) * 5)))
    return translate("queue.about_minutes", locale, minutes=int(round(seconds / 60)))


def format_queue(info: QueueInfo, locale: str = "en-US") -> str:
    if info.position <= 1:
        where = translate("queue.next" if info.position == 1 else "queue.starting_now", locale)
    else:
        where = translate("queue.position", locale, position=info.position)
    return translate("queue.with_eta", locale, where=where, eta=format_eta(info.eta_seconds, locale))


# --- arq's view of DB jobs (per id: arq's Job.status / result_info) ---------------------------------------
def arq_job(services: Services, arq_id: str) -> ArqJob:
    return ArqJob(arq_id, services.arq, _queue_name=services.settings.queue_name)


async def known_to_arq(services: Services, job: Job) -> bool:
    """True when arq has any attempt of ``job``: queued, deferred, in progress, or with a result."""
    for arq_id in dict.fromkeys([arq_ids(job)[0], first_arq_id(job)]):  # newest recorded, the bot's own
        if await arq_job(services, arq_id).status() != JobStatus.not_found:
            return True
    return False


async def arq_gave_up(services: Services, active: Sequence[Job]) -> set[int]:
    """The DB ids among ``active`` whose newest arq attempt ended in an arq-level failure (timed out, or retries
    used up after worker crashes).

    The worker reports every failure it handles as a successful arq result with ``ok: False`` plus a
    ``job.failed`` event; an arq-level failure has no event, so the bot must notice it. Only the newest attempt
    the DB knows counts (a training's latest slice: the worker reports each slice it enqueues), and only once it
    has a result — a queued or running attempt has none.
    """
    newest = {job.id: arq_ids(job)[0] for job in active}
    if not newest:
        return set()
    async with services.arq.pipeline(transaction=False) as pipe:
        for arq_id in newest.values():
            pipe.exists(result_key_prefix + arq_id)
        has_result = await pipe.execute()
    gave_up = set()
    for (db_id, arq_id), present in zip(newest.items(), has_result, strict=True):
        if not present:
            continue
        try:
            info = await arq_job(services, arq_id).result_info()
        except Exception:  # noqa: BLE001 - an unreadable result is not ours to judge
            continue
        if info is not None and not info.success:
            gave_up.add(db_id)
    return gave_up
