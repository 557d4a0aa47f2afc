"""/kitbooth (Manage Server): ``settings`` — the daily image quota, which roles may train a face, NSFW per channel,
best-of-N (without options it shows them; every option given is applied, then the result shown); ``cancel`` — stop
a member's jobs in this server (through ``bot.cancel``, the one cancel path); ``allow-lookalike`` — let two members
who look alike (twins) each train their own face although it matches the other's (``bot.lookalike``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot import cancel, catalogue
from bot.generate_request import DEFAULT_BEST_OF
from kitbooth import limits
from kitbooth.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from bot.app import KitBoothBot
    from bot.services import Services
    from storage.database import GuildSettings

log = logging.getLogger(__name__)

MAX_QUOTA = 1000
NsfwChoice = Literal["allow", "block", "default"]


def render(settings: GuildSettings, default_quota: int, guild: discord.Guild | None) -> discord.Embed:
    e = discord.Embed(title="KitBooth settings", colour=discord.Colour.dark_teal())
    quota = (f"{settings.daily_quota} images per user per day" if settings.daily_quota is not None
             else f"{default_quota} images per user per day (default)")
    e.add_field(name="Daily quota", value=quota, inline=False)
    roles = settings.train_role_ids
    e.add_field(name="Who may train a face",
                value=", ".join(f"<@&{r}>" for r in roles) if roles else "everyone", inline=False)
    policy = settings.nsfw_policy
    lines = [f"<#{cid}>: {'allowed' if v == 'allow' else 'blocked'}" for cid, v in sorted(policy.items())]
    e.add_field(name="NSFW images", value="\n".join(lines + ["other channels: only channels marked NSFW"])[:1024],
                inline=False)
    best = settings.best_of if settings.best_of is not None else DEFAULT_BEST_OF
    e.add_field(name="Best-of-N (likeness)",
                value=("off" if best <= 1 else f"{best} candidates per image shown, the closest to the member's "
                       f"face kept (at most {limits.CANDIDATES_MAX} per request)")
                + (" (default)" if settings.best_of is None else ""), inline=False)
    return e


async def apply_settings(
    services: Services, guild_id: int, *, daily_quota: int | None = None, reset_quota: bool = False,
    add_train_role: int | None = None, remove_train_role: int | None = None, everyone_may_train: bool = False,
    nsfw_channel: int | None = None, nsfw: NsfwChoice | None = None, best_of: int | None = None,
) -> tuple[GuildSettings, list[str]]:
    """Validate every option first, then write once; returns the new settings and what changed."""
    db = services.db
    current = await db.guild_settings(guild_id)
    changes: dict = {}
    said: list[str] = []
    if daily_quota is not None and reset_quota:
        raise InvalidInput("Give either `daily_quota` or `reset_quota`, not both.")
    if daily_quota is not None:
        if not 0 <= daily_quota <= MAX_QUOTA:
            raise InvalidInput(f"The daily quota must be between 0 and {MAX_QUOTA}.")
        changes["daily_quota"] = daily_quota
        said.append(f"daily quota → {daily_quota}")
    elif reset_quota:
        changes["daily_quota"] = None
        said.append(f"daily quota → default ({services.settings.daily_quota})")
    if (nsfw is None) != (nsfw_channel is None):
        raise InvalidInput("To set the NSFW policy give both `nsfw_channel` and `nsfw` (allow, block or default).")
    roles = list(current.train_role_ids)
    if everyone_may_train and add_train_role is not None:
        raise InvalidInput("Give either `everyone_may_train` or `add_train_role`, not both.")
    if everyone_may_train:
        roles = []
        said.append("everyone may train")
    if add_train_role is not None and add_train_role not in roles:
        roles.append(add_train_role)
        said.append(f"<@&{add_train_role}> may train")
    if remove_train_role is not None and remove_train_role in roles:
        roles.remove(remove_train_role)
        said.append(f"<@&{remove_train_role}> may no longer train")
    if roles != list(current.train_role_ids):
        changes["train_role_ids"] = roles
    if nsfw_channel is not None and nsfw is not None:
        policy = dict(current.nsfw_policy)
        if nsfw == "default":
            policy.pop(str(nsfw_channel), None)
        else:
            policy[str(nsfw_channel)] = nsfw
        changes["nsfw_policy"] = policy
        said.append(f"NSFW in <#{nsfw_channel}> → {nsfw}")
    if best_of is not None:
        if not 1 <= best_of <= limits.BEST_OF_MAX:
            raise InvalidInput(f"Best-of-N must be between 1 (off) and {limits.BEST_OF_MAX}.")
        changes["best_of"] = best_of
        said.append("best-of-N → " + ("off" if best_of == 1 else f"{best_of} candidates per image"))
    if changes:
        current = await db.update_guild_settings(guild_id, **changes)
        log.info("guild %s: settings changed: %s", guild_id, sorted(changes))
    return current, said


class AdminCog(commands.Cog):
    kitbooth = app_commands.Group(name="kitbooth", description="KitBooth server settings (Manage Server).",
                                  guild_only=True, default_permissions=discord.Permissions(manage_guild=True))

    def __init__(self, bot: KitBoothBot) -> None:
        self.bot = bot

    @kitbooth.command(name="settings", description="Show or change quotas, who may train, and NSFW per channel.")
    @app_commands.describe(
        daily_quota=f"Images per user per day (0-{MAX_QUOTA})",
        reset_quota="Go back to the default daily quota",
        add_train_role="Allow this role to train a face (once any role is set, only those roles may)",
        remove_train_role="Stop this role from training",
        everyone_may_train="Let everyone train again (clears the role list)",
        nsfw_channel="The channel whose NSFW policy to set",
        nsfw="allow, block, or default (only channels marked NSFW allow it)",
        best_of=f"Candidates per image shown, the closest to the member's face kept (1 = off, up to "
                f"{limits.BEST_OF_MAX})",
    )
    async def settings(
        self, interaction: discord.Interaction,
        daily_quota: app_commands.Range[int, 0, MAX_QUOTA] | None = None,
        reset_quota: bool = False,
        add_train_role: discord.Role | None = None,
        remove_train_role: discord.Role | None = None,
        everyone_may_train: bool = False,
        nsfw_channel: discord.TextChannel | None = None,
        nsfw: NsfwChoice | None = None,
        best_of: app_commands.Range[int, 1, limits.BEST_OF_MAX] | None = None,
    ) -> None:
        catalogue.require_manager(interaction)
        services: Services = interaction.client.services  # type: ignore[attr-defined]
        if add_train_role is not None and add_train_role.is_default():
            raise InvalidInput("@everyone can always train unless roles are set — use `everyone_may_train`.")
        new, said = await apply_settings(
            services, interaction.guild_id, daily_quota=daily_quota, reset_quota=reset_quota,
            add_train_role=add_train_role.id if add_train_role else None,
            remove_train_role=remove_train_role.id if remove_train_role else None,
            everyone_may_train=everyone_may_train, nsfw_channel=nsfw_channel.id if nsfw_channel else None,
            nsfw=nsfw, best_of=best_of,
        )
        head = ("✅ Updated: " + "; ".join(said)) if said else "Current settings:"
        await interaction.response.send_message(
            head, embed=render(new, services.settings.daily_quota, interaction.guild), ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )

    @kitbooth.command(name="cancel", description="Cancel a member's queued and running jobs in this server.")
    @app_commands.describe(member="Whose jobs to cancel", job="Only this job (its number, from /queue)")
    async def cancel_jobs(self, interaction: discord.Interaction, member: discord.Member,
                          job: app_commands.Range[int, 1] | None = None) -> None:
        catalogue.require_manager(interaction)
        services: Services = interaction.client.services  # type: ignore[attr-defined]
        rows = [j for j in await services.db.active_jobs(member.id)
                if j.guild_id == interaction.guild_id and (job is None or j.id == job)]
        if not rows:
            which = f"job {job}" if job is not None else "jobs"
            raise NotFound(f"{member.display_name} has no queued or running {which} in this server — "
                           "`/queue` shows a member's own jobs.")
        report = await cancel.cancel_user(services, member.id, [j.id for j in rows], reason="cancelled by a moderator")
        log.info("guild %s: %s cancelled %d job(s) of user %s", interaction.guild_id, interaction.user.id,
                 report.cancelled, member.id)
        await interaction.response.send_message(
            f"🛑 Cancelled {report.cancelled} job{'s' * (report.cancelled != 1)} of {member.mention}: "
            f"{len(report.removed)} removed from the queue, {len(report.aborting)} stopping at their next step.",
            ephemeral=True, allowed_mentions=discord.AllowedMentions.none(),
        )


    @kitbooth.command(name="allow-lookalike",
                      description="Let two members who look alike (twins) each train their own face.")
    @app_commands.describe(member="The member whose /train was refused as looking like someone else",
                           lookalike="The member they look like")
    async def allow_lookalike(self, interaction: discord.Interaction, member: discord.Member,
                              lookalike: discord.Member) -> None:
        catalogue.require_manager(interaction)
        services: Services = interaction.client.services  # type: ignore[attr-defined]
        if member.id == lookalike.id:
            raise InvalidInput("Name two different members: the one who was refused and the one they look like.")
        if member.bot or lookalike.bot:
            raise InvalidInput("Bots have no face to train — name two members.")
        await services.db.allow_lookalike(interaction.guild_id, member.id, lookalike.id, by=interaction.user.id)
        log.info("guild %s: %s allowed look-alikes %s and %s", interaction.guild_id, interaction.user.id,
                 member.id, lookalike.id)
        await interaction.response.send_message(
            f"✅ {member.mention} and {lookalike.mention} may each train their own face on this server, even though "
            "they look alike. Ask them to run /train here.",
            ephemeral=True, allowed_mentions=discord.AllowedMentions.none(),
        )


async def setup(bot: KitBoothBot) -> None:
    await bot.add_cog(AdminCog(bot))
