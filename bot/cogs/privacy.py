"""/me, /forget and /export: what KitBooth holds about you, deleting all of it, and taking your concept along.

The /forget confirmation is a persistent ``DynamicItem`` (``kbf:<action>:<owner>:<issued epoch>``): it keeps
working after a restart, only its owner can press it, and it expires after ``CONFIRM_TTL_S``.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands, ui
from discord.ext import commands

from bot import errors, forget, jobs, quotas
from bot import squads as squad_rules
from bot.translator import locale_of, tr
from kitbooth.errors import NotFound
from kitbooth.i18n import keyed, translate

if TYPE_CHECKING:
    from bot.app import KitBoothBot
    from bot.services import Services
    from storage.database import Concept

log = logging.getLogger(__name__)

CONFIRM_TTL_S = 10 * 60
FORGET_TEMPLATE = r"kbf:(?P<action>yes|no):(?P<owner>\d+):(?P<issued>\d+)"
FORGET_PROMPT = (  # forget.prompt in English; the member reads it in their language
    "⚠️ **Forget me** deletes everything KitBooth holds about you, everywhere: queued and running jobs, your "
    "photos, your trained face, your generated images (and the bot's messages that show them), your exports and "
    "every record of you. This cannot be undone.\n\nPress **Delete everything** to confirm."
)
NOT_YOURS = "This button belongs to someone else — run `/forget` yourself to delete your own data."


def _services(interaction: discord.Interaction) -> Services:
    return interaction.client.services  # type: ignore[attr-defined]


class ForgetButton(ui.DynamicItem[ui.Button], template=re.compile(FORGET_TEMPLATE)):
    def __init__(self, action: str, owner_id: int, issued: int, locale: str = "en-US") -> None:
        label, style = ((translate("forget.button_yes", locale), discord.ButtonStyle.danger) if action == "yes"
                        else (translate("forget.button_no", locale), discord.ButtonStyle.secondary))
        super().__init__(ui.Button(label=label, style=style, custom_id=f"kbf:{action}:{owner_id}:{issued}"))
        self.action, self.owner_id, self.issued = action, owner_id, issued

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: ui.Button, match: re.Match[str], /
                             ) -> ForgetButton:
        return cls(match["action"], int(match["owner"]), int(match["issued"]))

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        if interaction.user.id != self.owner_id:
            log.warning("forget: user %s pressed the /forget button of user %s", interaction.user.id, self.owner_id)
            await errors.reply(interaction, tr(interaction, "refusal.forget_not_yours"))
            return False
        return True

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            if self.action == "no":
                await interaction.response.edit_message(content=tr(interaction, "forget.nothing_deleted"), view=None)
                return
            if time.time() - self.issued > CONFIRM_TTL_S:
                await interaction.response.edit_message(
                    content=tr(interaction, "forget.expired"), view=None)
                return
            # Acknowledge at once (the deletion can take a few seconds), then report.
            await interaction.response.edit_message(content=tr(interaction, "forget.deleting"), view=None)
            report = await forget.forget_user(_services(interaction), self.owner_id, client=interaction.client)
            locale = locale_of(interaction)
            text = tr(interaction, "forget.done") + "\n" + "\n".join(report.lines(locale))
            if report.still_running:
                text += "\n\n" + tr(interaction, "forget.still_running")
            await interaction.edit_original_response(content=text)
        except Exception as exc:  # DynamicItem callbacks have no error hook of their own
            await errors.handle_interaction_error(interaction, exc, where="/forget confirm")


def forget_view(owner_id: int, issued: int | None = None, locale: str = "en-US") -> ui.View:
    issued = int(time.time()) if issued is None else issued
    view = ui.View(timeout=None)
    view.add_item(ForgetButton("yes", owner_id, issued, locale))
    view.add_item(ForgetButton("no", owner_id, issued, locale))
    return view


# --- /me --------------------------------------------------------------------------------------------
def _when(iso: str | None) -> str:
    if not iso:
        return "?"
    try:
        return discord.utils.format_dt(datetime.fromisoformat(iso).astimezone(UTC), "R")
    except ValueError:
        return iso


async def face_status(services: Services, user_id: int, locale: str = "en-US") -> str:
    faces: list[Concept] = await services.db.list_concepts(owner_id=user_id, kind="face")
    ready = await services.db.ready_face(user_id)
    latest = faces[-1] if faces else None
    lines = []
    if ready is not None:
        size = translate("ready.megabytes", locale, size=ready.size_bytes / 1e6) if ready.size_bytes else "?"
        lines.append(translate("me.face_ready", locale, when=_when(ready.updated_at), size=size, method=ready.method))
    if latest is not None and latest.status in ("pending", "training"):
        active = [j for j in await services.db.active_jobs(user_id) if j.kind == "train"
                  and j.concept_id == latest.id]
        if active and active[0].status == "running":
            where = translate("me.training_now", locale, when=_when(active[0].started_at))
        elif active:
            info = await jobs.queue_position(services, active[0])
            where = jobs.format_queue(info, locale)
        else:
            where = translate("me.waiting_for_worker", locale)
        key = "me.new_training_is" if ready is not None else "me.face_is"
        lines.append(translate(key, locale, where=where))
    elif latest is not None and latest.status == "failed" and ready is None:
        lines.append(translate("me.last_training_failed", locale,
                               error=latest.error or translate("me.unknown_error", locale)))
    if not lines:
        lines.append(translate("me.no_face", locale))
    return "\n".join(lines)


async def recent_images(services: Services, user_id: int, limit: int = 5, locale: str = "en-US") -> str:
    outputs = await services.db.list_outputs(user_id=user_id, limit=50)
    by_job: dict[int, int] = {}
    for o in outputs:
        by_job[o.job_id] = by_job.get(o.job_id, 0) + 1
    lines = []
    for job_id, n in list(by_job.items())[:limit]:
        job = await services.db.get_job(job_id)
        if job is None:
            continue
        prompt = str(job.payload.get("prompt", ""))[:60]
        link = ""
        if job.guild_id and job.channel_id and job.message_id:
            link = " — [" + translate("me.open", locale) + \
                f"](https://discord.com/channels/{job.guild_id}/{job.channel_id}/{job.message_id})"
        lines.append(translate("me.recent_line", locale, count=n, when=_when(job.created_at), prompt=prompt) + link)
    return "\n".join(lines) or translate("me.no_images", locale)


class PrivacyCog(commands.Cog):
    def __init__(self, bot: KitBoothBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(ForgetButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(ForgetButton)

    @app_commands.command(name="me", description="Your face's training status, images left today and recent images.")
    @app_commands.describe(squads="Let members name you in /squad photos", block="Stop this member naming you in "
                           "/squad", unblock="Let this member name you in /squad again")
    async def me(self, interaction: discord.Interaction, squads: Literal["on", "off"] | None = None,
                 block: discord.Member | None = None, unblock: discord.Member | None = None) -> None:
        services = _services(interaction)
        user_id = interaction.user.id
        if squads is not None or block is not None or unblock is not None:  # squad settings (bot.squads)
            text = await squad_rules.apply_settings(services, user_id, invitations=squads, block=block,
                                                    unblock=unblock, locale=locale_of(interaction))
            await interaction.response.send_message(text, ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        left, quota = await quotas.images_left(services, user_id, interaction.guild_id)
        active = await services.db.active_jobs(user_id)
        loc = locale_of(interaction)
        embed = discord.Embed(title=translate("me.title", loc), colour=discord.Colour.blurple())
        embed.add_field(name=translate("me.face", loc), value=await face_status(services, user_id, loc), inline=False)
        embed.add_field(name=translate("me.today", loc), value=translate("me.images_left", loc, left=left,
                                                                          quota=quota), inline=True)
        embed.add_field(name=translate("me.jobs", loc), value=translate("me.jobs_active", loc, count=len(active)),
                        inline=True)
        embed.add_field(name=translate("me.recent", loc), value=await recent_images(services, user_id, locale=loc),
                        inline=False)
        user = await services.db.get_user(user_id)
        consent = translate("me.consent_given", loc, when=_when(user.consent_at)) if user and user.consent_at \
            else translate("me.no_consent", loc)
        embed.set_footer(text=translate("me.footer", loc, consent=consent))
        await interaction.followup.send(embed=embed, ephemeral=True)

    @app_commands.command(name="forget", description="Delete everything KitBooth holds about you.")
    async def forget_cmd(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(tr(interaction, "forget.prompt"),
                                                view=forget_view(interaction.user.id, locale=locale_of(interaction)),
                                                ephemeral=True)

    @app_commands.command(name="export", description="Get your trained face as A1111/kohya files by DM.")
    async def export(self, interaction: discord.Interaction) -> None:
        services = _services(interaction)
        if await services.db.ready_face(interaction.user.id) is None:
            raise keyed(NotFound, "refusal.nothing_to_export")
        await interaction.response.defer(ephemeral=True, thinking=True)
        job = await forget.start_export(services, interaction)
        info = await jobs.queue_position(services, job)
        await interaction.followup.send(
            tr(interaction, "export.queued", queue=jobs.format_queue(info, locale_of(interaction))), ephemeral=True)


async def setup(bot: KitBoothBot) -> None:
    await bot.add_cog(PrivacyCog(bot))
