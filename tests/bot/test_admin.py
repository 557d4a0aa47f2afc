"""/kitbooth settings: show, quota, train roles, NSFW per channel; Manage Server only."""

from __future__ import annotations

import discord
import pytest
from simcord import SetupError


@pytest.fixture
def bot_cogs():
    return ["bot.cogs.admin"]


def admin_of(arena):
    role = arena.guild.create_role("Mods", permissions=discord.Permissions(manage_guild=True))
    return arena.guild.add_member(arena.env.create_user("carol"), roles=[role])


async def test_show_current_settings(arena):
    carol = admin_of(arena)
    r = await carol.slash(arena.channel, "kitbooth settings")
    fields = {f.name: f.value for f in r.response.embeds[0].fields}
    assert r.response.ephemeral and "Current settings" in r.response.content
    assert "20 images per user per day (default)" in fields["Daily quota"]
    assert fields["Who may train a face"] == "everyone"


async def test_change_quota_roles_and_nsfw(arena):
    carol = admin_of(arena)
    fans = arena.guild.create_role("Season ticket")
    nsfw_room = arena.guild.create_text_channel("after-hours")
    r = await carol.slash(arena.channel, "kitbooth settings", daily_quota=5, add_train_role=fans,
                          nsfw_channel=nsfw_room, nsfw="block")
    assert "Updated" in r.response.content and "daily quota → 5" in r.response.content
    gs = await arena.services.db.guild_settings(arena.guild.id)
    assert gs.daily_quota == 5 and gs.train_role_ids == [fans.id]
    assert gs.nsfw_policy == {str(nsfw_room.id): "block"}
    fields = {f.name: f.value for f in r.response.embeds[0].fields}
    assert f"<@&{fans.id}>" in fields["Who may train a face"] and "blocked" in fields["NSFW images"]
    # Back to defaults.
    await carol.slash(arena.channel, "kitbooth settings", reset_quota=True, everyone_may_train=True,
                      nsfw_channel=nsfw_room, nsfw="default")
    gs = await arena.services.db.guild_settings(arena.guild.id)
    assert gs.daily_quota is None and gs.train_role_ids == [] and gs.nsfw_policy == {}


@pytest.mark.parametrize("opts,needle", [
    ({"nsfw": "allow"}, "give both"),
    ({"daily_quota": 3, "reset_quota": True}, "not both"),
])
async def test_invalid_combinations_refused(arena, opts, needle):
    carol = admin_of(arena)
    r = await carol.slash(arena.channel, "kitbooth settings", **opts)
    assert needle in r.response.content
    gs = await arena.services.db.guild_settings(arena.guild.id)
    assert gs.daily_quota is None and gs.nsfw_policy == {}


async def test_non_admin_refused(arena):
    with pytest.raises(SetupError):  # hidden by default_permissions
        await arena.alice.slash(arena.channel, "kitbooth settings", daily_quota=1000)
    cmd = next(c for c in await arena.bot.tree.fetch_commands() if c.name == "kitbooth")
    arena.guild.set_command_permissions(cmd, {arena.alice: True})
    r = await arena.alice.slash(arena.channel, "kitbooth settings", daily_quota=1000)
    assert "Manage Server" in r.response.content
    assert (await arena.services.db.guild_settings(arena.guild.id)).daily_quota is None
