"""The events consumer: DB updates, supersede on retrain, delivery when the worker could not post, ack after
commit, pending re-read, a lost consumer group, events for forgotten users."""

from __future__ import annotations

import pytest

from gpu_worker import contract
from storage import keys
from tests.bot.conftest import emit, fake_checker, finish_generate, make_ready_face, selfies, tiny_png

pytestmark = pytest.mark.parametrize("bot_seams", [{"photo_checker": fake_checker()}])


async def _pending(services) -> int:
    from bot.events import GROUP

    info = await services.redis.xpending(services.settings.events_stream, GROUP)
    return info["pending"]


async def _train(arena, member):
    shown = await member.slash(arena.channel, "train")
    await member.submit_modal(shown, {"photos": selfies(4), "consent": ["yes"]})
    jobs = await arena.services.db.list_jobs(user_id=member.id, kind="train")
    return jobs[-1]


async def test_concept_ready_retrain_supersedes_old_face_and_deletes_crops(arena):
    s = arena.services
    old = await make_ready_face(s, arena.alice.id, tokens=["oldtok"])
    job = await _train(arena, arena.alice)
    concept = await s.db.get_concept(job.concept_id)
    assert s.store.list(keys.photos_prefix(arena.alice.id, concept.id))
    # while the new one trains, the old face still generates
    assert (await s.db.ready_face(arena.alice.id)).id == old.id
    s.store.put_bytes(concept_key := keys.concept_key(arena.alice.id, concept.id), b"new-face")
    s.store.put_bytes(keys.checkpoint_prefix(arena.alice.id, concept.id) + "step-10.safetensors", b"ck")
    await emit(s, "job.started", job.id, arena.alice.id, "train")
    await arena.bot.consumer.drain()
    assert (await s.db.get_job(job.id)).status == "running"
    await emit(s, "concept.ready", job.id, arena.alice.id, "train", concept_id=concept.id,
               artifact_key=concept_key, size_bytes=8, sha256="ab" * 32, trigger_tokens=["newtok"])
    await arena.bot.consumer.drain()
    new = await s.db.get_concept(concept.id)
    assert new.status == "ready" and new.trigger_tokens == ["newtok"] and new.size_bytes == 8
    assert await s.db.concept_sha256(concept.id) == "ab" * 32
    assert (await s.db.get_job(job.id)).status == "done"
    assert (await s.db.ready_face(arena.alice.id)).id == concept.id
    assert (await s.db.get_concept(old.id)).status == "superseded"
    assert not s.store.exists(old.artifact_key) and s.store.exists(concept_key)
    assert s.store.list(keys.photos_prefix(arena.alice.id, concept.id)) == []
    assert s.store.list(keys.checkpoint_prefix(arena.alice.id, concept.id)) == []
    msg = arena.channel.last_message
    assert arena.alice.mention in msg.content and "I learned your face" in msg.content
    assert await _pending(s) == 0


async def test_generate_done_records_outputs_and_delivers_with_buttons(arena):
    s = arena.services
    await make_ready_face(s, arena.alice.id)
    await arena.alice.slash(arena.channel, "generate", prompt="lifting the cup", count=2)
    (job,) = await s.db.list_jobs(user_id=arena.alice.id, kind="generate")
    out = await finish_generate(s, job)
    await arena.bot.consumer.drain()
    assert (await s.db.get_job(job.id)).status == "done"
    assert sorted(o.artifact_key for o in await s.db.list_outputs(job_id=job.id)) == out
    msg = arena.channel.last_message
    assert arena.alice.mention in msg.content and "lifting the cup" in msg.content
    assert len(msg.attachments) == 2
    assert await msg.attachments[0].read() == s.store.get_bytes(out[0])
    ids = [c.custom_id for row in msg.components for c in row.children]
    assert contract.button_id("upscale", job.id, 1, arena.alice.id) in ids
    assert contract.button_id("delete", job.id, 0, arena.alice.id) in ids
    # a second delivery of the same entry (re-read after a crash) adds no duplicate rows
    await arena.bot.consumer.handle(contract.Event(type="job.done", job_id=job.id, user_id=arena.alice.id,
                                                   kind="generate", posted=True, data={"output_keys": out}))
    assert len(await s.db.list_outputs(job_id=job.id)) == 2


async def test_posted_events_are_not_delivered_twice(arena):
    s = arena.services
    await make_ready_face(s, arena.alice.id)
    await arena.alice.slash(arena.channel, "generate", prompt="a goal", count=1)
    (job,) = await s.db.list_jobs(user_id=arena.alice.id, kind="generate")
    before = len(arena.channel.history())
    await finish_generate(s, job, posted=True)
    await arena.bot.consumer.drain()
    assert len(arena.channel.history()) == before
    assert (await s.db.get_job(job.id)).status == "done"


