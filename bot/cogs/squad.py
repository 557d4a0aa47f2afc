"""/squad: a picture of you and 1-4 other members of the server, each with their own face, once they all approve.

Validation first (``bot.squads.prepare``: a refusal is an ephemeral reply), then a public reply naming everyone
and one invitation per member (a mention with Approve / Decline buttons only they can press, persistent across
restarts: ``bot.squad_buttons``). A loop cancels squads whose members did not answer in time
(``Settings.squad_invite_timeout_s``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands, tasks

from bot import catalogue, squads
from bot.squad_buttons import DYNAMIC_ITEMS, invite_view
from bot.squad_texts import guild_locale, t
from kitbooth import limits

if TYPE_CHECKING:
    from bot.app import KitBoothBot

log = logging.getLogger(__name__)

SWEEP_MAX_S = 30.0


class SquadCog(commands.Cog):
    def __init__(self, bot: KitBoothBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(*DYNAMIC_ITEMS)
        self.sweep.change_interval(seconds=min(SWEEP_MAX_S, self.bot.settings.squad_invite_timeout_s / 4))
        self.sweep.start()

    async def cog_unload(self) -> None:
        self.sweep.cancel()
        self.bot.remove_dynamic_items(*DYNAMIC_ITEMS)

    @tasks.loop(seconds=SWEEP_MAX_S)
    async def sweep(self) -> None:
        try:
            await squads.expire_due(self.bot.services, self.bot)
        except Exception:
            log.exception("squad sweep failed; retrying next round")

    @app_commands.command(name="squad", description="A picture of you and 1-4 other members in the kit.")
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="The scene, e.g. 'lifting the trophy together'",
        kit="A kit from this server's catalogue (/kits)",
        member1="A member to invite (they approve first)",
        member2="Another member", member3="Another member", member4="Another member",
        style="A style from this server's catalogue (/styles)",
    )
    async def squad(
        self, interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, limits.PROMPT_CHARS],
        kit: app_commands.Range[str, 1, limits.NAME_CHARS],
        member1: discord.Member,
        member2: discord.Member | None = None,
        member3: discord.Member | None = None,
        member4: discord.Member | None = None,
        style: app_commands.Range[str, 1, limits.NAME_CHARS] | None = None,
    ) -> None:
        services = self.bot.services
        req = await squads.prepare(services, interaction, prompt=prompt, kit=kit, style=style,
                                   invitees=[member1, member2, member3, member4])
        await interaction.response.defer(thinking=True)
        squad = await squads.open_squad(services, interaction, req)
        requester = squads.mention(interaction.user.id)
        locale = guild_locale(self.bot, interaction.guild_id)  # a shared message: the server's language
        sent = await interaction.followup.send(
            t("squad.requested", locale, requester=requester, prompt=discord.utils.escape_markdown(req.prompt),
              kit=req.kit.name, members=squads.mentions(req.invitee_ids),
              minutes=max(1, round(services.settings.squad_invite_timeout_s / 60))), wait=True)
        await squads.record(services, squad, sent, interaction.user.id)
        members = {m.user_id: m for m in await services.db.squad_members(squad.id)}
        for uid in req.invitee_ids:
            invite = await interaction.followup.send(
                t("squad.invite", locale, member=squads.mention(uid), requester=requester, kit=req.kit.name,
                  prompt=discord.utils.escape_markdown(req.prompt)),
                view=invite_view(squad.id, uid, members[uid].token, locale), wait=True,
                allowed_mentions=discord.AllowedMentions(users=[discord.Object(uid)], everyone=False, roles=False))
            await squads.record(services, squad, invite, uid)
        log.info("squad %s: %s invited %d member(s)", squad.id, interaction.user.id, len(req.invitee_ids))

    @squad.autocomplete("kit")
    async def _kit_autocomplete(self, interaction: discord.Interaction, current: str):
        return await catalogue.kit_autocomplete(interaction, current)

    @squad.autocomplete("style")
    async def _style_autocomplete(self, interaction: discord.Interaction, current: str):
        return await catalogue.style_autocomplete(interaction, current)


async def setup(bot: KitBoothBot) -> None:
    await bot.add_cog(SquadCog(bot))
