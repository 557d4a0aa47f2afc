"""Start-up reconcile: jobs the DB says are queued or running but that arq no longer knows (Redis lost its
data) are enqueued again from their stored payload, so nothing is lost. Torch-free."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bot import jobs
from gpu_worker import contract

if TYPE_CHECKING:
    from bot.services import Services

log = logging.getLogger(__name__)


async def reconcile(services: Services) -> int:
    """Re-enqueue lost jobs; return how many were enqueued again."""
    db = services.db
    active = await db.active_jobs()
    if not active:
        return 0
    known = await jobs.known_arq_job_ids(services)
    requeued = 0
    for job in active:
        if job.id in known:
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
