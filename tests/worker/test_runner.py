"""The job runner's failure policy on the real worker (real Redis, tiny model): outcome by exception TYPE,
transient failures retried (a training: the same slice, from its checkpoint), an arq abort handled as a cancel,
a timeout kept a retry.

Faults are injected at the store seam (``build_worker(store=...)``): ``HiccupStore`` is the real
``LocalArtifactStore`` whose matching calls raise ``OSError`` a given number of times."""

from __future__ import annotations

import asyncio
import time

import pytest
from arq.jobs import Job
from redis.exceptions import ConnectionError as RedisConnectionError

from gpu_worker import contract
from gpu_worker.runner import TRANSIENT_REASON, Outcome, classify
from kitbooth.errors import (
    IncompatibleArtifact,
    InvalidInput,
    JobCancelled,
    NotAllowed,
    PayloadError,
    StoreUnavailable,
    TransientError,
)
from storage import LocalArtifactStore, keys
from tests.worker.conftest import put_face, until_empty, wait_events, wctx
from tests.worker.test_generate import _payload
from tests.worker.test_train import train_payload


class HiccupStore(LocalArtifactStore):
    """The real local store; ``fail(method, key_part, times)`` makes matching calls raise OSError."""

    def __init__(self, root):
        super().__init__(root)
        self.faults: list[list] = []  # [method, key substring, times left]
        self.failed: list[tuple[str, str]] = []

    def fail(self, method: str, key_part: str, times: int | None = 1) -> None:
        self.faults.append([method, key_part, times])

    def _maybe(self, method: str, key: str) -> None:
        for f in self.faults:
            if f[0] == method and f[1] in key and (f[2] is None or f[2] > 0):
                if f[2] is not None:
                    f[2] -= 1
                self.failed.append((method, key))
                raise OSError(5, "Input/output error")

    def put_bytes(self, key, data):
        self._maybe("put_bytes", key)
        return super().put_bytes(key, data)

    def get_bytes(self, key):
        self._maybe("get_bytes", key)
        return super().get_bytes(key)


@pytest.fixture
def hiccups(tmp_path):
    return HiccupStore(tmp_path / "artifacts")


@pytest.mark.parametrize("exc, outcome", [
    (JobCancelled(), Outcome.CANCELLED),
    (InvalidInput("Your prompt is empty."), Outcome.FAILED),
    (IncompatibleArtifact("made for a different base model"), Outcome.FAILED),  # lower case: still by type
    (NotAllowed("no"), Outcome.FAILED),
    (PayloadError("bad"), Outcome.REJECTED),
    (StoreUnavailable("disk"), Outcome.RETRY),
    (TransientError("x"), Outcome.RETRY),
    (RedisConnectionError("reset"), Outcome.RETRY),
    (RuntimeError("Store unavailable, retry later"), Outcome.ERROR),  # text never decides
    (OSError("not from the store seam"), Outcome.ERROR),
])
def test_outcome_is_decided_by_type(exc, outcome):
    assert classify(exc) is outcome


@pytest.mark.slow
async def test_store_hiccup_after_a_slice_retries_that_slice_only(arq_pool, hiccups, start_worker,
                                                                  worker_settings):
    settings = worker_settings.model_copy(update={"slice_steps": 2, "retry_defer_s": 0.05})
    p = train_payload(hiccups, 81, 91, steps=6)
    hiccups.fail("put_bytes", p.checkpoint_prefix + "meta.json")  # slice 0's bookkeeping write fails once
    hiccups.fail("get_bytes", "sample-0.png")  # and, after the concept is written, reading its sample back
    w = await start_worker(settings, store=hiccups)
    await arq_pool.enqueue_job(contract.TRAIN_JOB, p.to_dict(), _job_id=contract.arq_job_id(p.job_id, 0))
    evs = await wait_events(arq_pool, settings.events_stream, lambda e: any(x.type == "concept.ready" for x in e),
                            timeout=90)
    assert len(hiccups.failed) == 2
    types = [e.type for e in evs]
    assert "job.failed" not in types and types.count("concept.ready") == 1 and types[0] == "job.started"
    starts = [s[2] for s in wctx(w).slices if s[0] == "start"]
    assert starts.count(0) == 2  # slice 0 ran again, from its checkpoint; the final retry did not train again
    progress = [e for e in evs if e.type == "job.progress"]
    assert all(e.data["arq_id"] == contract.arq_job_id(p.job_id, i) for i, e in enumerate(progress))
    assert all(e.data["next_arq_id"] == contract.arq_job_id(p.job_id, i + 1) for i, e in enumerate(progress))
    assert all("arq_id" in e.data for e in evs)
    ready = next(e for e in evs if e.type == "concept.ready")
    assert ready.data["steps"] == 6 and hiccups.exists(p.artifact_key)
    assert not hiccups.list(keys.photos_prefix(81, 1)) and await until_empty(hiccups, p.checkpoint_prefix)


