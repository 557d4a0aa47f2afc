"""The arq worker: settings → ``Worker``; start-up loads the pipeline once and builds the one
``WorkerContext`` (``ctx[CTX_KEY]``); shutdown releases what start-up built.

``build_worker(settings, ...)`` takes optional injected ``Parts`` (store, Discord HTTP client, a pre-loaded
engine) so tests can run the real worker in-process against real Redis, SimCord and the tiny model.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Worker

from gpu_worker.concepts import ConceptCache
from gpu_worker.context import CTX_KEY, WorkerContext
from gpu_worker.engine import Engine
from gpu_worker.events import EventSink
from gpu_worker.gpu import PRIO_LIGHT, GpuLane
from gpu_worker.health import readiness_checks
from gpu_worker.jobs import job_functions
from gpu_worker.metrics import Metrics
from gpu_worker.poster import Poster, make_http_client
from gpu_worker.runner import after_job_end
from gpu_worker.store_io import transient_store
from kitbooth.health import HEARTBEAT_INTERVAL_S, HealthServer, heartbeat_key
from kitbooth.settings import Settings
from storage import ArtifactStore, open_store
from training.base_layers import from_pipeline

log = logging.getLogger(__name__)

# arq keeps a job's in-progress key for (longest timeout + 10 s); a killed worker's job is retried only after
# it expires. We shorten arq's fixed 10 s margin: timeouts are already generous.
IN_PROGRESS_MARGIN_S = 2.0


@dataclasses.dataclass
class Parts:
    """What ``build_worker`` hands start-up: the settings and what it may use instead of building it (tests;
    a pre-loaded engine). arq's ``ctx`` holds only arq's own keys and, after start-up, ``CTX_KEY``."""

    settings: Settings
    store: ArtifactStore | None = None
    http: Any = None  # discord.py HTTPClient (SimCord's in tests)
    poster: Any = None
    engine: Engine | None = None
    lane: GpuLane | None = None
    metrics: Metrics | None = None
    concepts: ConceptCache | None = None
    progress_interval: float = 1.0
    worker: Worker | None = None
    health: HealthServer | None = None  # /healthz + /readyz when KITBOOTH_HEALTH_PORT is set
    owned: list[str] = dataclasses.field(default_factory=list)  # what startup built and shutdown releases


async def startup(ctx: dict, parts: Parts) -> None:
    """Build the one ``WorkerContext`` (ctx[CTX_KEY]): store, GPU lane, resident pipeline, poster, metrics."""
    settings = parts.settings
    if settings.health_port and parts.health is None:  # first, so /healthz answers while the model loads
        parts.health = HealthServer(lambda: readiness_checks(ctx, parts.worker))
        await parts.health.start(settings.health_port)
    # KITBOOTH_STORE_URL: the local folder or an S3-compatible store shared by every worker (probed once).
    store = transient_store(parts.store or await asyncio.to_thread(open_store, settings))
    lane = parts.lane or GpuLane(max_batch=settings.max_batch, gather_s=settings.batch_gather_s)
    lane.start()
    engine = parts.engine
    if engine is None:
        engine = Engine(settings)
        parts.owned.append("engine")
    if engine.pipe is None:
        await lane.call(engine.load, priority=0)
        await lane.call(engine.warm_up, priority=0)
    base = await lane.call(lambda: from_pipeline(engine.pipe), priority=0)  # what concept files must fit
    http, poster = parts.http, parts.poster
    if poster is None and http is None and settings.discord_token is not None:
        http = await make_http_client(settings.discord_token.get_secret_value())
        parts.owned.append("http")
    if poster is None and http is not None:
        poster = Poster(http)
    if poster is None:
        log.warning("no Discord token: results are delivered by the bot from the events stream (posted=False)")
    metrics = parts.metrics or Metrics()
    lane.on_batch = metrics.observe_batch
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
        parts.owned.append("metrics")
    w = WorkerContext(
        settings=settings, redis=ctx["redis"], store=store, lane=lane, engine=engine,
        concepts=parts.concepts or ConceptCache(store, base=base, max_items=settings.concept_cache),
        events=EventSink(ctx["redis"], settings.events_stream), metrics=metrics, poster=poster,
        worker=parts.worker, progress_interval=parts.progress_interval,
    )
    w.background = [asyncio.create_task(metrics.poll(ctx["redis"], settings.queue_name, lane)),
                    asyncio.create_task(_housekeeping(w))]
    parts.http = http
    ctx[CTX_KEY] = w
    log.info("worker ready: queue=%s device=%s max_batch=%d slice=%.1fs/%s steps",
             settings.queue_name, engine.device, settings.max_batch, settings.slice_seconds, settings.slice_steps)


HOUSEKEEPING_INTERVAL_S = 30.0


async def forget_deleted(w: WorkerContext) -> list[str]:
    """Drop from memory every concept whose file is gone from the store (``/forget``, a retrain, a removed kit):
    parsed files in the concept cache and LoRA adapters resident on the pipeline. Works on every worker
    without a broadcast; returns the keys dropped."""
    store, cache, engine, lane = w.store, w.concepts, w.engine, w.lane
    resident = list(engine.composer.resident_adapters()) if engine.composer is not None else []
    candidates = set(cache.cached_keys()) | set(resident)
    gone = [k for k in sorted(candidates) if not await asyncio.to_thread(store.exists, k)]
    for k in gone:
        cache.invalidate(k)
    stale = [k for k in gone if k in resident]
    if stale:
        await lane.call(lambda: [engine.composer.evict(k) for k in stale], priority=PRIO_LIGHT)
    return gone


async def _housekeeping(w: WorkerContext) -> None:
    while True:
        await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
        try:
            gone = await forget_deleted(w)
            if gone:
                log.info("dropped %d deleted concept(s) from memory", len(gone))
        except Exception:
            log.exception("housekeeping failed")


async def shutdown(ctx: dict, parts: Parts) -> None:
    if parts.health is not None:
        await parts.health.stop()
        parts.health = None
    w: WorkerContext | None = ctx.get(CTX_KEY)
    if w is None:
        return
    for task in w.background:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if "http" in parts.owned and parts.http is not None:
        await parts.http.close()
    if "engine" in parts.owned:
        await w.lane.call(w.engine.release, priority=0)
    if parts.lane is None:  # ours: an injected lane belongs to the caller
        await w.lane.close()
    if "metrics" in parts.owned:
        w.metrics.close()


class _BatchingWorker(Worker):
    """arq's Worker, telling the GPU lane how many jobs each poll starts (see ``GpuLane.expect``)."""

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        w = self.ctx.get(CTX_KEY)
        if w is not None:
            w.lane.expect(len(job_ids))
        await super().start_jobs(job_ids)


