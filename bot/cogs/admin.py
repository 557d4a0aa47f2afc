"""/kitbooth (Manage Server): ``settings`` — the daily image quota, which roles may train a face, NSFW per channel,
best-of-N, whether members may train their face with DreamBooth (without options it shows them; every option given is applied, then the result shown); ``cancel`` — stop
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
from bot.translator import locale_of, tr
from kitbooth import limits
from kitbooth.errors import InvalidInput, NotFound
from kitbooth.i18n import keyed, translate

if TYPE_CHECKING:
    from bot.app import KitBoothBot
    from bot.services import Services
    from storage.database import GuildSettings

log = logging.getLogger(__name__)

MAX_QUOTA = 1000
NsfwChoice = Literal["allow", "block", "default"]


def render(settings: GuildSettings, default_quota: int, guild: discord.Guild | None,
           locale: str = "en-US") -> discord.Embed:
    def t(key: str, **fields: object) -> str:
        return translate(key, locale, **fields)

    e = discord.Embed(title=t("admin.title"), colour=discord.Colour.dark_teal())
    quota = (t("admin.quota", quota=settings.daily_quota) if settings.daily_quota is not None
             else t("admin.quota_default", quota=default_quota))
    e.add_field(name=t("admin.quota_field"), value=quota, inline=False)
    roles = settings.train_role_ids
    e.add_field(name=t("admin.roles_field"),
                value=", ".join(f"<@&{r}>" for r in roles) if roles else t("admin.everyone"), inline=False)
    policy = settings.nsfw_policy
    lines = [f"<#{cid}>: " + t("admin.allowed" if v == "allow" else "admin.blocked") for cid, v in sorted(policy.items())]
    e.add_field(name=t("admin.nsfw_field"), value="\n".join(lines + [t("admin.nsfw_other")])[:1024], inline=False)
    best = settings.best_of if settings.best_of is not None else DEFAULT_BEST_OF
    e.add_field(name=t("admin.best_of_field"),
                value=(t("admin.off") if best <= 1 else t("admin.best_of", count=best, limit=limits.CANDIDATES_MAX))
                + (t("admin.default_suffix") if settings.best_of is None else ""), inline=False)
    e.add_field(name=t("admin.dreambooth_field"),
                value=t("admin.allowed") if settings.allow_dreambooth else t("admin.off") + t("admin.default_suffix"),
                inline=False)
    return e


async def apply_settings(
    services: Services, guild_id: int, *, daily_quota: int | None = None, reset_quota: bool = False,
    add_train_role: int | None = None, remove_train_role: int | None = None, everyone_may_train: bool = False,
    nsfw_channel: int | None = None, nsfw: NsfwChoice | None = None, best_of: int | None = None,
    allow_dreambooth: bool | None = None, locale: str = "en-US",
) -> tuple[GuildSettings, list[str]]:
    """Validate every option first, then write once; returns the new settings and what changed (in ``locale``)."""
    def t(key: str, **fields: object) -> str:
        return translate(key, locale, **fields)

    db = services.db
    current = await db.guild_settings(guild_id)
    changes: dict = {}
    said: list[str] = []
    if daily_quota is not None and reset_quota:
        raise keyed(InvalidInput, "admin.refusal.quota_or_reset")
    if daily_quota is not None:
        if not 0 <= daily_quota <= MAX_QUOTA:
            raise keyed(InvalidInput, "admin.refusal.quota_range", limit=MAX_QUOTA)
        changes["daily_quota"] = daily_quota
        said.append(t("admin.said.quota", quota=daily_quota))
    elif reset_quota:
        changes["daily_quota"] = None
        said.append(t("admin.said.quota_default", quota=services.settings.daily_quota))
    if (nsfw is None) != (nsfw_channel is None):
        raise keyed(InvalidInput, "admin.refusal.nsfw_both")
    roles = list(current.train_role_ids)
    if everyone_may_train and add_train_role is not None:
        raise keyed(InvalidInput, "admin.refusal.everyone_or_role")
    if everyone_may_train:
        roles = []
        said.append(t("admin.said.everyone"))
    if add_train_role is not None and add_train_role not in roles:
        roles.append(add_train_role)
        said.append(t("admin.said.role_may", role=f"<@&{add_train_role}>"))
    if remove_train_role is not None and remove_train_role in roles:
        roles.remove(remove_train_role)
        said.append(t("admin.said.role_may_not", role=f"<@&{remove_train_role}>"))
    if roles != list(current.train_role_ids):
        changes["train_role_ids"] = roles
    if nsfw_channel is not None and nsfw is not None:
        policy = dict(current.nsfw_policy)
        if nsfw == "default":
            policy.pop(str(nsfw_channel), None)
        else:
            policy[str(nsfw_channel)] = nsfw
        changes["nsfw_policy"] = policy
        said.append(t("admin.said.nsfw", channel=f"<#{nsfw_channel}>", policy=t(f"choice.{nsfw}.name")))
    if best_of is not None:
        if not 1 <= best_of <= limits.BEST_OF_MAX:
            raise keyed(InvalidInput, "admin.refusal.best_of_range", limit=limits.BEST_OF_MAX)
        changes["best_of"] = best_of
        said.append(t("admin.said.best_of", value=t("admin.off") if best_of == 1 else
                      t("admin.said.candidates", count=best_of)))
    if allow_dreambooth is not None:
        changes["allow_dreambooth"] = allow_dreambooth
        said.append(t("admin.said.dreambooth", value=t("admin.allowed") if allow_dreambooth else t("admin.off")))
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
        allow_dreambooth="Let members train their face with DreamBooth, the heaviest method (default off)",
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
        allow_dreambooth: bool | None = None,
    ) -> None:
        catalogue.require_manager(interaction)
        services: Services = interaction.client.services  # type: ignore[attr-defined]
        if add_train_role is not None and add_train_role.is_default():
            raise keyed(InvalidInput, "admin.refusal.everyone_role")
        new, said = await apply_settings(
            services, interaction.guild_id, daily_quota=daily_quota, reset_quota=reset_quota,
            add_train_role=add_train_role.id if add_train_role else None,
            remove_train_role=remove_train_role.id if remove_train_role else None,
            everyone_may_train=everyone_may_train, nsfw_channel=nsfw_channel.id if nsfw_channel else None,
            nsfw=nsfw, best_of=best_of, allow_dreambooth=allow_dreambooth, locale=locale_of(interaction),
        )
        head = tr(interaction, "admin.updated", changes="; ".join(said)) if said else tr(interaction, "admin.current")
        await interaction.response.send_message(
            head, embed=render(new, services.settings.daily_quota, interaction.guild, locale_of(interaction)),
            ephemeral=True,
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
            raise keyed(NotFound, "admin.refusal.no_jobs" if job is None else "admin.refusal.no_such_job",
                        member=member.display_name, job=str(job))
        report = await cancel.cancel_user(services, member.id, [j.id for j in rows], reason="cancelled by a moderator")
        log.info("guild %s: %s cancelled %d job(s) of user %s", interaction.guild_id, interaction.user.id,
                 report.cancelled, member.id)
        await interaction.response.send_message(
            tr(interaction, "admin.cancelled", count=report.cancelled, member=member.mention,
               removed=len(report.removed), stopping=len(report.aborting)),
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
            raise keyed(InvalidInput, "admin.refusal.same_member")
        if member.bot or lookalike.bot:
            raise keyed(InvalidInput, "admin.refusal.bots")
        await services.db.allow_lookalike(interaction.guild_id, member.id, lookalike.id, by=interaction.user.id)
        log.info("guild %s: %s allowed look-alikes %s and %s", interaction.guild_id, interaction.user.id,
                 member.id, lookalike.id)
        await interaction.response.send_message(
            tr(interaction, "admin.lookalike_allowed", member=member.mention, lookalike=lookalike.mention),
            ephemeral=True, allowed_mentions=discord.AllowedMentions.none(),
        )


async def setup(bot: KitBoothBot) -> None:
    await bot.add_cog(AdminCog(bot))
