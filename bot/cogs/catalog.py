"""The kit and style catalogue: /kit add|train|import|edit|remove, /kits, and the same for styles.

Changing the catalogue needs Manage Server: the groups carry ``default_permissions(manage_guild=True)`` (Discord
hides them from others) and every handler checks again at run time (a server may re-grant a command to anyone).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import math
from typing import TYPE_CHECKING

import discord
from discord import app_commands, ui
from discord.ext import commands

from bot import cancel, catalogue, errors, imports, training_flow, training_methods
from bot.catalogue import Kind, kit_autocomplete, style_autocomplete
from bot.translator import locale_of, tr
from kitbooth import limits
from kitbooth.errors import InvalidInput, NotAllowed
from kitbooth.i18n import keyed, translate
from storage import keys
from storage.database import Kit

if TYPE_CHECKING:
    from bot.app import KitBoothBot
    from bot.services import Services

log = logging.getLogger(__name__)

PAGE_SIZE = 10
MAX_PREVIEWS = 4  # images per page
MANAGE = discord.Permissions(manage_guild=True)
EXAMPLES = {"kit": "white shirt with a red collar, navy shorts", "style": "oil painting, visible brush strokes"}


def _services(interaction: discord.Interaction) -> Services:
    return interaction.client.services  # type: ignore[attr-defined]


# --- add / edit / remove ----------------------------------------------------------------------------
async def add_entry(interaction: discord.Interaction, kind: Kind, name: str, description: str) -> None:
    catalogue.require_manager(interaction)
    kit = await catalogue.add_words(_services(interaction).db, interaction.guild_id, name, description, kind,
                                    created_by=interaction.user.id)
    log.info("guild %s: %s %r added by %s", interaction.guild_id, kind, kit.name, interaction.user.id)
    await interaction.response.send_message(
        tr(interaction, f"catalogue.{kind}.added", name=kit.name, description=kit.description), ephemeral=True)


async def edit_entry(interaction: discord.Interaction, kind: Kind, name: str, description: str) -> None:
    catalogue.require_manager(interaction)
    db = _services(interaction).db
    kit = await catalogue.get_entry(db, interaction.guild_id, name, kind)
    text = catalogue.validate_description(description, kind)
    await db.update_kit(kit.id, description=text)
    await interaction.response.send_message(tr(interaction, f"catalogue.{kind}.edited", name=kit.name, text=text),
                                            ephemeral=True)


async def remove_entry(interaction: discord.Interaction, kind: Kind, name: str) -> None:
    catalogue.require_manager(interaction)
    kit = await catalogue.remove_entry(_services(interaction), interaction.guild_id, name, kind)
    log.info("guild %s: %s %r removed by %s", interaction.guild_id, kind, kit.name, interaction.user.id)
    key = f"catalogue.{kind}.removed" + ("_trained" if kit.concept_id is not None else "")
    await interaction.response.send_message(tr(interaction, key, name=kit.name), ephemeral=True)


# --- train ------------------------------------------------------------------------------------------
def _default_description(kind: Kind, name: str) -> str:
    return f"{name} football kit" if kind == "kit" else f"{name} style"


async def _prepare_train(interaction: discord.Interaction, kind: Kind, name: str,
                         description: str | None) -> tuple[str, str]:
    catalogue.require_manager(interaction)
    name = catalogue.validate_name(name, kind)
    text = catalogue.validate_description(description or _default_description(kind, name), kind)
    db = _services(interaction).db
    await catalogue.ensure_seeded(db, interaction.guild_id)
    if await db.get_kit(interaction.guild_id, name, kind) is not None:
        raise keyed(InvalidInput, f"catalogue.{kind}.exists_remove_first", name=name)
    return name, text


async def run_train(interaction: discord.Interaction, kind: Kind, name: str, description: str,
                    attachments: list[discord.Attachment], method: str | None = None) -> None:
    """Shared by the modal and the attachment options; the interaction is already deferred."""
    services = _services(interaction)
    uploads = await training_flow.read_attachments(attachments, services.settings.max_upload_bytes)
    started = await training_flow.start_training(services, interaction, uploads, kind=kind, name=name,
                                                 guild_id=interaction.guild_id, method=method)
    try:
        await services.db.add_kit(guild_id=interaction.guild_id, name=name, description=description, kind=kind,
                                  concept_id=started.concept.id, created_by=interaction.user.id)
    except Exception as exc:
        # The name was taken while the photos were checked: do not leave a training nobody can use.
        await cancel.cancel_concept(services, started.concept.id)
        await catalogue.delete_guild_concept(services, started.concept)
        raise keyed(InvalidInput, f"catalogue.{kind}.added_meanwhile", name=name) from exc
    log.info("guild %s: %s %r training as concept %s", interaction.guild_id, kind, name, started.concept.id)


class TrainEntryModal(ui.Modal):
    photos = ui.Label(
        text="Photos (1-10)",
        description="Clear photos of the kit or artwork in the style.",
        component=ui.FileUpload(custom_id="photos", min_values=1, max_values=10),
    )

    def __init__(self, kind: Kind, name: str, description: str, method: str | None = None,
                 locale: str = "en-US"):
        super().__init__(title=translate(f"modal.{kind}_train.title", locale, name=name)[:45], timeout=15 * 60)
        self.kind, self.name, self.description, self.method = kind, name, description, method
        self.photos.text = translate("modal.entry_train.photos", locale)
        self.photos.description = translate("modal.entry_train.photos_help", locale)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        catalogue.require_manager(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        attachments = list(self.photos.component.values)  # type: ignore[attr-defined]
        await run_train(interaction, self.kind, self.name, self.description, attachments, self.method)

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await errors.handle_interaction_error(interaction, error, where=f"/{self.kind} train (modal)")


async def train_entry(interaction: discord.Interaction, kind: Kind, name: str, description: str | None,
                      attachments: list[discord.Attachment | None], method: str | None = None) -> None:
    name, text = await _prepare_train(interaction, kind, name, description)
    await training_methods.method_for(_services(interaction), interaction.guild_id, kind, method)
    files = [a for a in attachments if a is not None]
    if not files:
        await training_flow.check_not_training(_services(interaction), interaction.user.id)
        await interaction.response.send_modal(TrainEntryModal(kind, name, text, method, locale_of(interaction)))
        return
    await interaction.response.defer(ephemeral=True, thinking=True)
    await run_train(interaction, kind, name, text, files, method)


# --- import -----------------------------------------------------------------------------------------
async def import_entry(interaction: discord.Interaction, kind: Kind, name: str, file: discord.Attachment,
                       description: str | None) -> None:
    catalogue.require_manager(interaction)
    services = _services(interaction)
    settings, db, store = services.settings, services.db, services.store
    name = catalogue.validate_name(name, kind)
    text = catalogue.validate_description(description or _default_description(kind, name), kind)
    # Cheap refusals before anything is downloaded.
    imports.refuse_by_name(file.filename)
    if file.size > settings.max_upload_bytes:
        # MiB, the size rounded up and the limit down, so a file one byte over never reads as equal to it.
        raise keyed(InvalidInput, "catalogue.file_too_big", size=math.ceil(file.size / 2**20 * 10) / 10,
                    limit=math.floor(settings.max_upload_bytes / 2**20 * 10) / 10)
    await catalogue.ensure_seeded(db, interaction.guild_id)
    if await db.get_kit(interaction.guild_id, name, kind) is not None:
        raise keyed(InvalidInput, f"catalogue.{kind}.exists_remove_first", name=name)
    await interaction.response.defer(ephemeral=True, thinking=True)
    data = await file.read()
    info = await asyncio.to_thread(imports.check_import, data, file.filename,
                                   hidden_size=settings.base_hidden_size, max_bytes=settings.max_upload_bytes,
                                   kind=kind)
    tokens = [t for t in info.embedding_names if t not in ("emb_params",) and not t.startswith("string_to_param")]
    concept = await db.create_concept(owner_id=None, guild_id=interaction.guild_id, kind=kind, name=name,
                                      method="imported", status="pending", trigger_tokens=tokens)
    key = keys.guild_concept_key(interaction.guild_id, concept.id)
    try:
        size = await asyncio.to_thread(store.put_bytes, key, data)
        concept = await db.update_concept(concept.id, artifact_key=key, size_bytes=size, status="ready")
        await db.set_concept_sha256(concept.id, hashlib.sha256(data).hexdigest())
        await catalogue._insert(db, interaction.guild_id, name, text, kind, interaction.user.id,
                                concept_id=concept.id)
    except BaseException:
        await asyncio.to_thread(store.delete, key)
        await db.delete_concept(concept.id)
        raise
    log.info("guild %s: %s %r imported (%s) by %s", interaction.guild_id, kind, name, info.summary(),
             interaction.user.id)
    await interaction.followup.send(
        tr(interaction, f"catalogue.{kind}.imported", name=name, summary=info.summary()),
        ephemeral=True,
    )


# --- listing ----------------------------------------------------------------------------------------
def _badge(kit: Kit, concepts: dict[int, str]) -> str:
    if kit.concept_id is None:
        return "📝"
    status = concepts.get(kit.concept_id, "?")
    return {"ready": "🧠", "pending": "⏳", "training": "⏳", "failed": "⚠️"}.get(status, "🧠")


class CataloguePages(ui.View):
    """Paginated /kits and /styles (only the person who asked can turn the pages)."""

    def __init__(self, services: Services, owner_id: int, kind: Kind, title: str, entries: list[Kit],
                 concepts: dict[int, str], locale: str = "en-US"):
        super().__init__(timeout=10 * 60)
        self.services, self.owner_id, self.kind, self.title = services, owner_id, kind, title
        self.locale = locale
        self.prev.label = translate("catalogue.prev", locale)
        self.next.label = translate("catalogue.next", locale)
        self.entries, self.concepts, self.page = entries, concepts, 0
        self.pages = max(1, math.ceil(len(entries) / PAGE_SIZE))
        self._sync_buttons()

    def _sync_buttons(self) -> None:
        self.prev.disabled = self.page == 0
        self.next.disabled = self.page >= self.pages - 1

    async def render(self) -> tuple[list[discord.Embed], list[discord.File]]:
        chunk = self.entries[self.page * PAGE_SIZE:(self.page + 1) * PAGE_SIZE]
        embed = discord.Embed(title=self.title, colour=discord.Colour.green())
        if not chunk:
            embed.description = translate(f"catalogue.{self.kind}.none_yet", self.locale)
        lines = [f"{_badge(k, self.concepts)} **{k.name}** — {k.description[:120]}" for k in chunk]
        if lines:
            embed.description = "\n".join(lines)[:4000]
        embed.set_footer(text=translate(f"catalogue.{self.kind}.footer", self.locale, page=self.page + 1,
                                        pages=self.pages, count=len(self.entries)))
        embeds, files = [embed], []
        for k in chunk:
            if len(files) >= MAX_PREVIEWS or not k.preview_key:
                continue
            try:
                data = await asyncio.to_thread(self.services.store.get_bytes, k.preview_key)
            except Exception:
                continue
            fname = f"preview-{k.id}.png"
            files.append(discord.File(io.BytesIO(data), filename=fname))
            embeds.append(discord.Embed(title=k.name).set_image(url=f"attachment://{fname}"))
        return embeds, files

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id != self.owner_id:
            raise keyed(NotAllowed, f"catalogue.{self.kind}.pages_not_yours")
        return True

    async def on_error(self, interaction: discord.Interaction, error: Exception, item: ui.Item) -> None:
        await errors.handle_interaction_error(interaction, error, where=f"/{self.kind}s pages")

    async def _show(self, interaction: discord.Interaction) -> None:
        self._sync_buttons()
        embeds, files = await self.render()
        await interaction.response.edit_message(embeds=embeds, attachments=files, view=self)

    @ui.button(label="◀ Prev", style=discord.ButtonStyle.secondary)
    async def prev(self, interaction: discord.Interaction, button: ui.Button) -> None:
        self.page = max(0, self.page - 1)
        await self._show(interaction)

    @ui.button(label="Next ▶", style=discord.ButtonStyle.secondary)
    async def next(self, interaction: discord.Interaction, button: ui.Button) -> None:
        self.page = min(self.pages - 1, self.page + 1)
        await self._show(interaction)


async def list_entries(interaction: discord.Interaction, kind: Kind, search: str | None) -> None:
    if interaction.guild_id is None:
        raise keyed(NotAllowed, "catalogue.needs_server")
    services = _services(interaction)
    await catalogue.ensure_seeded(services.db, interaction.guild_id)
    entries = await services.db.list_kits(interaction.guild_id, kind, search=(search or "").strip()[:40])
    concepts = {}
    for k in entries:
        if k.concept_id is not None:
            c = await services.db.get_concept(k.concept_id)
            if c is not None:
                concepts[k.concept_id] = c.status
    locale = locale_of(interaction)
    guild_name = interaction.guild.name if interaction.guild else "?"
    title = translate(f"catalogue.{kind}.title", locale, guild=guild_name) + (
        translate("catalogue.matching", locale, search=search) if search else "")
    view = CataloguePages(services, interaction.user.id, kind, title, entries, concepts, locale)
    embeds, files = await view.render()
    kwargs = {"embeds": embeds, "ephemeral": True}
    if view.pages > 1:
        kwargs["view"] = view
    if files:
        kwargs["files"] = files
    await interaction.response.send_message(**kwargs)


# --- the command groups -----------------------------------------------------------------------------
def make_group(kind: Kind) -> app_commands.Group:
    auto = kit_autocomplete if kind == "kit" else style_autocomplete
    group = app_commands.Group(name=kind, description=f"Manage this server's {kind}s (Manage Server).",
                               guild_only=True, default_permissions=MANAGE)

    @group.command(name="add", description=f"Add a {kind} described in words — usable at once.")
    @app_commands.describe(name=f"Short name, e.g. {'Liverpool home' if kind == 'kit' else 'Comic book'}",
                           description=f"Words for the prompt, e.g. {EXAMPLES[kind]}")
    async def add(interaction: discord.Interaction, name: app_commands.Range[str, 1, limits.NAME_CHARS],
                  description: app_commands.Range[str, 1, limits.DESCRIPTION_CHARS]) -> None:
        await add_entry(interaction, kind, name, description)

    @group.command(name="edit", description=f"Change the words of a {kind}.")
    @app_commands.describe(name=f"The {kind} to change", description="The new words for the prompt")
    @app_commands.autocomplete(name=auto)
    async def edit(interaction: discord.Interaction, name: app_commands.Range[str, 1, limits.NAME_CHARS],
                   description: app_commands.Range[str, 1, limits.DESCRIPTION_CHARS]) -> None:
        await edit_entry(interaction, kind, name, description)

    @group.command(name="train", description=f"Teach KitBooth a {kind} from 1-10 photos.")
    @app_commands.describe(name=f"Name of the new {kind}", description="Words for the prompt (optional)",
                           photo1="A photo (leave all empty to get an upload form)",
                           method=f"Advanced: how to learn the {kind} (default: LoRA)")
    @app_commands.choices(method=training_methods.choices(kind))
    async def train(interaction: discord.Interaction, name: app_commands.Range[str, 1, limits.NAME_CHARS],
                    description: app_commands.Range[str, 1, limits.DESCRIPTION_CHARS] | None = None,
                    photo1: discord.Attachment | None = None, photo2: discord.Attachment | None = None,
                    photo3: discord.Attachment | None = None, photo4: discord.Attachment | None = None,
                    photo5: discord.Attachment | None = None, method: str | None = None) -> None:
        await train_entry(interaction, kind, name, description, [photo1, photo2, photo3, photo4, photo5], method)

    @group.command(name="import", description=f"Import a {kind} from an SD 1.5 LoRA, embedding or hypernetwork.")
    @app_commands.describe(name=f"Name of the new {kind}",
                           file="An SD 1.5 .safetensors LoRA, embedding or hypernetwork, or an A1111 hypernetwork .pt",
                           description="Words for the prompt (optional)")
    async def import_(interaction: discord.Interaction, name: app_commands.Range[str, 1, limits.NAME_CHARS],
                      file: discord.Attachment,
                      description: app_commands.Range[str, 1, limits.DESCRIPTION_CHARS] | None = None) -> None:
        await import_entry(interaction, kind, name, file, description)

    @group.command(name="remove", description=f"Remove a {kind} (and its trained file) from this server.")
    @app_commands.describe(name=f"The {kind} to remove")
    @app_commands.autocomplete(name=auto)
    async def remove(interaction: discord.Interaction, name: app_commands.Range[str, 1, limits.NAME_CHARS]) -> None:
        await remove_entry(interaction, kind, name)

    return group


class CatalogCog(commands.Cog):
    def __init__(self, bot: KitBoothBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        for kind in ("kit", "style"):
            self.bot.tree.add_command(make_group(kind), override=True)

    async def cog_unload(self) -> None:
        for kind in ("kit", "style"):
            self.bot.tree.remove_command(kind)

    @commands.Cog.listener()
    async def on_guild_join(self, guild: discord.Guild) -> None:
        await catalogue.ensure_seeded(self.bot.services.db, guild.id)

    @app_commands.command(name="kits", description="This server's kit catalogue.")
    @app_commands.guild_only()
    @app_commands.describe(search="Only kits whose name contains this")
    async def kits(self, interaction: discord.Interaction, search: str | None = None) -> None:
        await list_entries(interaction, "kit", search)

    @app_commands.command(name="styles", description="This server's art styles.")
    @app_commands.guild_only()
    @app_commands.describe(search="Only styles whose name contains this")
    async def styles(self, interaction: discord.Interaction, search: str | None = None) -> None:
        await list_entries(interaction, "style", search)


async def setup(bot: KitBoothBot) -> None:
    await bot.add_cog(CatalogCog(bot))
