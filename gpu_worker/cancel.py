"""Cancellation: the Redis flags of the contract, a per-job watcher, and removal of queued jobs.

An arq abort (``Job.abort()``, the bot's cancel) reaches a running job as a cancelled task: the job runner
handles it as a cancel, and ``CancelWatch.__aexit__`` sets the stop flag the GPU thread checks between steps."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Iterable
from typing import Any

from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import deserialize_job

from gpu_worker import contract

log = logging.getLogger(__name__)


async def is_cancelled(redis: Any, *, user_id: int, job_id: int, created_at: float) -> bool:
    """True when the job's own flag is set, or the user's flag was set at or after ``created_at``."""
    job_flag, user_flag = await redis.mget(contract.cancel_job_key(job_id), contract.cancel_user_key(user_id))
    if job_flag is not None:
        return True
    if user_flag is not None:
        try:
            return float(user_flag) >= created_at
        except ValueError:
            return True
    return False


class CancelWatch:
    """Polls the flags while a job runs; ``event`` is a ``threading.Event`` the GPU thread checks between steps."""

    def __init__(self, redis: Any, *, user_id: int, job_id: int, created_at: float, interval: float = 0.2):
        self.redis = redis
        self.user_id = user_id
        self.job_id = job_id
        self.created_at = created_at
        self.interval = interval
        self.event = threading.Event()
        self._task: asyncio.Task | None = None

    def should_stop(self) -> bool:
        return self.event.is_set()

    async def check(self) -> bool:
        if not self.event.is_set() and await is_cancelled(
            self.redis, user_id=self.user_id, job_id=self.job_id, created_at=self.created_at
        ):
            self.event.set()
        return self.event.is_set()

    async def _loop(self) -> None:
        while not self.event.is_set():
            try:
                await self.check()
            except Exception as exc:  # noqa: BLE001 - a Redis hiccup must not kill the job
                log.debug("cancel watch: %s", exc)
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> CancelWatch:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is asyncio.CancelledError:
            # arq's timeout or shutdown cancelled the job: stop the GPU thread's work at its next step too.
            self.event.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def set_flags(redis: Any, payload: contract.CancelPayload, now: float) -> None:
    if payload.job_ids:
        for jid in payload.job_ids:
            await redis.set(contract.cancel_job_key(jid), str(now), ex=contract.CANCEL_TTL_S)
    else:
        await redis.set(contract.cancel_user_key(payload.user_id), str(now), ex=contract.CANCEL_TTL_S)


def _payload_of(args: tuple, kwargs: dict) -> dict | None:
    raw = args[0] if args else kwargs.get("payload")
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    return raw if isinstance(raw, dict) else None


async def _candidates(redis: Any, job_ids: list[int]) -> list[str]:
    """The arq ids the jobs can be queued under: ``kb-<id>``, a training's first slice and (one GET each) the
    slice it enqueued last (``contract.train_slice_key``)."""
    pointers = await redis.mget([contract.train_slice_key(j) for j in job_ids])
    out: dict[str, None] = {}
    for jid, ptr in zip(job_ids, pointers, strict=True):
        out[contract.arq_job_id(jid)] = None
        out[contract.arq_job_id(jid, 0)] = None
        if ptr:
            out[ptr.decode() if isinstance(ptr, bytes) else str(ptr)] = None
    return list(out)


async def drop_queued(
    redis: Any, queue_name: str, *, user_id: int, job_ids: Iterable[int] = ()
) -> list[tuple[str, str, dict]]:
    """Remove the user's queued (not running) arq jobs of ``job_ids``; returns (arq id, function, payload dict)
    of each removed job. Work is proportional to ``job_ids``: a few keys per id, never a scan of the queue.
    Without ``job_ids`` nothing is removed: the user's cancel flag stops each job as it starts."""
    wanted = list(dict.fromkeys(int(j) for j in job_ids))
    if not wanted:
        return []
    arq_ids = await _candidates(redis, wanted)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.mget([job_key_prefix + a for a in arq_ids])
        pipe.mget([in_progress_key_prefix + a for a in arq_ids])
        raws, running = await pipe.execute()
    removed: list[tuple[str, str, dict]] = []
    for arq_id, raw, busy in zip(arq_ids, raws, running, strict=True):
        if raw is None or busy is not None:  # gone, or running (it sees its cancel flag between steps)
            continue
        try:
            job = deserialize_job(raw)
        except Exception:  # noqa: BLE001 - not ours to judge
            continue
        data = _payload_of(job.args, job.kwargs)
        if not data or data.get("user_id") != user_id or data.get("job_id") not in wanted:
            continue
        async with redis.pipeline(transaction=True) as pipe:
            pipe.zrem(queue_name, arq_id)
            pipe.delete(job_key_prefix + arq_id)
            res = await pipe.execute()
        if res[0]:
            removed.append((arq_id, job.function, data))
    return removed
