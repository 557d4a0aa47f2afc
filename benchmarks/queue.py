"""Queue figures through real Redis and the real arq worker (``gpu_worker.worker.build_worker``), in-process.

``queue_overhead_ms_p50/p95``: generate jobs one at a time, enqueue → result posted (a recording poster is
injected: the documented seam in place of Discord) minus the bare pipeline time of that job (the worker's own
``timings`` record: the ``training.generate.generate`` call). Warm-up job excluded.

``wait_behind_training_slices``: a face training runs in slices; generate jobs are enqueued at random points
during it; each one's wait (enqueue → posted, minus its pipeline time) is divided by the median slice duration;
the figure is the longest. A lane that lets a generation jump between slices keeps it ≤ 1.

Redis is ``settings.redis_url`` (the bench starts nothing). Everything it writes there lives under unique queue,
stream and job names and is deleted at the end; outputs go to a temporary artifact store.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import Report, make_concept, percentile, synthetic_photos

JOB_BASE = 9_100_000_000  # job and user ids far from any real database id
USER = 9_100_000_001
TRAIN_USER = 9_100_000_002


@dataclass
class _Post:
    posted: bool = True
    message_id: int | None = None
    via: str = "bench"
    error: str = ""


@dataclass
class RecordingPoster:
    """Stands in for ``gpu_worker.poster.Poster``: records when each final message was handed over."""

    finals: dict[int, float] = field(default_factory=dict)
    _next: int = 1

    async def progress(self, target: Any, msg: Any) -> bool:
        return True

    async def final(self, target: Any, msg: Any) -> _Post:
        self.finals[target.channel_id] = time.time()
        self._next += 1
        return _Post(message_id=self._next)


def redis_ok(url: str) -> str | None:
    """None when Redis answers at ``url``, else the reason."""
    import redis

    try:
        r = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
        try:
            r.ping()
        finally:
            r.close()
    except Exception as exc:  # noqa: BLE001 - any failure means "not there"
        return f"{type(exc).__name__}: {exc}"
    return None


class _Bench:
    def __init__(self, settings: Any, pipe: Any, composer: Any, size: int, steps: int):
        from gpu_worker.engine import Engine
        from storage import LocalArtifactStore

        self.tag = uuid.uuid4().hex[:10]
        self.settings = settings.model_copy(update={
            "queue_name": f"kb:bench:{self.tag}:queue", "events_stream": f"kb:bench:{self.tag}:events",
            "safety_checker": False, "discord_token": None, "metrics_port": None, "train_samples": 0,
            "slice_steps": None,
        })
        self.tmp = tempfile.TemporaryDirectory(prefix="kb-bench-store-")
        self.store = LocalArtifactStore(Path(self.tmp.name))
        self.engine = Engine(self.settings)
        self.engine.pipe, self.engine.composer = pipe, composer
        self.poster = RecordingPoster()
        self.size, self.steps = size, steps
        self.job_ids: list[int] = []
        self._n = 0

    def face_ref(self) -> Any:
        import hashlib

        from gpu_worker import contract
        from storage import keys
        from training.artifact import save_artifact

        data = save_artifact(make_concept(self.engine.pipe, kind="face", method="pivotal", seed=7))
        key = keys.concept_key(USER, 1)
        self.store.put_bytes(key, data)
        return contract.ConceptRef(key=key, kind="face", sha256=hashlib.sha256(data).hexdigest())

    def gen_payload(self, face: Any) -> Any:
        from gpu_worker import contract
        from storage import keys

        self._n += 1
        job_id = JOB_BASE + self._n
        self.job_ids.append(job_id)
        # channel_id = job id: the recording poster keys its records by it
        target = contract.DiscordTarget(channel_id=job_id, user_id=USER)
        return contract.GeneratePayload(
            job_id=job_id, user_id=USER, prompt="celebrating a goal at the stadium", face=face,
            output_prefix=keys.outputs_prefix(USER, job_id), target=target, count=1, seed=self._n,
            width=self.size, height=self.size, steps=self.steps, guidance=7.0,
        )

    async def generate_once(self, pool: Any, worker: Any, face: Any, timeout: float = 120.0) -> float:
        """Seconds of overhead of one generate job (enqueue → posted − pipeline)."""
        from gpu_worker import contract

        p = self.gen_payload(face)
        t_enq = time.time()
        await pool.enqueue_job(contract.GENERATE_JOB, p.to_dict(), _job_id=contract.arq_job_id(p.job_id))
        deadline = time.monotonic() + timeout
        while p.job_id not in self.poster.finals:
            if time.monotonic() > deadline:
                raise TimeoutError(f"generate job {p.job_id} not posted within {timeout:.0f} s")
            await asyncio.sleep(0.001)
        t_done = self.poster.finals[p.job_id]
        pipeline = next(t["pipeline"] for t in reversed(worker.ctx["timings"]) if t["job_id"] == p.job_id)
        return t_done - t_enq - pipeline

    async def start(self) -> tuple[Any, Any, asyncio.Task]:
        from arq import create_pool
        from arq.connections import RedisSettings

        from gpu_worker.worker import build_worker

        pool = await create_pool(RedisSettings.from_dsn(self.settings.redis_url),
                                 default_queue_name=self.settings.queue_name)
        worker = build_worker(self.settings, store=self.store, engine=self.engine, poster=self.poster,
                              handle_signals=False)
        task = asyncio.create_task(worker.async_run())
        for _ in range(1000):
            if "events" in worker.ctx or task.done():
                break
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
        return pool, worker, task

    async def stop(self, pool: Any, worker: Any, task: asyncio.Task) -> None:
        await asyncio.sleep(0.05)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await worker.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        try:
            from gpu_worker import contract

            ids = [contract.arq_job_id(j) for j in self.job_ids]
            ids += [contract.arq_job_id(j, s) for j in self.job_ids for s in range(200)]
            names = [self.settings.queue_name, self.settings.events_stream]
            for prefix in ("arq:job:", "arq:result:", "arq:in-progress:", "arq:retry:"):
                names += [prefix + i for i in ids]
            for k in range(0, len(names), 500):
                await pool.delete(*names[k : k + 500])
            async for key in pool.scan_iter(match=f"*{USER}*"):
                await pool.delete(key)
            async for key in pool.scan_iter(match=f"*{TRAIN_USER}*"):
                await pool.delete(key)
        finally:
            await pool.aclose()
            self.tmp.cleanup()

    def train_payload(self, steps: int, resolution: int) -> Any:
        from gpu_worker import contract
        from storage import keys

        self._n += 1
        job_id = JOB_BASE + self._n
        self.job_ids.append(job_id)
        pkeys = []
        for i, im in enumerate(synthetic_photos(4, resolution)):
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            k = keys.photo_key(TRAIN_USER, 1, i)
            self.store.put_bytes(k, buf.getvalue())
            pkeys.append(k)
        return contract.TrainPayload(
            job_id=job_id, user_id=TRAIN_USER, concept_id=1, kind="face", method="pivotal", name="bench",
            photo_keys=pkeys, artifact_key=keys.concept_key(TRAIN_USER, 1),
            checkpoint_prefix=keys.checkpoint_prefix(TRAIN_USER, 1),
            target=contract.DiscordTarget(channel_id=job_id, user_id=TRAIN_USER), steps=steps,
            resolution=resolution, seed=1,
        )


async def _queue_overhead(b: _Bench, repeats: int) -> list[float]:
    pool, worker, task = await b.start()
    try:
        face = b.face_ref()
        await b.generate_once(pool, worker, face)  # warm-up: concept load, adapter injection
        return [await b.generate_once(pool, worker, face) for _ in range(repeats)]
    finally:
        await b.stop(pool, worker, task)


async def _wait_behind_training(b: _Bench, gens: int, train_resolution: int) -> tuple[list[float], list[float]]:
    from gpu_worker import contract

    pool, worker, task = await b.start()
    rnd = random.Random(0)
    try:
        face = b.face_ref()
        await b.generate_once(pool, worker, face)  # warm-up outside training
        p = b.train_payload(steps=5000, resolution=train_resolution)
        await pool.enqueue_job(contract.TRAIN_JOB, p.to_dict(), _job_id=contract.arq_job_id(p.job_id, 0))
        waits = []
        slices = worker.ctx["slices"]
        for _k in range(gens):
            # wait for a fresh slice to start, then a random moment inside it
            n_started = sum(1 for s in slices if s[0] == "start")
            while sum(1 for s in slices if s[0] == "start") <= n_started:
                await asyncio.sleep(0.005)
            await asyncio.sleep(rnd.uniform(0.05, 0.9) * b.settings.slice_seconds)
            waits.append(await b.generate_once(pool, worker, face))
        await pool.enqueue_job(contract.CANCEL_JOB, contract.CancelPayload(user_id=TRAIN_USER).to_dict())
        await asyncio.sleep(0.2)
        starts = {(s[1], s[2]): s[3] for s in slices if s[0] == "start"}
        durations = [s[3] - starts[(s[1], s[2])] for s in slices if s[0] == "end" and (s[1], s[2]) in starts]
        return waits, durations
    finally:
        await b.stop(pool, worker, task)


def run(report: Report, *, settings: Any, pipe: Any, composer: Any, size: int, steps: int, repeats: int,
        gens_during_training: int, slice_seconds: float, train_resolution: int) -> None:
    why = redis_ok(settings.redis_url)
    if why is not None:
        report.note(f"queue: Redis at {settings.redis_url} does not answer ({why}): queue figures not measured "
                    "(start Redis or set KITBOOTH_REDIS_URL)")
        return
    b = _Bench(settings, pipe, composer, size, steps)
    over = asyncio.run(_queue_overhead(b, repeats))
    ms = [x * 1e3 for x in over]
    report.set("queue_overhead_ms_p50", round(percentile(ms, 50), 1))
    report.set("queue_overhead_ms_p95", round(percentile(ms, 95), 1))
    report.note(f"queue: {len(ms)} generate jobs ({size}², {steps} steps) through Redis + the arq worker "
                f"(poll {settings.poll_delay * 1e3:.0f} ms, batch gather {settings.batch_gather_s * 1e3:.0f} ms): "
                f"overhead p50 {percentile(ms, 50):.1f} ms, p95 {percentile(ms, 95):.1f} ms, max {max(ms):.1f} ms")

    b2 = _Bench(settings.model_copy(update={"slice_seconds": slice_seconds}), pipe, composer, size, steps)
    waits, durations = asyncio.run(_wait_behind_training(b2, gens_during_training, train_resolution))
    if not durations:
        report.note("wait: no training slice finished; figure not measured")
        return
    slice_s = statistics.median(durations)
    report.set("wait_behind_training_slices", round(max(waits) / slice_s, 3))
    report.note(f"wait: {len(waits)} generate jobs during a face training ({train_resolution}², slices of "
                f"{slice_s:.2f} s median): waits {', '.join(f'{w:.2f}' for w in waits)} s "
                f"= at most {max(waits) / slice_s:.2f} slices")
