"""/forget deletes every recorded message that shows the user's pictures or prompt, and names the ones Discord
refuses to delete (SimCord with REST faults injected). The channel's own state is checked, not a return value."""

from __future__ import annotations

import pytest

from gpu_worker import contract
from tests.bot.conftest import emit, tiny_png

PROMPT = "me lifting the cup at wembley"


@pytest.fixture
def bot_cogs():
    return ["bot.cogs.privacy"]


def _target(arena, uid):
    return contract.DiscordTarget(channel_id=arena.channel.id, user_id=uid, guild_id=arena.guild.id)


async def _job(arena, uid):
    s = arena.services
    await s.db.ensure_user(uid)
    return await s.db.create_job(kind="generate", user_id=uid, guild_id=arena.guild.id, channel_id=arena.channel.id,
                                 payload={"prompt": PROMPT, "count": 1})


async def _worker_post(arena, uid, text):
    """A message as the worker posts it (its own REST client; the id comes back in the event)."""
    return await arena.bot.get_channel(arena.channel.id).send(text)


def _shows(msg, uid) -> bool:
    return PROMPT in (msg.content or "") or f"<@{uid}>" in (msg.content or "") or bool(msg.attachments)


async def test_every_posting_is_recorded_and_deleted_and_refusals_are_named(arena):
    s, alice, bob = arena.services, arena.alice, arena.bob
    # 1. The worker edited/posted a result and sent its id in the event.
    job1 = await _job(arena, alice.id)
    worker_msg = await _worker_post(arena, alice.id, f"<@{alice.id}> **{PROMPT}**")
    await emit(s, "job.done", job1.id, alice.id, "generate", posted=True, target=_target(arena, alice.id),
               output_keys=[], seeds=[1], message_id=worker_msg.id)
    # 2. The worker could not post: the bot delivered it itself (stored PNG attached).
    job2 = await _job(arena, alice.id)
    key = f"users/{alice.id}/outputs/{job2.id}/0.png"
    s.store.put_bytes(key, tiny_png())
    await emit(s, "job.done", job2.id, alice.id, "generate", posted=False, target=_target(arena, alice.id),
               output_keys=[key], seeds=[2])
    # 3. A failure notice the worker posted as a channel message (the failure still names the job's message).
    job3 = await _job(arena, alice.id)
    failed_msg = await _worker_post(arena, alice.id, f"<@{alice.id}> ❌ {PROMPT} failed")
    await emit(s, "job.failed", job3.id, alice.id, "generate", posted=True, target=_target(arena, alice.id),
               reason="x", message_ids=[failed_msg.id])
    # Bob's result stays.
    job_b = await _job(arena, bob.id)
    bob_msg = await _worker_post(arena, bob.id, f"<@{bob.id}> bob's picture")
    await emit(s, "job.done", job_b.id, bob.id, "generate", posted=True, target=_target(arena, bob.id),
               output_keys=[], seeds=[1], message_id=bob_msg.id)
    await arena.bot.consumer.drain()

    recorded = await s.db.list_messages(alice.id)
    delivered = [m for m in arena.channel.history() if m.attachments]
    assert len(delivered) == 1 and {m.kind for m in recorded} == {"job.done", "delivery", "job.failed"}
    assert {m.message_id for m in recorded} == {worker_msg.id, delivered[0].id, failed_msg.id}

    # Discord misbehaves while /forget runs: one message was deleted by a moderator already (404), one delete is
    # refused (403: the bot lost Manage Messages there).
    await arena.bot.http.delete_message(arena.channel.id, failed_msg.id)
    arena.env.inject_error("DELETE", f"/channels/{arena.channel.id}/messages/{worker_msg.id}", status=403,
                           code=50013, message="Missing Permissions")
    shown = await alice.slash(arena.channel, "forget")
    done = await alice.click(shown.response, label="Delete everything")
    text = done.response.content
    link = f"https://discord.com/channels/{arena.guild.id}/{arena.channel.id}/{worker_msg.id}"
    assert "2 messages deleted" in text and "couldn't delete these" in text and link in text, text

    left = [m for m in arena.channel.history() if _shows(m, alice.id)]
    assert [m.id for m in left] == [worker_msg.id]  # the refused one only, and the reply names it
    assert any(m.id == bob_msg.id for m in arena.channel.history())
    assert await s.db.list_messages(alice.id) == [] and await s.db.list_messages(bob.id)


async def test_a_5xx_on_delete_is_named_not_skipped(arena):
    s, alice = arena.services, arena.alice
    job = await _job(arena, alice.id)
    msg = await _worker_post(arena, alice.id, f"<@{alice.id}> {PROMPT}")
    await emit(s, "job.done", job.id, alice.id, "generate", posted=True, target=_target(arena, alice.id),
               output_keys=[], seeds=[1], message_id=msg.id)
    await arena.bot.consumer.drain()
    arena.env.inject_error("DELETE", f"/channels/*/messages/{msg.id}", status=503, times=None)
    shown = await alice.slash(arena.channel, "forget")
    done = await alice.click(shown.response, label="Delete everything")
    assert "0 messages deleted" in done.response.content and f"/{msg.id}" in done.response.content


async def test_an_event_for_a_forgotten_job_deletes_its_message(arena):
    """A worker that posted just after /forget ran: its late event finds no job row, and its message goes."""
    s, alice = arena.services, arena.alice
    msg = await _worker_post(arena, alice.id, f"<@{alice.id}> {PROMPT}")
    await emit(s, "job.done", 987654, alice.id, "generate", posted=True, target=_target(arena, alice.id),
               output_keys=[], seeds=[1], message_id=msg.id)
    await arena.bot.consumer.drain()
    assert all(m.id != msg.id for m in arena.channel.history())
