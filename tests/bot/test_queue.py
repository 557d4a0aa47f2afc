"""/queue: my jobs' positions and ETA, and the overall depth (real arq queue in Redis)."""

from __future__ import annotations

import pytest

from bot import jobs
from gpu_worker import contract
from storage import keys


@pytest.fixture
def bot_cogs():
    return ["bot.cogs.queue"]


async def enqueue_generate(s, uid, prompt):
    def build(job):
        return contract.GeneratePayload(
            job_id=job.id, user_id=uid, prompt=prompt, output_prefix=keys.outputs_prefix(uid, job.id),
            target=contract.DiscordTarget(channel_id=1, user_id=uid))

    job, _ = await jobs.create_and_enqueue(s, kind="generate", user_id=uid, build_payload=build)
    return job


async def test_queue_empty(arena):
    r = await arena.alice.slash(arena.channel, "queue")
    assert "no jobs" in r.response.content and "Queue overall: empty" in r.response.content
    assert r.response.ephemeral


async def test_queue_positions_eta_and_depth(arena):
    s = arena.services
    await enqueue_generate(s, arena.bob.id, "bob first")
    mine = await enqueue_generate(s, arena.alice.id, "me in the rain")
    running = await s.db.create_job(kind="train", user_id=arena.alice.id)
    await s.db.update_job(running.id, status="running")
    r = await arena.alice.slash(arena.channel, "queue")
    text = r.response.content
    assert f"job {mine.id}): position 2 in the queue (ETA" in text and "me in the rain" in text
    assert f"job {running.id}): running now" in text
    assert "Queue overall: 2 jobs waiting" in text
    assert "bob first" not in text  # only my own jobs are described
