"""/train: teach KitBooth your face from 4-10 selfies (a modal with a file upload, or attachment options)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands, ui
from discord.ext import commands

from bot import errors, training_flow
from kitbooth.errors import UserFacingError

if TYPE_CHECKING:
    from bot.app import KitBoothBot

log = logging.getLogger(__name__)

CONSENT_LABEL = "Photos are of me; I consent to face training"  # Discord caps labels at 45 characters
CONSENT_HELP = "Only face crops are kept, deleted after training. /forget removes everything of yours."


class TrainModal(ui.Modal, title="Teach KitBooth your face"):
    photos = ui.Label(
        text="Selfies (4-10)",
        description="Clear, front-facing photos of just you — different days, light and angles.",
        component=ui.FileUpload(custom_id="photos", min_values=1, max_values=10),
    )
    consent = ui.Label(
        text=CONSENT_LABEL,
        description=CONSENT_HELP,
        component=ui.Select(
            custom_id="consent",
            placeholder="Choose…",
            options=[
                discord.SelectOption(label="Yes — these are photos of me and I consent", value="yes"),
                discord.SelectOption(label="No", value="no"),
            ],
        ),
    )

    def __init__(self, bot: KitBoothBot):
        super().__init__(timeout=15 * 60)
        self.bot = bot

    async def on_submit(self, interaction: discord.Interaction) -> None:
        # Acknowledge first: everything below may take longer than Discord's 3 seconds.
        await interaction.response.defer(ephemeral=True, thinking=True)
        consent = self.consent.component.values == ["yes"]  # type: ignore[attr-defined]
        attachments = list(self.photos.component.values)  # type: ignore[attr-defined]
        try:
            await run_training(self.bot, interaction, attachments, consent=consent)
        except UserFacingError as exc:  # an expected refusal, not an incident
            await errors.reply(interaction, str(exc))

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await errors.handle_interaction_error(interaction, error, where="/train (modal)")


async def run_training(bot: KitBoothBot, interaction: discord.Interaction,
                       attachments: list[discord.Attachment], *, consent: bool) -> None:
    """The one implementation behind the modal and the attachment options (interaction already deferred)."""
    services = bot.services
    uploads = await training_flow.read_attachments(attachments, services.settings.max_upload_bytes)
    await training_flow.start_training(services, interaction, uploads, kind="face", consent=consent)


class TrainCog(commands.Cog):
    def __init__(self, bot: KitBoothBot) -> None:
        self.bot = bot

    @app_commands.command(name="train", description="Teach KitBooth your face from 4-10 selfies.")
    @app_commands.describe(
        photo1="A selfie (leave all photos empty to get an upload form)",
        consent="These are photos of me and I consent to KitBooth learning my face",
    )
    async def train(
        self,
        interaction: discord.Interaction,
        photo1: discord.Attachment | None = None,
        photo2: discord.Attachment | None = None,
        photo3: discord.Attachment | None = None,
        photo4: discord.Attachment | None = None,
        photo5: discord.Attachment | None = None,
        photo6: discord.Attachment | None = None,
        photo7: discord.Attachment | None = None,
        photo8: discord.Attachment | None = None,
        photo9: discord.Attachment | None = None,
        photo10: discord.Attachment | None = None,
        consent: bool | None = None,
    ) -> None:
        attachments = [a for a in (photo1, photo2, photo3, photo4, photo5, photo6, photo7, photo8, photo9,
                                   photo10) if a is not None]
        if not attachments:
            # Cheap guards first (milliseconds), so nobody fills in a form that will be refused.
            await training_flow.check_may_train(self.bot.services, interaction)
            await training_flow.check_not_training(self.bot.services, interaction.user.id)
            await interaction.response.send_modal(TrainModal(self.bot))
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        await run_training(self.bot, interaction, attachments, consent=bool(consent))


async def setup(bot: KitBoothBot) -> None:
    await bot.add_cog(TrainCog(bot))