def build_worker(
    settings: Settings, *, store: ArtifactStore | None = None, http: Any = None, poster: Any = None,
    engine: Engine | None = None, handle_signals: bool = True, burst: bool = False, **parts: Any,
) -> Worker:
    """An arq ``Worker`` for ``settings`` (with optional injected ``Parts``, see the module docstring)."""
    injected = Parts(settings=settings, store=store, http=http, poster=poster, engine=engine, **parts)
    functions = job_functions(settings)
    worker = _BatchingWorker(
        functions,
        queue_name=settings.queue_name,
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        on_startup=functools.partial(startup, parts=injected),
        on_shutdown=functools.partial(shutdown, parts=injected),
        after_job_end=after_job_end,  # a forgotten user's job leaves no arq result (gpu_worker.runner)
        max_jobs=settings.max_batch + 2,  # a full batch of generations + a training slice + a cancel
        poll_delay=settings.poll_delay,
        job_timeout=settings.job_timeout_s,
        keep_result=600,
        max_tries=3,
        handle_signals=handle_signals,
        burst=burst,
        health_check_interval=HEARTBEAT_INTERVAL_S,
        health_check_key=heartbeat_key(settings.queue_name),  # one per worker: `kitbooth health` counts them
        allow_abort_jobs=True,  # the bot cancels with arq's Job.abort (handled as a cancel by the runner)
    )
    injected.worker = worker
    worker.in_progress_timeout_s = max(f.timeout_s or settings.job_timeout_s for f in functions) + IN_PROGRESS_MARGIN_S
    return worker


def run_worker(settings: Settings) -> int:
    """Blocking entry point (``kitbooth worker`` / ``python -m gpu_worker``)."""
    worker = build_worker(settings)
    worker.run()
    return 0
