"""The squad photo's persistent buttons (``discord.ui.DynamicItem``: all state in the custom_id, so they keep
working after a restart). Torch-free.

* Invitation: ``kbsq:<a|n>:<squad id>:<member id>:<token>`` — Approve / Decline. Only the member named may press
  it, and only with the random token their membership row holds: a custom id forged with another squad id,
  another member or a guessed token matches no row and is refused (``bot.squads.answer``).
* Result: ``kbsq:d:<job id>`` (``contract.SQUAD_DELETE_TEMPLATE``) — Delete, for every member in the picture
  (membership read from the DB, never from the id).
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import TYPE_CHECKING

import discord

from bot import errors, squads
from bot.squad_forget import delete_files
from bot.squad_texts import guild_locale, refusal, t
from bot.translator import locale_of
from gpu_worker import contract
from kitbooth.errors import NotAllowed, NotFound
from kitbooth.i18n import ENGLISH, translate

if TYPE_CHECKING:
    from bot.services import Services

log = logging.getLogger(__name__)

INVITE_TEMPLATE = r"kbsq:(?P<action>[an]):(?P<squad>\d+):(?P<member>\d+):(?P<token>[0-9a-f]{16})"


def _services(interaction: discord.Interaction) -> Services:
    return interaction.client.services  # type: ignore[attr-defined]


class InviteButton(discord.ui.DynamicItem[discord.ui.Button], template=re.compile(INVITE_TEMPLATE)):
    def __init__(self, action: str, squad_id: int, member_id: int, token: str, locale: str = ENGLISH) -> None:
        label, style = ((t("squad.button_approve", locale), discord.ButtonStyle.success) if action == "a"
                        else (t("squad.button_decline", locale), discord.ButtonStyle.secondary))
        super().__init__(discord.ui.Button(label=label, style=style,
                                           custom_id=f"kbsq:{action}:{squad_id}:{member_id}:{token}"))
        self.action, self.squad_id, self.member_id, self.token = action, squad_id, member_id, token

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> InviteButton:
        return cls(match["action"], int(match["squad"]), int(match["member"]), match["token"])

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        if interaction.user.id != self.member_id:
            log.warning("squad %s: user %s pressed the invitation of user %s", self.squad_id, interaction.user.id,
                        self.member_id)
            await errors.reply(interaction, t("refusal.squad_not_yours", locale_of(interaction), member=self.member_id))
            return False
        return True

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            approve = self.action == "a"
            await squads.answer(_services(interaction), interaction.client, self.squad_id, self.member_id,
                                self.token, approve=approve)
            text = t("squad.approved_by" if approve else "squad.declined_by",
                     guild_locale(interaction.client, interaction.guild_id), member=squads.mention(self.member_id))
            await interaction.response.edit_message(content=text, view=None)
        except Exception as exc:  # DynamicItem callbacks have no error hook of their own
            await errors.handle_interaction_error(interaction, exc, where="squad invitation")


def invite_view(squad_id: int, member_id: int, token: str, locale: str = ENGLISH) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in ("a", "n"):
        view.add_item(InviteButton(action, squad_id, member_id, token, locale))
    return view


class SquadDeleteButton(discord.ui.DynamicItem[discord.ui.Button],
                        template=re.compile(contract.SQUAD_DELETE_TEMPLATE)):
    def __init__(self, job_id: int) -> None:
        super().__init__(discord.ui.Button(label=translate("button.delete"), style=discord.ButtonStyle.danger,
                                           custom_id=contract.squad_delete_id(job_id)))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> SquadDeleteButton:
        return cls(int(match["job_id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            services = _services(interaction)
            squad = await services.db.squad_of_job(self.job_id)
            job = await services.db.get_job(self.job_id)
            if squad is None or job is None:
                raise refusal(NotFound, "refusal.squad_gone")
            if interaction.user.id not in {m.user_id for m in await services.db.squad_members(squad.id)}:
                raise refusal(NotAllowed, "refusal.squad_not_member")
            await interaction.response.defer()
            n = await delete_files(services, job)
            if interaction.message is not None:
                with contextlib.suppress(discord.NotFound):
                    await interaction.message.delete()
                await services.db.forget_message(interaction.message.channel.id, interaction.message.id)
            log.info("squad %s: member %s deleted the picture (%d files)", squad.id, interaction.user.id, n)
            await interaction.followup.send(t("squad.deleted", locale_of(interaction)), ephemeral=True)
        except Exception as exc:
            await errors.handle_interaction_error(interaction, exc, where="squad delete")


DYNAMIC_ITEMS = (InviteButton, SquadDeleteButton)
