"""Persistent result buttons: U1-U4 (upscale), reroll, vary, delete. Torch-free.

Whoever posts a result (the worker, or ``bot.delivery``) draws its buttons from ``kitbooth.render.result_buttons``;
here every button is a ``discord.ui.DynamicItem`` matching ``contract.BUTTON_ID_TEMPLATE``: its custom_id carries
the job id, the image index and the owner, so buttons on old messages keep working after a restart. Only the
owner may use them; anyone else gets an ephemeral refusal. Reroll and vary build their request with
``bot.generate_request``, exactly as ``/generate`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import TYPE_CHECKING, Any

import discord

from bot import errors, jobs, quotas
from bot.generate_request import describe, enqueue_generate, request_from_payload, require_own_face
from bot.translator import locale_of, tr
from gpu_worker import contract
from kitbooth.errors import NotAllowed, NotFound
from kitbooth.i18n import keyed
from storage import keys

if TYPE_CHECKING:
    from bot.services import Services
    from storage.database import Job

log = logging.getLogger(__name__)

NOT_YOURS = "These buttons belong to <@{owner}> — use /generate to make pictures of yourself."  # English text
_STYLES = {"upscale": discord.ButtonStyle.secondary, "reroll": discord.ButtonStyle.primary,
           "vary": discord.ButtonStyle.secondary, "delete": discord.ButtonStyle.danger}
_LABELS = {"reroll": "🔁 Reroll", "vary": "🎲 Vary", "delete": "🗑 Delete"}


def _label(bid: contract.ButtonId) -> str:
    return f"U{bid.index + 1}" if bid.action == "upscale" else _LABELS[bid.action]


class ResultButton(discord.ui.DynamicItem[discord.ui.Button], template=re.compile(contract.BUTTON_ID_TEMPLATE)):
    def __init__(self, bid: contract.ButtonId, *, row: int | None = None) -> None:
        super().__init__(discord.ui.Button(label=_label(bid), style=_STYLES[bid.action], custom_id=bid.encode(),
                                           row=row))
        self.bid = bid

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str], /) -> ResultButton:
        bid = contract.parse_button_id(item.custom_id or "")
        if bid is None:
            raise ValueError(f"malformed result button id {item.custom_id!r}")
        return cls(bid)

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        if interaction.user.id != self.bid.owner_id:
            await errors.reply(interaction, tr(interaction, "refusal.buttons_not_yours", owner=str(self.bid.owner_id)))
            return False
        return True

    async def callback(self, interaction: discord.Interaction) -> None:
        services: Services = interaction.client.services  # type: ignore[attr-defined]
        try:
            await ACTIONS[self.bid.action](services, interaction, self.bid)
        except Exception as exc:  # DynamicItem callbacks have no error hook of their own
            await errors.handle_interaction_error(interaction, exc, where=f"button {self.bid.action}")


# --- actions -------------------------------------------------------------------------------------------
async def _own_job(services: Services, interaction: discord.Interaction, bid: contract.ButtonId) -> Job:
    job = await services.db.get_job(bid.job_id)
    if job is None:
        raise keyed(NotFound, "refusal.images_gone")
    if job.user_id != interaction.user.id:
        raise keyed(NotAllowed, "refusal.buttons_not_yours", owner=str(job.user_id))
    return job


async def output_keys(services: Services, job: Job) -> list[str]:
    rows = await services.db.list_outputs(job_id=job.id)
    found = [o.artifact_key for o in sorted(rows, key=lambda o: o.id)]
    if found:
        return found
    prefix = job.payload.get("output_prefix") or keys.outputs_prefix(job.user_id, job.id)
    return await asyncio.to_thread(services.store.list, prefix)


async def _source_key(services: Services, job: Job, index: int) -> str:
    found = await output_keys(services, job)
    if index >= len(found):
        raise keyed(NotFound, "refusal.image_unavailable")
    return found[index]


async def do_upscale(services: Services, interaction: discord.Interaction, bid: contract.ButtonId) -> None:
    job = await _own_job(services, interaction, bid)
    source = await _source_key(services, job, bid.index)
    await quotas.check_image_request(services, interaction.user.id, interaction.guild_id, 1)
    await interaction.response.defer(thinking=True)
    target = jobs.target_from_interaction(interaction)
    prompt = job.payload.get("prompt", "")
    seed = int(job.payload.get("seed", 0)) + bid.index

    def build(new: Job) -> contract.UpscalePayload:
        return contract.UpscalePayload(job_id=new.id, user_id=new.user_id, source_key=source,
                                       output_key=keys.output_key(new.user_id, new.id, 0), target=target,
                                       prompt=prompt, seed=seed)

    new, _ = await jobs.create_and_enqueue(
        services, kind="upscale", user_id=interaction.user.id, build_payload=build, guild_id=interaction.guild_id,
        channel_id=interaction.channel_id, interaction_id=interaction.id, concept_id=job.concept_id,
    )
    queue = await jobs.queue_position(services, new)
    sent = await interaction.followup.send(
        tr(interaction, "queued.upscale", index=bid.index + 1, queue=jobs.format_queue(queue, locale_of(interaction)),
           job_id=str(new.id)), wait=True)
    await jobs.record_echo(services, new, sent)  # /forget deletes it


async def _regenerate(services: Services, interaction: discord.Interaction, bid: contract.ButtonId, *,
                      vary: bool) -> None:
    job = await _own_job(services, interaction, bid)
    if job.kind not in ("generate", "vary", "reroll") or not job.payload:
        raise keyed(NotFound, "refusal.cannot_regenerate")
    old = contract.GeneratePayload.from_dict(job.payload)
    source = await _source_key(services, job, bid.index) if vary else None
    face = await require_own_face(services, interaction.user.id)  # always the clicker's own, current face
    await quotas.check_image_request(services, interaction.user.id, interaction.guild_id, old.count)
    await interaction.response.defer(thinking=True)
    req = request_from_payload(old)
    new, queue = await enqueue_generate(services, interaction, req, face, kind="vary" if vary else "reroll",
                                        variation_of=source)
    locale = locale_of(interaction)
    what = tr(interaction, "queued.variations", index=bid.index + 1) if vary else tr(interaction, "queued.reroll")
    sent = await interaction.followup.send(
        tr(interaction, "queued.regenerate", what=what, request=describe(req, locale),
           queue=jobs.format_queue(queue, locale), job_id=str(new.id)), wait=True)
    await jobs.record_echo(services, new, sent)  # /forget deletes it


async def do_reroll(services: Services, interaction: discord.Interaction, bid: contract.ButtonId) -> None:
    await _regenerate(services, interaction, bid, vary=False)


async def do_vary(services: Services, interaction: discord.Interaction, bid: contract.ButtonId) -> None:
    await _regenerate(services, interaction, bid, vary=True)


async def do_delete(services: Services, interaction: discord.Interaction, bid: contract.ButtonId) -> None:
    job = await _own_job(services, interaction, bid)
    await interaction.response.defer()
    found = set(await services.db.delete_outputs(job.id))
    prefix = job.payload.get("output_prefix") or keys.outputs_prefix(job.user_id, job.id)
    found |= set(await asyncio.to_thread(services.store.list, prefix))
    for key in found:
        await asyncio.to_thread(services.store.delete, key)
    if interaction.message is not None:
        with contextlib.suppress(discord.NotFound):
            await interaction.message.delete()
    log.info("job %s: user deleted the result (%d files)", job.id, len(found))
    await interaction.followup.send(tr(interaction, "result.deleted"), ephemeral=True)


ACTIONS: dict[str, Any] = {"upscale": do_upscale, "reroll": do_reroll, "vary": do_vary, "delete": do_delete}


def install(bot: discord.Client) -> None:
    """Register the dynamic item (idempotent; survives restarts because the state lives in the custom_id)."""
    bot.add_dynamic_items(ResultButton)  # type: ignore[attr-defined]


__all__ = ["ResultButton", "install"]
