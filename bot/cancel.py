"""The one bot-side cancel path, used by ``/forget``, the catalogue (removing a trained entry) and the admin
commands. Torch-free.

Built on the job ids the database already holds (``bot.jobs.arq_ids``), through arq's own API per id:

- queued (or deferred) in arq: taken out of the queue with its job key in one transaction, before any worker
  starts it (if a worker wins the race, it finds no job key and arq records the attempt as expired);
- in progress: ``arq.jobs.Job(id).abort()`` (the worker runs with ``allow_abort_jobs``: arq cancels the task);
- always: the contract's cancel flags (``cancel_job_key``; ``cancel_user_key`` for a whole user), which the
  worker checks between steps and at the start of every training slice — so a slice enqueued after this call,
  which no id here names yet, stops too.

Nothing here scans Redis: each DB job costs a handful of commands on its own keys.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from arq.constants import job_key_prefix
from arq.jobs import JobStatus, ResultNotFound

from bot import jobs
from gpu_worker import contract
from storage.rows import ACTIVE_JOB_STATUSES

if TYPE_CHECKING:
    from bot.services import Services
    from storage.database import Job

log = logging.getLogger(__name__)

Outcome = Literal["removed", "aborting", "finished", "unknown"]


@dataclass
class CancelReport:
    removed: list[int] = field(default_factory=list)  # DB ids taken out of the queue before they started
    aborting: list[int] = field(default_factory=list)  # DB ids running: they stop at their next step
    flagged: list[int] = field(default_factory=list)  # DB ids known only to their cancel flag (e.g. a later slice)

    @property
    def cancelled(self) -> int:
        return len(self.removed) + len(self.aborting) + len(self.flagged)


async def cancel_arq_job(services: Services, arq_id: str) -> Outcome:
    """Stop one arq job: dequeue it when it has not started, ask arq to abort it when it runs."""
    r, queue = services.arq, services.settings.queue_name
    job = jobs.arq_job(services, arq_id)
    status = await job.status()
    if status in (JobStatus.queued, JobStatus.deferred):
        async with r.pipeline(transaction=True) as pipe:
            pipe.zrem(queue, arq_id)
            pipe.delete(job_key_prefix + arq_id)
            taken, _ = await pipe.execute()
        if taken:
            return "removed"
        status = await job.status()  # a worker started it meanwhile
    if status == JobStatus.in_progress:
        # timeout 0: ask, don't wait — the worker reports job.cancelled when it stops.
        with contextlib.suppress(TimeoutError, ResultNotFound):
            await job.abort(timeout=0, poll_delay=0)
        return "aborting"
    return "finished" if status == JobStatus.complete else "unknown"


async def cancel_jobs(services: Services, rows: Iterable[Job], *, reason: str = "cancelled") -> CancelReport:
    """Cancel these DB jobs (those not active are skipped). A row is marked cancelled at once unless a worker is
    running it (the worker's ``job.cancelled`` event closes it)."""
    report = CancelReport()
    for job in rows:
        if job.status not in ACTIVE_JOB_STATUSES:
            continue
        await services.arq.set(contract.cancel_job_key(job.id), str(time.time()), ex=contract.CANCEL_TTL_S)
        outcomes = {await cancel_arq_job(services, arq_id) for arq_id in jobs.arq_ids(job)}
        if "aborting" in outcomes:
            report.aborting.append(job.id)
            continue
        (report.removed if "removed" in outcomes else report.flagged).append(job.id)
        await services.db.update_job(job.id, status="cancelled", error=reason)
    if report.cancelled:
        log.info("cancel: %d removed from the queue, %d aborting, %d flagged (%s)", len(report.removed),
                 len(report.aborting), len(report.flagged), reason)
    return report


async def cancel_user(services: Services, user_id: int, job_ids: Iterable[int] | None = None, *,
                      reason: str = "cancelled") -> CancelReport:
    """Cancel the user's active jobs (all of them, or those in ``job_ids``). Without ``job_ids`` the user's flag
    is set too: every job of theirs created before now stops, including slices no row names yet."""
    if job_ids is None:
        await services.arq.set(contract.cancel_user_key(user_id), str(time.time()), ex=contract.CANCEL_TTL_S)
    rows = await services.db.active_jobs(user_id)
    if job_ids is not None:
        wanted = set(job_ids)
        rows = [j for j in rows if j.id in wanted]
    return await cancel_jobs(services, rows, reason=reason)


async def cancel_concept(services: Services, concept_id: int, *, reason: str = "entry removed") -> CancelReport:
    """Cancel the active jobs that train ``concept_id`` (a catalogue entry being removed)."""
    rows = await services.db.list_jobs(concept_id=concept_id, statuses=ACTIVE_JOB_STATUSES)
    return await cancel_jobs(services, rows, reason=reason)
