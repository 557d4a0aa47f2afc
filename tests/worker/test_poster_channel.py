"""A training's final message keeps the private /train reply's promise ("I'll post in this channel"): it is a
channel message that mentions the member, even while the interaction token is still valid; its id comes back
(the bot records it for /forget). Through SimCord (the simulated bot's ``bot.http`` is the injected client)."""

from __future__ import annotations

from gpu_worker.job_train import TRAIN
from gpu_worker.poster import Poster
from kitbooth.render import Outgoing
from tests.worker.conftest import target_of


async def _no_sleep(_s: float) -> None:
    return None


async def test_in_channel_posts_a_mentioning_channel_message_while_the_token_is_valid(simcord_env):
    guild = simcord_env.create_guild()
    ch = guild.create_text_channel("booth")
    alice = guild.add_member(simcord_env.create_user("alice"))
    result = await alice.slash(ch, "draw", prompt="train me")
    target = target_of(simcord_env.bot.interactions[-1])
    assert target.token_valid()
    res = await Poster(simcord_env.bot.http, sleep=_no_sleep).final(target, Outgoing("✅ I learned your face"),
                                                                    in_channel=True)
    assert res.posted and res.via == "channel"
    last = ch.last_message
    assert last.id == res.message_id and last.content.startswith(f"<@{alice.id}>") and "learned" in last.content
    assert "learned" not in (result.response.content or "")  # the original reply was not used
    assert TRAIN.final_in_channel  # the training job asks for exactly this
