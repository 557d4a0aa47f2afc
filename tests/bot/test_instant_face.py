"""The bot's side of the instant face (SimCord, real SQLite, real Redis and arq queue): off unless configured;
when configured, /generate while the face is still learning enqueues the instant face (its ``instant_key``, no
face concept), and once the trained face is ready the normal request takes over; /forget deletes the embedding."""

from __future__ import annotations

import pytest

from bot import forget
from bot.generate_request import FACE_TRAINING
from gpu_worker import contract
from kitbooth.render import INSTANT_PREVIEW
from storage import keys
from tests.bot.conftest import finish_generate, queued

ON = {"instant_face_adapter": "h94/IP-Adapter-FaceID/ip-adapter-faceid_sd15.bin"}


async def _learning_face(s, uid: int):
    await s.db.ensure_user(uid)
    return await s.db.create_concept(owner_id=uid, guild_id=None, kind="face", name="face", method="pivotal",
                                     status="training", trigger_tokens=["ohwx"])


async def test_off_by_default_generate_waits_for_the_trained_face(arena):
    await _learning_face(arena.services, arena.alice.id)
    result = await arena.alice.slash(arena.channel, "generate", prompt="celebrating a goal")
    assert result.response.ephemeral and FACE_TRAINING in result.response.content
    assert await queued(arena.services) == []


@pytest.mark.parametrize("bot_setting_overrides", [ON])
async def test_instant_face_while_learning_then_the_trained_face(arena):
    s, uid = arena.services, arena.alice.id
    learning = await _learning_face(s, uid)
    result = await arena.alice.slash(arena.channel, "generate", prompt="celebrating a goal", count=1)
    assert "queue" in result.response.content and not result.response.ephemeral
    ((func, payload),) = await queued(s)
    p = contract.GeneratePayload.from_dict(payload)
    assert func == contract.GENERATE_JOB
    assert p.face is None and p.instant_key == keys.instant_key(uid, learning.id)
    assert p.instant_key.startswith(keys.user_prefix(uid)) and p.reference_key is None and p.candidates is None

    # The training finishes: the trained face replaces the instant one.
    key = keys.concept_key(uid, learning.id)
    s.store.put_bytes(key, b"face-lora")
    await s.db.update_concept(learning.id, status="ready", artifact_key=key, size_bytes=9)
    await arena.alice.slash(arena.channel, "generate", prompt="lifting the cup", count=1)
    second = [contract.GeneratePayload.from_dict(d) for _f, d in await queued(s)]
    (p2,) = [x for x in second if x.prompt == "lifting the cup"]
    assert p2.face is not None and p2.face.key == key and p2.instant_key is None


@pytest.mark.parametrize("bot_setting_overrides", [ON])
async def test_another_members_learning_face_is_never_used(arena):
    await _learning_face(arena.services, arena.alice.id)
    result = await arena.bob.slash(arena.channel, "generate", prompt="a goal")
    assert result.response.ephemeral and "run /train" in result.response.content
    assert await queued(arena.services) == []


@pytest.mark.parametrize("bot_setting_overrides", [ON])
async def test_forget_deletes_the_instant_embedding(arena):
    s, uid = arena.services, arena.alice.id
    learning = await _learning_face(s, uid)
    mine, bobs = keys.instant_key(uid, learning.id), keys.instant_key(arena.bob.id, 99)
    s.store.put_bytes(mine, b"\0" * 2048)
    s.store.put_bytes(bobs, b"\0" * 2048)
    report = await forget.forget_user(s, uid)
    assert not s.store.exists(mine) and s.store.exists(bobs)
    assert report.total_files >= 1


@pytest.mark.parametrize("bot_setting_overrides", [ON])
async def test_the_bots_fallback_post_says_it_is_a_preview(arena):
    s, alice = arena.services, arena.alice
    await _learning_face(s, alice.id)
    await alice.slash(arena.channel, "generate", prompt="lifting the cup", count=1)
    (job,) = await s.db.list_jobs(user_id=alice.id, kind="generate")
    await finish_generate(s, job, posted=False)  # the worker could not reach Discord: the bot delivers
    await arena.bot.consumer.drain()
    msg = arena.channel.last_message
    assert INSTANT_PREVIEW in msg.content and "preview — your trained face is on its way" in msg.content
    assert msg.attachments
