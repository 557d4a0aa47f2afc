"""The arq worker: settings → ``Worker``; start-up loads the pipeline once; shutdown releases it.

``build_worker(settings, ...)`` takes optional injected parts (store, Discord HTTP client, a pre-loaded
engine) so tests can run the real worker in-process against real Redis, SimCord and the tiny model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from arq import func
from arq.connections import RedisSettings
from arq.worker import Worker

from gpu_worker import contract, jobs
from gpu_worker.concepts import ConceptCache
from gpu_worker.engine import Engine
from gpu_worker.events import EventSink
from gpu_worker.gpu import PRIO_LIGHT, GpuLane
from gpu_worker.metrics import Metrics
from kitbooth.settings import Settings
from storage import ArtifactStore, LocalArtifactStore

log = logging.getLogger(__name__)

# arq keeps a job's in-progress key for (longest timeout + 10 s); a killed worker's job is retried only after
# it expires. We shorten arq's fixed 10 s margin: timeouts are already generous.
IN_PROGRESS_MARGIN_S = 2.0


def job_functions(settings: Settings) -> list[Any]:
    """Every job function with a deliberate timeout and number of tries.

    - train_slice: a slice is bounded by ``slice_seconds``/``slice_steps``, but it may wait behind generations
      and the previous slice: timeout = job_timeout_s; 4 tries (a retry resumes from the last checkpoint, so a
      crash costs at most one slice; a slice that crashes the worker 4 times is given up).
    - generate / upscale / export: seconds of work, retried twice after a crash (outputs are overwritten, the
      message edit is idempotent).
    - cancel: tiny and idempotent.
    Handled failures (bad payload, a user error, a bug) are reported by the job itself and never retried.
    """
    t = settings.job_timeout_s
    short = min(t, 180.0)
    return [
        func(jobs.train_slice, name=contract.TRAIN_JOB, timeout=t, max_tries=4, keep_result=3600),
        func(jobs.generate, name=contract.GENERATE_JOB, timeout=short, max_tries=2, keep_result=600),
        func(jobs.upscale, name=contract.UPSCALE_JOB, timeout=short, max_tries=2, keep_result=600),
        func(jobs.export, name=contract.EXPORT_JOB, timeout=short, max_tries=2, keep_result=600),
        func(jobs.cancel, name=contract.CANCEL_JOB, timeout=min(t, 30.0), max_tries=3, keep_result=600),
    ]


async def startup(ctx: dict) -> None:
    settings: Settings = ctx["settings"]
    if ctx.get("store") is None:
        ctx["store"] = LocalArtifactStore(settings.artifacts_path)
    lane = ctx.get("lane") or GpuLane(max_batch=settings.max_batch, gather_s=settings.batch_gather_s)
    ctx["lane"] = lane
    lane.start()
    engine = ctx.get("engine")
    if engine is None:
        engine = Engine(settings)
        ctx["engine"] = engine
        ctx["owns_engine"] = True
    if engine.pipe is None:
        await lane.call(engine.load, priority=0)
        await lane.call(engine.warm_up, priority=0)
    ctx["concepts"] = ctx.get("concepts") or ConceptCache(ctx["store"], max_items=settings.concept_cache)
    ctx["events"] = EventSink(ctx["redis"], settings.events_stream)
    ctx["train_lock"] = asyncio.Lock()
    # arq hands each job a shallow copy of ctx: shared mutable records must exist before the first job.
    ctx.setdefault("slices", [])  # (start|end, job id, slice index, epoch) of recent training slices
    ctx.setdefault("timings", [])  # generate jobs: pipeline seconds vs GPU wall time
    if ctx.get("poster") is None and ctx.get("http") is None and settings.discord_token is not None:
        from gpu_worker.poster import make_http_client

        ctx["http"] = await make_http_client(settings.discord_token.get_secret_value())
        ctx["owns_http"] = True
    if ctx.get("poster") is None and ctx.get("http") is not None:
        from gpu_worker.poster import Poster

        ctx["poster"] = Poster(ctx["http"])
    if ctx.get("poster") is None:
        log.warning("no Discord token: results are delivered by the bot from the events stream (posted=False)")
    metrics: Metrics = ctx.get("metrics") or Metrics()
    ctx["metrics"] = metrics
    if settings.metrics_port and not ctx.get("metrics_served"):
        metrics.serve(settings.metrics_port)
        ctx["metrics_served"] = True
    ctx["metrics_task"] = asyncio.create_task(metrics.poll(ctx["redis"], settings.queue_name, lane))
    ctx["housekeeping_task"] = asyncio.create_task(_housekeeping(ctx))
    log.info("worker ready: queue=%s device=%s max_batch=%d slice=%.1fs/%s steps",
             settings.queue_name, engine.device, settings.max_batch, settings.slice_seconds, settings.slice_steps)


HOUSEKEEPING_INTERVAL_S = 30.0


async def forget_deleted(ctx: dict) -> list[str]:
    """Drop from memory every concept whose file is gone from the store (``/forget``, a retrain, a removed kit):
    parsed files in the concept cache and LoRA adapters resident on the pipeline. Works on every worker
    without a broadcast; returns the keys dropped."""
    store, cache = ctx["store"], ctx["concepts"]
    engine, lane = ctx["engine"], ctx["lane"]
    resident = list(engine.composer.resident_adapters()) if engine.composer is not None else []
    candidates = set(cache.cached_keys()) | set(resident)
    gone = [k for k in sorted(candidates) if not await asyncio.to_thread(store.exists, k)]
    for k in gone:
        cache.invalidate(k)
    stale = [k for k in gone if k in resident]
    if stale:
        await lane.call(lambda: [engine.composer.evict(k) for k in stale], priority=PRIO_LIGHT)
    return gone


async def _housekeeping(ctx: dict) -> None:
    while True:
        await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
        try:
            gone = await forget_deleted(ctx)
            if gone:
                log.info("dropped %d deleted concept(s) from memory", len(gone))
        except Exception:
            log.exception("housekeeping failed")


async def shutdown(ctx: dict) -> None:
    for name in ("metrics_task", "housekeeping_task"):
        task = ctx.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if ctx.get("owns_http") and ctx.get("http") is not None:
        await ctx["http"].close()
    lane: GpuLane | None = ctx.get("lane")
    if ctx.get("owns_engine") and lane is not None:
        await lane.call(ctx["engine"].release, priority=0)
    if ctx.get("owns_lane", True) and lane is not None:
        await lane.close()
    if ctx.get("metrics_served"):
        ctx["metrics"].close()


class _BatchingWorker(Worker):
    """arq's Worker, telling the GPU lane how many jobs each poll starts (see ``GpuLane.expect``)."""

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        lane = self.ctx.get("lane")
        if lane is not None:
            lane.expect(len(job_ids))
        await super().start_jobs(job_ids)


