"""/me, /forget and /export: what KitBooth holds about you, deleting all of it, and taking your concept along.

The /forget confirmation is a persistent ``DynamicItem`` (``kbf:<action>:<owner>:<issued epoch>``): it keeps
working after a restart, only its owner can press it, and it expires after ``CONFIRM_TTL_S``.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import discord
from discord import app_commands, ui
from discord.ext import commands

from bot import errors, forget, jobs, quotas
from kitbooth.errors import NotFound

if TYPE_CHECKING:
    from bot.app import KitBoothBot
    from bot.services import Services
    from storage.database import Concept

log = logging.getLogger(__name__)

CONFIRM_TTL_S = 10 * 60
FORGET_TEMPLATE = r"kbf:(?P<action>yes|no):(?P<owner>\d+):(?P<issued>\d+)"
FORGET_PROMPT = (
    "⚠️ **Forget me** deletes everything KitBooth holds about you, everywhere: queued and running jobs, your "
    "photos, your trained face, your generated images (and the bot's messages that show them), your exports and "
    "every record of you. This cannot be undone.\n\nPress **Delete everything** to confirm."
)
NOT_YOURS = "This button belongs to someone else — run `/forget` yourself to delete your own data."


def _services(interaction: discord.Interaction) -> Services:
    return interaction.client.services  # type: ignore[attr-defined]


class ForgetButton(ui.DynamicItem[ui.Button], template=re.compile(FORGET_TEMPLATE)):
    def __init__(self, action: str, owner_id: int, issued: int) -> None:
        label, style = (("Delete everything", discord.ButtonStyle.danger) if action == "yes"
                        else ("Cancel", discord.ButtonStyle.secondary))
        super().__init__(ui.Button(label=label, style=style, custom_id=f"kbf:{action}:{owner_id}:{issued}"))
        self.action, self.owner_id, self.issued = action, owner_id, issued

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: ui.Button, match: re.Match[str], /
                             ) -> ForgetButton:
        return cls(match["action"], int(match["owner"]), int(match["issued"]))

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        if interaction.user.id != self.owner_id:
            log.warning("forget: user %s pressed the /forget button of user %s", interaction.user.id, self.owner_id)
            await errors.reply(interaction, NOT_YOURS)
            return False
        return True

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            if self.action == "no":
                await interaction.response.edit_message(content="Nothing was deleted.", view=None)
                return
            if time.time() - self.issued > CONFIRM_TTL_S:
                await interaction.response.edit_message(
                    content="This confirmation expired — run `/forget` again.", view=None)
                return
            # Acknowledge at once (the deletion can take a few seconds), then report.
            await interaction.response.edit_message(content="🧹 Deleting everything of yours…", view=None)
            report = await forget.forget_user(_services(interaction), self.owner_id, client=interaction.client)
            text = "✅ Done. KitBooth no longer holds anything of yours. Deleted:\n" + "\n".join(report.lines())
            if report.still_running:
                text += ("\n\nA job of yours was running; it stops at its next step and anything it writes "
                         "is discarded.")
            await interaction.edit_original_response(content=text)
        except Exception as exc:  # DynamicItem callbacks have no error hook of their own
            await errors.handle_interaction_error(interaction, exc, where="/forget confirm")


def forget_view(owner_id: int, issued: int | None = None) -> ui.View:
    issued = int(time.time()) if issued is None else issued
    view = ui.View(timeout=None)
    view.add_item(ForgetButton("yes", owner_id, issued))
    view.add_item(ForgetButton("no", owner_id, issued))
    return view


# --- /me --------------------------------------------------------------------------------------------
def _when(iso: str | None) -> str:
    if not iso:
        return "?"
    try:
        return discord.utils.format_dt(datetime.fromisoformat(iso).astimezone(UTC), "R")
    except ValueError:
        return iso


async def face_status(services: Services, user_id: int) -> str:
    faces: list[Concept] = await services.db.list_concepts(owner_id=user_id, kind="face")
    ready = await services.db.ready_face(user_id)
    latest = faces[-1] if faces else None
    lines = []
    if ready is not None:
        size = f"{ready.size_bytes / 1e6:.1f} MB" if ready.size_bytes else "?"
        lines.append(f"✅ Your face is ready (trained {_when(ready.updated_at)}, {size}, {ready.method}).")
    if latest is not None and latest.status in ("pending", "training"):
        active = [j for j in await services.db.active_jobs(user_id) if j.kind == "train"
                  and j.concept_id == latest.id]
        if active and active[0].status == "running":
            where = f"training now (started {_when(active[0].started_at)})"
        elif active:
            info = await jobs.queue_position(services, active[0])
            where = jobs.format_queue(info)
        else:
            where = "waiting for the worker"
        prefix = "🔄 A new training is" if ready is not None else "🏋️ Your face is"
        lines.append(f"{prefix} {where}.")
    elif latest is not None and latest.status == "failed" and ready is None:
        lines.append(f"❌ Your last training failed: {latest.error or 'unknown error'}. Try `/train` again.")
    if not lines:
        lines.append("You haven't trained your face yet — `/train` with 4-10 selfies.")
    return "\n".join(lines)


async def recent_images(services: Services, user_id: int, limit: int = 5) -> str:
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
            link = f" — [open](https://discord.com/channels/{job.guild_id}/{job.channel_id}/{job.message_id})"
        lines.append(f"• {n} image{'s' * (n != 1)} {_when(job.created_at)}: “{prompt}”{link}")
    return "\n".join(lines) or "None yet — `/generate` once your face is ready."


class PrivacyCog(commands.Cog):
    def __init__(self, bot: KitBoothBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(ForgetButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(ForgetButton)

    @app_commands.command(name="me", description="Your face's training status, images left today and recent images.")
    async def me(self, interaction: discord.Interaction) -> None:
        services = _services(interaction)
        user_id = interaction.user.id
        await interaction.response.defer(ephemeral=True, thinking=True)
        left, quota = await quotas.images_left(services, user_id, interaction.guild_id)
        active = await services.db.active_jobs(user_id)
        embed = discord.Embed(title="You and KitBooth", colour=discord.Colour.blurple())
        embed.add_field(name="Face", value=await face_status(services, user_id), inline=False)
        embed.add_field(name="Today", value=f"{left} of {quota} images left (resets 00:00 UTC)", inline=True)
        embed.add_field(name="Jobs", value=f"{len(active)} queued or running (`/queue`)", inline=True)
        embed.add_field(name="Recent images", value=await recent_images(services, user_id), inline=False)
        user = await services.db.get_user(user_id)
        consent = f"consent to face training given {_when(user.consent_at)}" if user and user.consent_at else \
            "no consent on record"
        embed.set_footer(text=f"{consent} · /export to take your face along · /forget deletes everything")
        await interaction.followup.send(embed=embed, ephemeral=True)

    @app_commands.command(name="forget", description="Delete everything KitBooth holds about you.")
    async def forget_cmd(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(FORGET_PROMPT, view=forget_view(interaction.user.id),
                                                ephemeral=True)

    @app_commands.command(name="export", description="Get your trained face as A1111/kohya files by DM.")
    async def export(self, interaction: discord.Interaction) -> None:
        services = _services(interaction)
        if await services.db.ready_face(interaction.user.id) is None:
            raise NotFound("You have no trained face to export yet — run `/train` first (`/me` shows its status).")
        await interaction.response.defer(ephemeral=True, thinking=True)
        job = await forget.start_export(services, interaction)
        info = await jobs.queue_position(services, job)
        await interaction.followup.send(
            f"📦 Export queued ({jobs.format_queue(info)}). Your files (AUTOMATIC1111 and kohya formats) will "
            "arrive by DM — make sure DMs from server members are allowed.", ephemeral=True)


async def setup(bot: KitBoothBot) -> None:
    await bot.add_cog(PrivacyCog(bot))
