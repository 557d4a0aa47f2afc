"""The poster through SimCord: the simulated bot's ``bot.http`` is the injected REST client (the seam)."""

from __future__ import annotations

import dataclasses

from gpu_worker.poster import Poster
from kitbooth.render import Outgoing, png_bytes, result_buttons
from tests.worker.conftest import target_of


async def _no_sleep(_s: float) -> None:
    return None


def _png() -> bytes:
    from PIL import Image

    return png_bytes(Image.new("RGB", (16, 16), (200, 30, 30)))


async def _deferred(env):
    guild = env.create_guild()
    ch = guild.create_text_channel("booth")
    alice = guild.add_member(env.create_user("alice"))
    result = await alice.slash(ch, "draw", prompt="me at the stadium")
    return ch, alice, result, target_of(env.bot.interactions[-1])


async def test_final_edits_the_original_response_with_files_and_buttons(simcord_env):
    ch, alice, result, target = await _deferred(simcord_env)
    poster = Poster(simcord_env.bot.http, sleep=_no_sleep)
    assert await poster.progress(target, Outgoing("🎨 Drawing ▰▱ 1/2"))
    assert result.response.content.startswith("🎨 Drawing")
    msg = Outgoing("**me at the stadium**", files=[("grid.png", _png())], buttons=result_buttons(7, alice.id, 4))
    res = await poster.final(target, msg)
    assert res.posted and res.via == "original" and res.message_id == result.response.id
    resp = result.response
    assert resp.content == "**me at the stadium**"
    assert [a.filename for a in resp.attachments] == ["grid.png"]
    assert await resp.attachments[0].read() == _png()
    ids = [c["custom_id"] for row in resp.components for c in row["components"]]
    assert ids[0] == f"kb:u:7:0:{alice.id}" and f"kb:d:7:0:{alice.id}" in ids
    assert len(ch.history()) == 1  # edited in place, nothing new


async def test_expired_token_sends_a_channel_message_mentioning_the_user(simcord_env):
    ch, alice, result, target = await _deferred(simcord_env)
    old = dataclasses.replace(target, interaction_created_at=target.interaction_created_at - 3600)
    poster = Poster(simcord_env.bot.http, sleep=_no_sleep)
    assert not await poster.progress(old, Outgoing("progress"))  # no token, no message id: skipped
    res = await poster.final(old, Outgoing("done", files=[("a.png", _png())]))
    assert res.posted and res.via == "channel"
    last = ch.last_message
    assert last.id == res.message_id and f"<@{alice.id}>" in last.content and last.attachments


async def test_discord_500_is_retried_and_the_message_arrives_once(simcord_env):
    ch, alice, result, target = await _deferred(simcord_env)
    old = dataclasses.replace(target, interaction_token=None)
    simcord_env.inject_error("POST", "/channels/*/messages", status=500, times=2)
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    res = await Poster(simcord_env.bot.http, sleep=sleep).final(old, Outgoing("result", files=[("a.png", _png())]))
    assert res.posted and len(waits) == 2
    posts = [r for r in simcord_env.http_requests if r.method == "POST" and r.path.endswith("/messages")]
    assert len(posts) == 3  # two injected failures + the one that went through
    assert [m.content for m in ch.history() if "result" in m.content] == [f"<@{alice.id}> result"]

    # Same on the interaction path.
    simcord_env.inject_error("PATCH", "/webhooks/*/messages/@original", status=502, times=1)
    res = await Poster(simcord_env.bot.http, sleep=_no_sleep).final(target, Outgoing("edited"))
    assert res.posted and res.via == "original" and result.response.content == "edited"


async def test_persistent_failure_reports_not_posted(simcord_env):
    ch, alice, result, target = await _deferred(simcord_env)
    old = dataclasses.replace(target, interaction_token=None)
    simcord_env.inject_error("POST", "/channels/*/messages", status=503, times=None)
    res = await Poster(simcord_env.bot.http, attempts=3, sleep=_no_sleep).final(old, Outgoing("x"))
    assert not res.posted and res.error
    simcord_env.backend.faults.clear()
