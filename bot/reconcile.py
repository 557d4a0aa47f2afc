"""Keeping the DB and the queue in step. Torch-free.

- ``reconcile`` (at start-up and every minute, in the events consumer's sweep): jobs the DB says are queued or
  running but that arq no longer knows (Redis lost its data, with or without a bot restart) are enqueued again
  from their stored payload, so nothing is lost (arq refuses an id it already has, so nothing doubles).
- ``fail_abandoned`` (at start-up and every minute): jobs arq gave up on without the worker reporting (a job
  timeout, or retries used up because workers kept dying) become a ``job.failed`` event, handled like one
  from the worker: the row is marked failed, a training's concept too, and the user is told.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bot import jobs
from gpu_worker import contract
from kitbooth.i18n import translate

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from bot.services import Services

log = logging.getLogger(__name__)


async def reconcile(services: Services) -> int:
    """Re-enqueue lost jobs; return how many were enqueued again."""
    db = services.db
    active = await db.active_jobs()
    if not active:
        return 0
    requeued = 0
    for job in active:
        if await jobs.known_to_arq(services, job):
            continue
        func = jobs.job_function(job.kind)
        cls = contract.PAYLOAD_TYPES.get(func)
        if cls is None or not job.payload:
            await db.update_job(job.id, status="failed", error="lost and not recoverable (no payload)")
            log.error("reconcile: job %s has no stored payload; marked failed", job.id)
            continue
        try:
            payload = cls.from_dict(job.payload)
        except contract.PayloadError as exc:
            await db.update_job(job.id, status="failed", error="lost and not recoverable (bad payload)")
            log.error("reconcile: job %s payload unreadable: %s", job.id, exc)
            continue
        if await jobs.enqueue(services, job, payload):
            requeued += 1
            if job.status == "running":
                await db.update_job(job.id, status="queued")
            log.info("reconcile: job %s (%s) was lost by Redis; enqueued again", job.id, job.kind)
    return requeued


# failure.abandoned in English (the member reads it in their language, from the job's DiscordTarget.locale)
ABANDONED_REASON = "The GPU worker could not finish this job (it crashed or ran out of time). Please try again."


async def fail_abandoned(services: Services, handle: Callable[[contract.Event], Awaitable[None]]) -> int:
    """Turn jobs arq gave up on into ``job.failed`` events passed to ``handle``; return how many."""
    failed = 0
    active = await services.db.active_jobs()
    gave_up = await jobs.arq_gave_up(services, active)
    for job in active:
        if job.id not in gave_up:
            continue
        target = None
        if isinstance(job.payload, dict) and isinstance(job.payload.get("target"), dict):
            try:
                target = contract.DiscordTarget.from_dict(job.payload["target"])
            except contract.PayloadError:
                target = None
        event = contract.Event(type="job.failed", job_id=job.id, user_id=job.user_id, kind=job.kind,
                               target=target, posted=False,
                               data={"reason": translate("failure.abandoned", target.locale if target else "en"),
                                     "retryable": True})
        await handle(event)
        failed += 1
        log.warning("job %s (%s): arq gave up on it without a worker report; marked failed", job.id, job.kind)
    return failed