async def test_failure_marks_job_and_concept_and_tells_the_user(arena):
    s = arena.services
    job = await _train(arena, arena.alice)
    await emit(s, "job.failed", job.id, arena.alice.id, "train", reason="Training ran out of memory. Try again.")
    await arena.bot.consumer.drain()
    assert (await s.db.get_job(job.id)).status == "failed"
    concept = await s.db.get_concept(job.concept_id)
    assert concept.status == "failed"
    assert s.store.list(keys.photos_prefix(arena.alice.id, concept.id)) == []
    assert "ran out of memory" in arena.channel.last_message.content


async def test_ack_only_after_the_db_commit(arena, monkeypatch):
    s = arena.services
    await make_ready_face(s, arena.alice.id)
    await arena.alice.slash(arena.channel, "generate", prompt="a goal", count=1)
    (job,) = await s.db.list_jobs(user_id=arena.alice.id, kind="generate")
    real = s.db.add_output
    calls = {"n": 0}

    async def flaky(**kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("disk full")
        return await real(**kw)

    monkeypatch.setattr(s.db, "add_output", flaky)
    await finish_generate(s, job, posted=True)
    await arena.bot.consumer.poll_once()
    assert await _pending(s) == 1  # not acked: the DB write failed
    assert await s.db.list_outputs(job_id=job.id) == []
    await arena.bot.consumer.poll_once()  # re-read from the pending list
    assert await _pending(s) == 0
    assert len(await s.db.list_outputs(job_id=job.id)) == 1


async def test_pending_entries_are_reread_after_a_restart(arena):
    from bot.events import GROUP

    s = arena.services
    await make_ready_face(s, arena.alice.id)
    await arena.alice.slash(arena.channel, "generate", prompt="a goal", count=1)
    (job,) = await s.db.list_jobs(user_id=arena.alice.id, kind="generate")
    await finish_generate(s, job, posted=True)
    # The old process read the entry, then died before acking it.
    await s.redis.xreadgroup(GROUP, "bot", {s.settings.events_stream: ">"}, count=10)
    assert await _pending(s) == 1
    await arena.env.restart_bot()
    await arena.bot.consumer.drain()
    assert await _pending(s) == 0
    assert (await s.db.get_job(job.id)).status == "done"


async def test_group_recreated_after_redis_lost_it(arena):
    s = arena.services
    await s.redis.flushdb()
    await make_ready_face(s, arena.alice.id)
    await arena.alice.slash(arena.channel, "generate", prompt="a goal", count=1)
    (job,) = await s.db.list_jobs(user_id=arena.alice.id, kind="generate")
    await s.redis.delete(s.settings.events_stream)
    await finish_generate(s, job, posted=True)
    await arena.bot.consumer.drain()
    assert (await s.db.get_job(job.id)).status == "done"


async def test_events_for_forgotten_users_leave_no_files(arena):
    s = arena.services
    key = keys.output_key(4242, 77, 0)
    s.store.put_bytes(key, tiny_png())
    await emit(s, "job.done", 77, 4242, "generate", output_keys=[key])
    await arena.bot.consumer.drain()
    assert not s.store.exists(key)
    assert await _pending(s) == 0


async def test_an_event_never_attaches_delivers_or_deletes_another_users_files(arena):
    s = arena.services
    await make_ready_face(s, arena.alice.id)
    bob_face = await make_ready_face(s, arena.bob.id, tokens=["zkbob"])
    bob_img = keys.output_key(arena.bob.id, 999, 0)
    s.store.put_bytes(bob_img, tiny_png())
    await arena.alice.slash(arena.channel, "generate", prompt="lifting the cup", count=1)
    (job,) = await s.db.list_jobs(user_id=arena.alice.id, kind="generate")
    await emit(s, "job.done", job.id, arena.alice.id, "generate", output_keys=[bob_img, bob_face.artifact_key])
    await arena.bot.consumer.drain()
    assert await s.db.list_outputs(job_id=job.id) == []  # bob's files are not alice's outputs
    assert not arena.channel.last_message.attachments  # nor delivered to her
    # an orphan event (job unknown) names bob's files: they are not deleted on its say-so
    await emit(s, "concept.ready", 123456, arena.alice.id, "train", output_keys=[bob_img],
               artifact_key=bob_face.artifact_key)
    await arena.bot.consumer.drain()
    assert s.store.exists(bob_img) and s.store.exists(bob_face.artifact_key)