async def test_a_store_that_stays_down_fails_the_job_with_a_clear_message(arq_pool, hiccups, start_worker,
                                                                         worker_settings):
    settings = worker_settings.model_copy(update={"retry_defer_s": 0.05})
    face = put_face(hiccups, 82, 1, seed=3)
    hiccups.fail("put_bytes", "outputs/92/", times=None)
    await start_worker(settings, store=hiccups)
    p = _payload(92, 82, contract.DiscordTarget(channel_id=1, user_id=82), face, count=1)
    await arq_pool.enqueue_job(contract.GENERATE_JOB, p.to_dict(), _job_id=contract.arq_job_id(92))
    evs = await wait_events(arq_pool, settings.events_stream, lambda e: any(x.type == "job.failed" for x in e))
    assert [e.type for e in evs] == ["job.failed"]
    assert evs[0].data["reason"] == TRANSIENT_REASON.format(job_id=92)
    assert len(hiccups.failed) == 2  # generate has 2 tries: one retry, then the user is told


@pytest.mark.slow
async def test_arq_abort_of_a_running_training_is_a_cancel(arq_pool, store, start_worker, worker_settings):
    settings = worker_settings.model_copy(update={"slice_steps": 400})
    p = train_payload(store, 83, 93, steps=2000)  # one long slice
    w = await start_worker(settings)
    arq_id = contract.arq_job_id(p.job_id, 0)
    await arq_pool.enqueue_job(contract.TRAIN_JOB, p.to_dict(), _job_id=arq_id)
    while not any(s[0] == "start" for s in wctx(w).slices):
        await asyncio.sleep(0.01)
    t0 = time.monotonic()
    assert await Job(arq_id, arq_pool, _queue_name=settings.queue_name).abort(timeout=15, poll_delay=0.05)
    evs = await wait_events(arq_pool, settings.events_stream, lambda e: any(x.type == "job.cancelled" for x in e))
    assert [e.type for e in evs] == ["job.started", "job.cancelled"]
    assert evs[-1].data["arq_id"] == arq_id
    while wctx(w).lane.busy:  # the GPU thread stops at its next step too
        assert time.monotonic() - t0 < 10
        await asyncio.sleep(0.02)
    assert not store.list(p.checkpoint_prefix) and store.list(keys.photos_prefix(83, 1))  # photos: the bot's call
    assert await arq_pool.zcard(settings.queue_name) == 0


@pytest.mark.slow
async def test_a_timeout_is_retried_and_the_last_try_tells_the_user(arq_pool, store, start_worker,
                                                                   worker_settings):
    settings = worker_settings.model_copy(update={"slice_steps": 5000, "job_timeout_s": 1.0})
    p = train_payload(store, 84, 94, steps=5000)
    await start_worker(settings)
    await arq_pool.enqueue_job(contract.TRAIN_JOB, p.to_dict(), _job_id=contract.arq_job_id(p.job_id, 0))
    evs = await wait_events(arq_pool, settings.events_stream, lambda e: any(x.type == "job.failed" for x in e),
                            timeout=60)
    assert [e.type for e in evs] == ["job.started", "job.failed"]  # tries 1-3 were retried silently
    assert "took too long" in evs[-1].data["reason"] and "/train again" in evs[-1].data["reason"]
    assert not store.list(keys.photos_prefix(84, 1))  # the training is over: the photos go
