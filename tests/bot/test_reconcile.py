"""Start-up reconcile: jobs the DB has as queued/running that Redis lost are enqueued again."""

from __future__ import annotations

import pytest

from bot import reconcile
from gpu_worker import contract
from tests.bot.conftest import fake_checker, make_ready_face, queued, selfies


@pytest.mark.parametrize("bot_seams", [{"photo_checker": fake_checker()}])
async def test_reconcile_after_redis_lost_everything(arena):
    """Redis lost its data (FLUSHDB on the test DB: FLUSHALL would also empty other processes' DBs)."""
    s = arena.services
    await make_ready_face(s, arena.bob.id)
    shown = await arena.alice.slash(arena.channel, "train")
    await arena.alice.submit_modal(shown, {"photos": selfies(4), "consent": ["yes"]})
    await arena.bob.slash(arena.channel, "generate", prompt="a goal", count=2)
    jobs = await s.db.active_jobs()
    assert len(jobs) == 2
    await s.db.update_job(jobs[1].id, status="running")  # a worker had started it
    before = {f: p for f, p in await queued(s)}
    await s.redis.flushdb()
    assert await queued(s) == []
    await arena.env.restart_bot()  # start-up runs the reconcile
    after = {f: p for f, p in await queued(s)}
    assert after == before  # the same payloads, nothing lost
    assert {j.status for j in await s.db.active_jobs()} == {"queued"}
    assert await s.arq.exists("arq:job:" + contract.arq_job_id(jobs[1].id))
    # Nothing lost twice: a second reconcile with everything known enqueues nothing.
    assert await reconcile.reconcile(s) == 0
    assert len(await queued(s)) == 2


async def test_reconcile_leaves_known_and_finished_jobs_alone(arena):
    s = arena.services
    await make_ready_face(s, arena.alice.id)
    await arena.alice.slash(arena.channel, "generate", prompt="one", count=1)
    await arena.alice.slash(arena.channel, "generate", prompt="two", count=1)
    j1, j2 = await s.db.list_jobs(user_id=arena.alice.id)
    await s.db.update_job(j2.id, status="done")
    assert await reconcile.reconcile(s) == 0
    assert len(await queued(s)) == 2  # j2's queue entry untouched (the worker will skip it)


async def test_reconcile_marks_unrecoverable_jobs_failed(arena):
    s = arena.services
    await s.db.ensure_user(5)
    job = await s.db.create_job(kind="generate", user_id=5, payload={})
    assert await reconcile.reconcile(s) == 0
    assert (await s.db.get_job(job.id)).status == "failed"


async def _run_real_arq(s, fn, *, timeout: float) -> None:
    """Process the queue once with a real arq Worker whose generate function is ``fn``."""
    from arq import Worker, func
    from arq.connections import RedisSettings

    w = Worker([func(fn, name=contract.GENERATE_JOB, timeout=timeout, max_tries=1)],
               queue_name=s.settings.queue_name, redis_settings=RedisSettings.from_dsn(s.settings.redis_url),
               burst=True, poll_delay=0.01, handle_signals=False, keep_result=60)
    try:
        await w.main()
    finally:
        await w.close()


async def test_job_arq_gave_up_on_is_failed_and_the_user_told(arena):
    """A worker job that arq timed out (no job.failed event from the worker) must not stay 'running'."""
    import asyncio

    s = arena.services
    await make_ready_face(s, arena.alice.id)
    await arena.alice.slash(arena.channel, "generate", prompt="a late winner", count=1)
    (job,) = await s.db.list_jobs(user_id=arena.alice.id, kind="generate")
    await s.db.update_job(job.id, status="running")

    async def hangs(ctx, payload):
        await asyncio.sleep(5)

    await _run_real_arq(s, hangs, timeout=0.2)
    assert await arena.bot.consumer.sweep() == 1
    failed = await s.db.get_job(job.id)
    assert failed.status == "failed" and failed.error == reconcile.ABANDONED_REASON
    msg = arena.channel.last_message
    assert arena.alice.mention in msg.content and "try again" in msg.content
    assert await arena.bot.consumer.sweep() == 0  # handled once


async def test_sweep_ignores_failures_the_worker_reported_itself(arena):
    s = arena.services
    await make_ready_face(s, arena.alice.id)
    await arena.alice.slash(arena.channel, "generate", prompt="a header", count=1)
    (job,) = await s.db.list_jobs(user_id=arena.alice.id, kind="generate")

    async def reports(ctx, payload):  # what the real worker returns for a failure it handled
        return {"ok": False, "reason": "bad concept"}

    await _run_real_arq(s, reports, timeout=5)
    assert await arena.bot.consumer.sweep() == 0
    assert (await s.db.get_job(job.id)).status == "queued"  # its job.failed event will settle it
