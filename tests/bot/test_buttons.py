"""Result buttons: owner-only, U1-U4 / reroll / vary / delete, and still working after a bot restart."""

from __future__ import annotations

from gpu_worker import contract
from tests.bot.conftest import finish_generate, make_ready_face, queued


async def _result(arena, count=4):
    s = arena.services
    await make_ready_face(s, arena.alice.id)
    await arena.alice.slash(arena.channel, "generate", prompt="holding the trophy", count=count, seed=11)
    (job,) = await s.db.list_jobs(user_id=arena.alice.id, kind="generate")
    out = await finish_generate(s, job)
    await arena.bot.consumer.drain()
    await s.arq.delete(s.settings.queue_name)  # the worker took the generate job
    return job, out, arena.channel.last_message


async def test_someone_else_clicking_your_buttons_is_refused(arena):
    job, out, msg = await _result(arena)
    for cid in (contract.button_id("upscale", job.id, 0, arena.alice.id),
                contract.button_id("reroll", job.id, 0, arena.alice.id),
                contract.button_id("delete", job.id, 0, arena.alice.id)):
        r = await arena.bob.click(msg, custom_id=cid)
        assert r.response.ephemeral and "belong to" in r.response.content
    assert await queued(arena.services) == []
    assert arena.services.store.exists(out[0])
    assert arena.channel.last_message.id == msg.id


async def test_upscale_reroll_vary(arena):
    s = arena.services
    job, out, msg = await _result(arena)
    r = await arena.alice.click(msg, label="U3")
    assert "Upscaling image 3" in r.response.content
    ((func, payload),) = await queued(s)
    assert func == contract.UPSCALE_JOB
    up = contract.UpscalePayload.from_dict(payload)
    assert up.source_key == out[2] and up.user_id == arena.alice.id
    await s.arq.delete(s.settings.queue_name)

    await arena.alice.click(msg, label="🔁 Reroll")
    ((func, payload),) = await queued(s)
    re = contract.GeneratePayload.from_dict(payload)
    assert func == contract.GENERATE_JOB and re.prompt == "holding the trophy" and re.count == 4
    assert re.variation_of is None and re.job_id != job.id
    await s.arq.delete(s.settings.queue_name)

    await arena.alice.click(msg, label="🎲 Vary")
    ((func, payload),) = await queued(s)
    assert contract.GeneratePayload.from_dict(payload).variation_of == out[0]
    kinds = [j.kind for j in await s.db.list_jobs(user_id=arena.alice.id)]
    assert kinds == ["generate", "upscale", "reroll", "vary"]


async def test_buttons_keep_working_after_restart(arena):
    s = arena.services
    job, out, msg = await _result(arena)
    await arena.env.restart_bot()
    r = await arena.alice.click(msg, label="U2")
    assert "Upscaling image 2" in r.response.content
    ((_, payload),) = await queued(s)
    assert payload["source_key"] == out[1]
    r = await arena.bob.click(msg, label="U1")
    assert "belong to" in r.response.content


async def test_delete_removes_message_and_outputs(arena):
    s = arena.services
    job, out, msg = await _result(arena, count=2)
    r = await arena.alice.click(msg, label="🗑 Delete")
    assert all(not s.store.exists(k) for k in out)
    assert await s.db.list_outputs(job_id=job.id) == []
    assert all(m.id != msg.id for m in arena.channel.history())
    assert r.followups[-1].content.startswith("🗑 Deleted") and r.followups[-1].ephemeral
