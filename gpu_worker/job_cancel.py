"""The ``cancel`` job (``/forget``, an admin, the bot's cancel): set the cancel flags, drop the user's queued
jobs of the payload's ``job_ids`` (and a queued training's checkpoints), and drop a forgotten user's concepts
from this worker's memory. Each dropped job gets its ``job.cancelled`` event."""

from __future__ import annotations

import asyncio
import contextlib
import time

from gpu_worker import contract
from gpu_worker.cancel import drop_queued, set_flags
from gpu_worker.checkpoints import cleanup_training
from gpu_worker.context import JobInfo, WorkerContext
from gpu_worker.runner import JobKind, JobRun
from kitbooth.errors import PayloadError
from storage import keys


async def _body(w: WorkerContext, info: JobInfo, run: JobRun, p: contract.CancelPayload) -> dict:
    await set_flags(w.redis, p, time.time())
    if not p.job_ids:  # the whole user (e.g. /forget): their concepts leave this worker's memory now
        w.concepts.invalidate_prefix(keys.user_prefix(p.user_id))
    removed = await drop_queued(w.redis, w.settings.queue_name, user_id=p.user_id, job_ids=p.job_ids)
    for arq_id, function, data in removed:
        if function == contract.TRAIN_JOB:
            with contextlib.suppress(PayloadError):
                tp = contract.TrainPayload.from_dict(data)
                await asyncio.to_thread(cleanup_training, w.store, tp, photos=False)
        await w.events.send("job.cancelled", job_id=int(data["job_id"]), user_id=p.user_id, kind=function,
                            reason=p.reason, dropped=arq_id, arq_id=arq_id)
    run.extra = f"dropped={len(removed)}"
    return {"ok": True, "dropped": [r[0] for r in removed]}


# Tiny and idempotent.
CANCEL = JobKind(contract.CANCEL_JOB, _body, max_tries=3, timeout_s=lambda s: min(s.job_timeout_s, 30.0))
