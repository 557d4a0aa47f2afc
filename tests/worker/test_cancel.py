"""Removing a user's queued jobs costs work proportional to THEIR job ids, not to the queue: no ZRANGE of the
queue, no SCAN, a fixed number of commands whatever else is queued (real Redis; a spy only counts commands)."""

from __future__ import annotations

from typing import Any

from gpu_worker import contract
from gpu_worker.cancel import drop_queued
from storage import keys
from tests.worker.conftest import wait_events
from tests.worker.test_train import train_payload


class CommandSpy:
    """Forwards to the real client, recording every command name (pipelines' too)."""

    def __init__(self, inner: Any, log: list[str]):
        self._inner, self._log = inner, log

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name == "pipeline":
            return lambda *a, **kw: CommandSpy(attr(*a, **kw), self._log)
        if callable(attr) and not name.startswith("_"):
            self._log.append(name)
        return attr

    async def __aenter__(self) -> CommandSpy:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._inner.__aexit__(*exc)


async def test_drop_queued_touches_only_the_users_own_jobs(arq_pool, store, worker_settings):
    q = worker_settings.queue_name
    for i in range(2000):  # everyone else's queue
        await arq_pool.enqueue_job(contract.GENERATE_JOB, {"job_id": 10_000 + i, "user_id": 7}, _job_id=f"kb-{10_000 + i}",
                                   _queue_name=q)
    mine = {"job_id": 5, "user_id": 1}
    await arq_pool.enqueue_job(contract.GENERATE_JOB, mine, _job_id=contract.arq_job_id(5), _queue_name=q)
    tp = train_payload(store, 1, 6, steps=10)
    slice3 = contract.arq_job_id(6, 3)
    await arq_pool.enqueue_job(contract.TRAIN_JOB, {**tp.to_dict(), "slice_index": 3}, _job_id=slice3, _queue_name=q)
    await arq_pool.set(contract.train_slice_key(6), slice3)
    # Someone else's job under an id the user names is never theirs to drop.
    await arq_pool.enqueue_job(contract.GENERATE_JOB, {"job_id": 8, "user_id": 2}, _job_id="kb-8", _queue_name=q)

    log: list[str] = []
    removed = await drop_queued(CommandSpy(arq_pool, log), q, user_id=1, job_ids=[5, 6, 8])

    assert sorted(r[0] for r in removed) == ["kb-5", slice3]
    assert await arq_pool.zcard(q) == 2001 and await arq_pool.exists("arq:job:kb-8")
    assert not {"zrange", "zscan", "scan", "scan_iter", "keys"} & set(log), log
    assert len(log) == 4 + 3 * len(removed), log  # GET the pointers, one pipeline of 2 MGETs, a ZREM+DEL per job


async def test_cancel_job_drops_a_queued_training_slice_and_its_checkpoints(arq_pool, store, start_worker,
                                                                            worker_settings):
    tp = train_payload(store, 3, 9, steps=10)
    store.put_bytes(tp.checkpoint_prefix + "state.ckpt", b"state")
    slice2 = contract.arq_job_id(9, 2)
    await arq_pool.enqueue_job(contract.TRAIN_JOB, {**tp.to_dict(), "slice_index": 2}, _job_id=slice2,
                               _defer_by=600)  # queued, not due
    await arq_pool.set(contract.train_slice_key(9), slice2)
    await start_worker()
    await arq_pool.enqueue_job(contract.CANCEL_JOB, contract.CancelPayload(user_id=3, job_ids=[9]).to_dict())
    evs = await wait_events(arq_pool, worker_settings.events_stream, lambda e: any(x.type == "job.cancelled" for x in e))
    assert [(e.type, e.job_id, e.data["dropped"]) for e in evs] == [("job.cancelled", 9, slice2)]
    assert await arq_pool.zcard(worker_settings.queue_name) == 0
    assert not store.list(tp.checkpoint_prefix) and store.list(keys.photos_prefix(3, 1))