def build_worker(
    settings: Settings, *, store: ArtifactStore | None = None, http: Any = None, poster: Any = None,
    engine: Engine | None = None, handle_signals: bool = True, burst: bool = False, **extra: Any,
) -> Worker:
    """An arq ``Worker`` for ``settings`` (with optional injected parts, see the module docstring)."""
    functions = job_functions(settings)
    ctx: dict[str, Any] = {"settings": settings, "store": store, "http": http, "poster": poster, "engine": engine}
    ctx.update(extra)
    worker = _BatchingWorker(
        functions,
        queue_name=settings.queue_name,
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        ctx=ctx,
        max_jobs=settings.max_batch + 2,  # a full batch of generations + a training slice + a cancel
        poll_delay=settings.poll_delay,
        job_timeout=settings.job_timeout_s,
        keep_result=600,
        max_tries=3,
        handle_signals=handle_signals,
        burst=burst,
        health_check_interval=60,
    )
    worker.in_progress_timeout_s = max(f.timeout_s or settings.job_timeout_s for f in functions) + IN_PROGRESS_MARGIN_S
    return worker


def run_worker(settings: Settings) -> int:
    """Blocking entry point (``kitbooth worker`` / ``python -m gpu_worker``)."""
    worker = build_worker(settings)
    worker.run()
    return 0
