"""The worker's typed context: one ``WorkerContext`` under ONE key of arq's ``ctx``, plus the per-job facts arq
adds to its copy of ``ctx`` (``JobInfo``).

arq hands each job a shallow copy of its ``ctx`` dict with ``job_id``, ``job_try`` and ``enqueue_time`` added;
everything the worker itself holds (store, GPU lane, engine, poster, events, metrics...) is a field of the one
``WorkerContext`` built by ``gpu_worker.worker.startup``, so a typo is an AttributeError, not a silent ``None``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from arq.connections import ArqRedis
    from arq.worker import Worker

    from gpu_worker.concepts import ConceptCache
    from gpu_worker.engine import Engine
    from gpu_worker.events import EventSink
    from gpu_worker.gpu import GpuLane
    from gpu_worker.metrics import Metrics
    from kitbooth.settings import Settings
    from storage import ArtifactStore

CTX_KEY = "kitbooth"  # the one key of arq's ctx that the worker uses
RECORDS_KEPT = 1000  # recent slice and generate timings kept for observability and tests


@dataclasses.dataclass
class WorkerContext:
    """Everything a job needs from its worker. ``poster`` is None without a Discord token (the bot delivers)."""

    settings: Settings
    redis: ArqRedis
    store: ArtifactStore  # wrapped by ``gpu_worker.store_io.TransientStore``: OSError -> StoreUnavailable
    lane: GpuLane
    engine: Engine
    concepts: ConceptCache
    events: EventSink
    metrics: Metrics
    poster: Any = None  # gpu_worker.poster.Poster
    worker: Worker | None = None  # the arq Worker running the jobs (abort detection)
    train_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    # (start|end, job id, slice index, epoch) of recent training slices; generate jobs' pipeline vs GPU wall time
    slices: deque = dataclasses.field(default_factory=lambda: deque(maxlen=RECORDS_KEPT))
    timings: deque = dataclasses.field(default_factory=lambda: deque(maxlen=RECORDS_KEPT))
    progress_interval: float = 1.0
    background: list[asyncio.Task] = dataclasses.field(default_factory=list)  # metrics poll, housekeeping

    def aborted(self, arq_id: str | None) -> bool:
        """True when arq cancelled this job's task because of ``Job.abort()`` (not a timeout or a shutdown).

        arq adds the id to ``Worker.aborting_tasks`` just before ``task.cancel()`` (guarded by
        tests/worker/test_pinned_internals.py)."""
        return bool(arq_id) and self.worker is not None and arq_id in self.worker.aborting_tasks


@dataclasses.dataclass(frozen=True)
class JobInfo:
    """What arq tells one job run about itself."""

    arq_id: str | None
    job_try: int
    enqueued_at: float | None  # epoch seconds

    @classmethod
    def of(cls, ctx: dict) -> JobInfo:
        t = ctx.get("enqueue_time")
        return cls(arq_id=ctx.get("job_id"), job_try=int(ctx.get("job_try") or 1),
                   enqueued_at=t.timestamp() if isinstance(t, datetime) else None)


def worker_context(ctx: dict) -> WorkerContext:
    """The ``WorkerContext`` of an arq ``ctx`` (set by ``startup``)."""
    return ctx[CTX_KEY]
