"""``bot.cancel``, the one cancel path, against real Redis and a real arq ``Worker`` (``allow_abort_jobs``): a
queued job leaves the queue with its payload, a running one is aborted by arq, a training's newest slice (known
from the worker's events) is found by id, and the admin command uses the same path. Plus the queue position from
arq's sorted set."""

from __future__ import annotations

import asyncio
import contextlib

import discord
import pytest
from arq import func
from arq.constants import job_key_prefix
from arq.jobs import JobStatus
from arq.worker import Worker

from bot import cancel, jobs
from gpu_worker import contract
from storage import keys
from tests.bot.conftest import emit, make_ready_face


def gen_builder(uid):
    def build(job):
        return contract.GeneratePayload(job_id=job.id, user_id=uid, prompt="p",
                                        output_prefix=keys.outputs_prefix(uid, job.id),
                                        target=contract.DiscordTarget(channel_id=1, user_id=uid))
    return build


async def queue_members(s) -> list[str]:
    return [m.decode() for m in await s.arq.zrangebyscore(s.settings.queue_name, "-inf", "+inf")]


async def test_a_queued_job_leaves_the_queue_with_its_payload(arena):
    s = arena.services
    job, _ = await jobs.create_and_enqueue(s, kind="generate", user_id=arena.alice.id,
                                           build_payload=gen_builder(arena.alice.id))
    other, _ = await jobs.create_and_enqueue(s, kind="generate", user_id=arena.bob.id,
                                             build_payload=gen_builder(arena.bob.id))
    assert job.arq_id == contract.arq_job_id(job.id)  # the row records the arq id it was enqueued under
    report = await cancel.cancel_user(s, arena.alice.id)
    assert report.removed == [job.id] and report.aborting == []
    assert await queue_members(s) == [contract.arq_job_id(other.id)]
    assert not await s.arq.exists(job_key_prefix + contract.arq_job_id(job.id))
    assert (await s.db.get_job(job.id)).status == "cancelled"
    assert await s.arq.exists(contract.cancel_user_key(arena.alice.id), contract.cancel_job_key(job.id)) == 2
    assert (await s.db.get_job(other.id)).status == "queued"


async def test_a_running_job_is_aborted_through_arq(arena):
    s = arena.services
    started = asyncio.Event()

    async def slow_generate(ctx, payload):
        started.set()
        await asyncio.sleep(30)
        return {"ok": True}

    worker = Worker(functions=[func(slow_generate, name=contract.GENERATE_JOB)], redis_pool=s.arq,
                    queue_name=s.settings.queue_name, allow_abort_jobs=True, poll_delay=0.01,
                    handle_signals=False, max_tries=1)
    task = asyncio.create_task(worker.async_run())
    try:
        job, _ = await jobs.create_and_enqueue(s, kind="generate", user_id=arena.alice.id,
                                               build_payload=gen_builder(arena.alice.id))
        await asyncio.wait_for(started.wait(), 10)
        report = await cancel.cancel_user(s, arena.alice.id)
        assert report.aborting == [job.id] and report.removed == []
        arq_job = jobs.arq_job(s, contract.arq_job_id(job.id))
        for _ in range(500):
            if await arq_job.status() == JobStatus.complete:
                break
            await asyncio.sleep(0.01)
        info = await arq_job.result_info()
        assert info is not None and not info.success and isinstance(info.result, asyncio.CancelledError)
        # The row waits for the worker's job.cancelled (the real worker emits it when it stops).
        assert (await s.db.get_job(job.id)).status == "queued"
    finally:
        await worker.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def test_the_newest_training_slice_is_cancelled_by_its_id(arena):
    s, uid = arena.services, arena.alice.id
    await s.db.ensure_user(uid)
    concept = await s.db.create_concept(owner_id=uid, guild_id=None, kind="face", name="face", method="pivotal")

    def build(job):
        return contract.TrainPayload(job_id=job.id, user_id=uid, concept_id=concept.id, kind="face",
                                     method="pivotal", name="face", photo_keys=[], artifact_key="a",
                                     checkpoint_prefix="c/", target=contract.DiscordTarget(channel_id=1, user_id=uid))

    job, payload = await jobs.create_and_enqueue(s, kind="train", user_id=uid, build_payload=build,
                                                 concept_id=concept.id)
    # A worker ran slice 0 and enqueued slice 1 itself; its events say so.
    first, nxt = contract.arq_job_id(job.id, 0), contract.arq_job_id(job.id, 1)
    await s.arq.zrem(s.settings.queue_name, first)
    await s.arq.enqueue_job(contract.TRAIN_JOB, {**payload.to_dict(), "slice_index": 1}, _job_id=nxt,
                            _queue_name=s.settings.queue_name)
    await emit(s, "job.started", job.id, uid, "train", arq_id=first)
    await emit(s, "job.progress", job.id, uid, "train", step=10, total=40, arq_id=first, next_arq_id=nxt)
    await arena.bot.consumer.drain()
    row = await s.db.get_job(job.id)
    assert row.arq_id == nxt and jobs.arq_ids(row) == [nxt, first]
    report = await cancel.cancel_concept(s, concept.id)
    assert report.removed == [job.id] and await queue_members(s) == []


async def test_queue_position_from_the_sorted_set(arena):
    s = arena.services
    made = [(await jobs.create_and_enqueue(s, kind="generate", user_id=u, build_payload=gen_builder(u)))[0]
            for u in (arena.alice.id, arena.bob.id, arena.alice.id)]
    infos = [await jobs.queue_position(s, j) for j in made]
    assert [i.position for i in infos] == [1, 2, 3] and {i.depth for i in infos} == {3}
    assert infos[2].eta_seconds > infos[0].eta_seconds
    await cancel.cancel_user(s, arena.bob.id)
    assert (await jobs.queue_position(s, made[2].id)).position == 2


@pytest.fixture
def bot_cogs():
    return ["bot.cogs.admin", "bot.cogs.generate"]


async def test_admin_cancels_a_members_jobs_in_this_server(arena):
    s = arena.services
    await make_ready_face(s, arena.bob.id)
    await arena.bob.slash(arena.channel, "generate", prompt="bob at the match", count=1)
    (job,) = await s.db.list_jobs(user_id=arena.bob.id)
    role = arena.guild.create_role("Mods", permissions=discord.Permissions(manage_guild=True))
    carol = arena.guild.add_member(arena.env.create_user("carol"), roles=[role])
    r = await carol.slash(arena.channel, "kitbooth cancel", member=arena.bob)
    assert r.response.ephemeral and "Cancelled 1 job" in r.response.content and "1 removed" in r.response.content
    assert (await s.db.get_job(job.id)).status == "cancelled" and await queue_members(s) == []
    again = await carol.slash(arena.channel, "kitbooth cancel", member=arena.bob)
    assert "no queued or running jobs" in again.response.content
