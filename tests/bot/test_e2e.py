"""End to end: /train → the real worker (tiny model, CPU, in-process) → concept ready → /generate → images in
the channel, with working buttons. The worker has no Discord token here, so the bot delivers (posted=False)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest

from tests.bot.conftest import selfies

pytestmark = pytest.mark.slow


@pytest.fixture
def bot_settings(tmp_path, redis_url, tiny_model_dir):
    from kitbooth.settings import Settings

    tag = uuid.uuid4().hex[:8]
    return Settings(
        _env_file=None, data_dir=tmp_path, redis_url=redis_url, queue_name=f"kb:e2e:{tag}:queue",
        events_stream=f"kb:e2e:{tag}:events", base_model=str(tiny_model_dir), device="cpu", dtype="float32",
        max_batch=4, slice_seconds=30.0, poll_delay=0.01, safety_checker=False, discord_token=None, offline=True,
        job_timeout_s=120.0, batch_gather_s=0.05, ti_slots=8, sample_steps=2, train_samples=0,
        base_hidden_size=32, rate_limit_s=0, train_steps=4, train_resolution=64, generate_steps=2, generate_side=64,
    )


@pytest.fixture
async def worker(bot_settings, store):
    from gpu_worker.engine import Engine
    from gpu_worker.worker import build_worker

    engine = Engine(bot_settings)
    engine.load()
    w = build_worker(bot_settings, store=store, engine=engine, handle_signals=False)
    task = asyncio.create_task(w.async_run())
    yield w
    await asyncio.sleep(0.05)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await w.close()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def _until(arena, pred, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await arena.bot.consumer.drain()
        value = await pred()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError("timed out")


async def test_train_then_generate_end_to_end(arena, worker):
    s = arena.services
    arena.env.settle_timeout = 60.0  # the real dlib photo checks share the CPU with the in-process worker
    shown = await arena.alice.slash(arena.channel, "train")
    r = await arena.alice.submit_modal(shown, {"photos": selfies(4), "consent": ["yes"]})
    assert "queue" in r.response.content, r.response.content

    face = await _until(arena, lambda: s.db.ready_face(arena.alice.id))
    assert face.trigger_tokens and s.store.exists(face.artifact_key)
    assert s.store.list(f"users/{arena.alice.id}/photos/") == []  # crops deleted after training
    assert "I learned your face" in arena.channel.last_message.content

    r = await arena.alice.slash(arena.channel, "generate", prompt="celebrating a goal", count=2, seed=3)
    assert "queue" in r.response.content
    (job,) = await s.db.list_jobs(user_id=arena.alice.id, kind="generate")

    async def done():
        j = await s.db.get_job(job.id)
        return j if j.status in ("done", "failed") else None

    j = await _until(arena, done)
    assert j.status == "done", j.error
    outputs = await s.db.list_outputs(job_id=job.id)
    assert len(outputs) == 2
    msg = arena.channel.last_message
    assert arena.alice.mention in msg.content and len(msg.attachments) == 2
    png = await msg.attachments[0].read()
    assert png.startswith(b"\x89PNG")
    r = await arena.bob.click(msg, label="U1")
    assert "belong to" in r.response.content
