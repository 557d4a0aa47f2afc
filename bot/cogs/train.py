"""/train: teach KitBooth your face from 4-10 selfies (a modal with a file upload, or attachment options)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands, ui
from discord.ext import commands

from bot import errors, training_flow, training_methods
from bot.translator import error_text, locale_of
from kitbooth.errors import UserFacingError
from kitbooth.i18n import translate

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

    method: str | None = None  # the /train method option, applied on submit

    def __init__(self, bot: KitBoothBot, locale: str = "en-US"):
        super().__init__(timeout=15 * 60, title=translate("modal.train.title", locale))
        self.bot = bot
        # The member's language (the class attributes above are the English texts, as in the catalogue).
        self.photos.text = translate("modal.train.photos", locale)
        self.photos.description = translate("modal.train.photos_help", locale)
        self.consent.text = translate("modal.train.consent", locale)
        self.consent.description = translate("modal.train.consent_help", locale)
        select = self.consent.component
        select.placeholder = translate("modal.train.choose", locale)  # type: ignore[attr-defined]
        select.options = [  # type: ignore[attr-defined]
            discord.SelectOption(label=translate("modal.train.consent_yes", locale), value="yes"),
            discord.SelectOption(label=translate("modal.train.consent_no", locale), value="no"),
        ]

    async def on_submit(self, interaction: discord.Interaction) -> None:
        # Acknowledge first: everything below may take longer than Discord's 3 seconds.
        await interaction.response.defer(ephemeral=True, thinking=True)
        consent = self.consent.component.values == ["yes"]  # type: ignore[attr-defined]
        attachments = list(self.photos.component.values)  # type: ignore[attr-defined]
        try:
            await run_training(self.bot, interaction, attachments, consent=consent, method=self.method)
        except UserFacingError as exc:  # an expected refusal, not an incident
            await errors.reply(interaction, error_text(interaction, exc))

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await errors.handle_interaction_error(interaction, error, where="/train (modal)")


async def run_training(bot: KitBoothBot, interaction: discord.Interaction,
                       attachments: list[discord.Attachment], *, consent: bool, method: str | None = None) -> None:
    """The one implementation behind the modal and the attachment options (interaction already deferred)."""
    services = bot.services
    uploads = await training_flow.read_attachments(attachments, services.settings.max_upload_bytes)
    await training_flow.start_training(services, interaction, uploads, kind="face", consent=consent, method=method)


class TrainCog(commands.Cog):
    def __init__(self, bot: KitBoothBot) -> None:
        self.bot = bot

    @app_commands.command(name="train", description="Teach KitBooth your face from 4-10 selfies.")
    @app_commands.describe(
        photo1="A selfie (leave all photos empty to get an upload form)",
        consent="These are photos of me and I consent to KitBooth learning my face",
        method="Advanced: how to learn the face (default: pivotal tuning)",
    )
    @app_commands.choices(method=training_methods.choices("face"))
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
        method: str | None = None,
    ) -> None:
        attachments = [a for a in (photo1, photo2, photo3, photo4, photo5, photo6, photo7, photo8, photo9,
                                   photo10) if a is not None]
        if not attachments:
            # Cheap guards first (milliseconds), so nobody fills in a form that will be refused.
            await training_flow.check_may_train(self.bot.services, interaction)
            await training_flow.check_not_training(self.bot.services, interaction.user.id)
            await training_methods.method_for(self.bot.services, interaction.guild_id, "face", method)
            modal = TrainModal(self.bot, locale_of(interaction))
            modal.method = method
            await interaction.response.send_modal(modal)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        await run_training(self.bot, interaction, attachments, consent=bool(consent), method=method)


async def setup(bot: KitBoothBot) -> None:
    await bot.add_cog(TrainCog(bot))
