"""End to end: /train → the real worker (tiny model, CPU, in-process) → concept ready → /generate → images in
the channel, with working buttons. The worker has no Discord token here, so the bot delivers (posted=False)."""

from __future__ import annotations

import pytest

from tests.bot.conftest import selfies
from tests.bot.in_process import running_worker, until, worker_settings

pytestmark = pytest.mark.slow


@pytest.fixture
def bot_settings(tmp_path, redis_url, tiny_model_dir):
    return worker_settings(tmp_path, redis_url, tiny_model_dir, tag="e2e", train_steps=4, train_resolution=64)


@pytest.fixture
async def worker(bot_settings, store):
    async with running_worker(bot_settings, store) as w:
        yield w




async def test_train_then_generate_end_to_end(arena, worker):
    s = arena.services
    arena.env.settle_timeout = 60.0  # the real dlib photo checks share the CPU with the in-process worker
    shown = await arena.alice.slash(arena.channel, "train")
    r = await arena.alice.submit_modal(shown, {"photos": selfies(4), "consent": ["yes"]})
    assert "queue" in r.response.content, r.response.content

    face = await until(arena, lambda: s.db.ready_face(arena.alice.id))
    assert face.trigger_tokens and s.store.exists(face.artifact_key)
    assert s.store.list(f"users/{arena.alice.id}/photos/") == []  # crops deleted after training
    assert "I learned your face" in arena.channel.last_message.content

    r = await arena.alice.slash(arena.channel, "generate", prompt="celebrating a goal", count=2, seed=3)
    assert "queue" in r.response.content
    (job,) = await s.db.list_jobs(user_id=arena.alice.id, kind="generate")

    async def done():
        j = await s.db.get_job(job.id)
        return j if j.status in ("done", "failed") else None

    j = await until(arena, done)
    assert j.status == "done", j.error
    outputs = await s.db.list_outputs(job_id=job.id)
    assert len(outputs) == 2
    msg = arena.channel.last_message
    assert arena.alice.mention in msg.content and len(msg.attachments) == 2
    png = await msg.attachments[0].read()
    assert png.startswith(b"\x89PNG")
    r = await arena.bob.click(msg, label="U1")
    assert "belong to" in r.response.content
