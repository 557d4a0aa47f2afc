"""Start-up reconcile: jobs the DB has as queued/running that Redis lost are enqueued again."""

from __future__ import annotations

import pytest

from bot import reconcile
from gpu_worker import contract
from tests.bot.conftest import fake_checker, make_ready_face, queued, selfies


@pytest.mark.parametrize("bot_extras", [{"photo_checker": fake_checker()}])
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
