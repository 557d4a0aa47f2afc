"""User-controlled text echoed in public replies must never ping @everyone, @here, roles or other members."""

from __future__ import annotations

from tests.bot.conftest import make_ready_face


async def test_generate_echo_of_a_mention_prompt_pings_nobody(arena):
    s = arena.services
    await make_ready_face(s, arena.alice.id)
    result = await arena.alice.slash(arena.channel, "generate", prompt="@everyone look @here, hi @bob")
    assert not result.response.ephemeral and "@everyone" in result.response.content
    (msg,) = arena.channel.history()
    assert msg.mention_everyone is False
    assert not msg.mentions and not msg.role_mentions
