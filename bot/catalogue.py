"""The per-guild kit and style catalogue: starter entries, validation, lookup, autocomplete. Torch-free.

A catalogue entry (a ``kits`` row, ``kind`` "kit" or "style") always has words (``description``) that go into
the prompt, and may point at a guild-owned concept (trained from photos or imported from a ``.safetensors``
file). A new guild is seeded once from ``bot/data/starter_*.json`` (``guild_settings.catalogue_seeded_at``);
entries an admin removes are never seeded again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands

from bot import cancel, text_checks
from gpu_worker import contract
from kitbooth import limits
from kitbooth.errors import Busy, InvalidInput, NotAllowed, NotFound
from kitbooth.i18n import keyed
from storage import keys
from storage.database import Concept, Database, Kit, utcnow
from training.prompts import find_reserved

if TYPE_CHECKING:
    from bot.services import Services

log = logging.getLogger(__name__)

Kind = Literal["kit", "style"]
KINDS: tuple[Kind, ...] = ("kit", "style")
MAX_NAME = limits.NAME_CHARS
MAX_DESCRIPTION = limits.DESCRIPTION_CHARS
MAX_ENTRIES = 500  # per guild and kind
_NAME = re.compile(r"^[\w][\w .'&()+/-]*$", re.UNICODE)


# --- starter catalogue ------------------------------------------------------------------------------
@dataclass(frozen=True)
class StarterEntry:
    name: str
    description: str


@lru_cache(maxsize=2)
def load_starters(kind: Kind) -> tuple[StarterEntry, ...]:
    """The starter entries shipped in ``bot/data/starter_{kind}s.json``."""
    text = resources.files("bot").joinpath("data", f"starter_{kind}s.json").read_text("utf-8")
    entries = json.loads(text)[f"{kind}s"]
    return tuple(StarterEntry(e["name"], e["description"]) for e in entries)


async def ensure_catalogue(db: Database, guild_id: int) -> int:
    """Seed ``guild_id``'s catalogue with the starter kits and styles, once. Returns the entries added.

    Runs in one transaction: two concurrent calls seed once, and an entry that already exists (an admin added
    the same name first) is left as it is.
    """
    settings = await db.guild_settings(guild_id)
    if settings.catalogue_seeded_at is not None:
        return 0
    added = 0
    now = utcnow()
    async with db.transaction() as conn:
        async with conn.execute(
            "SELECT catalogue_seeded_at FROM guild_settings WHERE guild_id = ?", (guild_id,)
        ) as cur:
            row = await cur.fetchone()
        if row is not None and row[0] is not None:
            return 0
        for kind in KINDS:
            for entry in load_starters(kind):
                cur = await conn.execute(
                    "INSERT OR IGNORE INTO kits (guild_id, kind, name, description, created_by, created_at)"
                    " VALUES (?,?,?,?,NULL,?)",
                    (guild_id, kind, entry.name, entry.description, now),
                )
                added += cur.rowcount
        await conn.execute(
            "UPDATE guild_settings SET catalogue_seeded_at = ? WHERE guild_id = ?", (now, guild_id)
        )
    log.info("guild %s: seeded the catalogue with %d starter entries", guild_id, added)
    return added


async def ensure_seeded(db: Database, guild_id: int) -> None:
    """``ensure_catalogue`` once per guild and process (autocomplete must not write on every key press)."""
    seen: set[int] = db.__dict__.setdefault("_kitbooth_seeded_guilds", set())
    if guild_id in seen:
        return
    await ensure_catalogue(db, guild_id)
    seen.add(guild_id)


# --- validation -------------------------------------------------------------------------------------
def validate_name(name: str, kind: Kind = "kit") -> str:
    name = " ".join((name or "").split())
    if not name:
        raise keyed(InvalidInput, f"catalogue.{kind}.no_name")
    if len(name) > MAX_NAME:
        raise keyed(InvalidInput, f"catalogue.{kind}.name_too_long", limit=MAX_NAME)
    if not _NAME.match(name) or find_reserved(name):
        raise keyed(InvalidInput, f"catalogue.{kind}.name_chars")
    return name


def validate_description(text: str, kind: Kind = "kit") -> str:
    text = text_checks.clean_text(text)
    folded = unicodedata.normalize("NFKC", text)  # checked as the tokenizer will see it, like prompts
    if len(text) < 3 or not text_checks.has_visible(folded):
        raise keyed(InvalidInput, f"catalogue.{kind}.describe")  # the example stays English (prompt words)
    if len(text) > MAX_DESCRIPTION:
        raise keyed(InvalidInput, "catalogue.description_too_long", limit=MAX_DESCRIPTION)
    if find_reserved(text) or find_reserved(folded) or "@" in folded:
        raise keyed(InvalidInput, "catalogue.description_plain")
    return text


def require_manager(interaction: discord.Interaction) -> None:
    """Runtime twin of ``default_permissions(manage_guild=True)`` (an admin may re-grant the command)."""
    if interaction.guild is None:
        raise keyed(NotAllowed, "error.no_dm")
    perms = getattr(interaction, "permissions", None)
    member = interaction.user
    ok = bool(perms and (perms.manage_guild or perms.administrator))
    if not ok and isinstance(member, discord.Member):
        gp = member.guild_permissions
        ok = gp.manage_guild or gp.administrator
    if not ok:
        raise keyed(NotAllowed, "catalogue.manager_only")


# --- lookup -----------------------------------------------------------------------------------------
async def get_entry(db: Database, guild_id: int, name: str, kind: Kind = "kit") -> Kit:
    """The named entry, or ``NotFound`` naming close matches."""
    await ensure_seeded(db, guild_id)
    kit = await db.get_kit(guild_id, text_checks.clean_text(name), kind)  # no lone surrogate reaches SQLite
    if kit is not None:
        return kit
    words = [w for w in re.split(r"\W+", name or "") if len(w) >= 3]
    close: list[str] = []
    for w in words[:3]:
        close += [k.name for k in await db.list_kits(guild_id, kind, search=w, limit=5)]
    names = ", ".join(f"`{c}`" for c in list(dict.fromkeys(close))[:5] if c)
    raise keyed(NotFound, f"catalogue.{kind}.not_found" + (".hint" if names else ""), name=_clip(name), names=names)


@dataclass(frozen=True)
class Resolved:
    """What ``/generate`` needs of a catalogue entry: the words, and the concept file when there is one."""

    kit: Kit
    words: str
    concept: contract.ConceptRef | None


async def resolve(db: Database, guild_id: int, name: str, kind: Kind = "kit") -> Resolved:
    """Look an entry up for generation. A trained entry whose concept is not ready yet is refused."""
    kit = await get_entry(db, guild_id, name, kind)
    ref = None
    if kit.concept_id is not None:
        concept = await db.get_concept(kit.concept_id)
        if concept is not None and concept.status == "ready" and concept.artifact_key:
            sha = await db.concept_sha256(concept.id)
            ref = contract.ConceptRef(key=concept.artifact_key, kind=kind, sha256=sha or "")
        elif concept is not None and concept.status in ("pending", "training"):
            raise keyed(Busy, f"catalogue.{kind}.still_learning", name=kit.name)
        elif concept is not None and concept.status == "failed":
            raise keyed(NotFound, f"catalogue.{kind}.learning_failed", name=kit.name)
    return Resolved(kit=kit, words=kit.description, concept=ref)


async def add_words(db: Database, guild_id: int, name: str, description: str, kind: Kind,
                    created_by: int | None) -> Kit:
    """Add a word-described entry (usable at once)."""
    name, description = validate_name(name, kind), validate_description(description, kind)
    await ensure_seeded(db, guild_id)
    return await _insert(db, guild_id, name, description, kind, created_by)


async def _insert(db: Database, guild_id: int, name: str, description: str, kind: Kind,
                  created_by: int | None, concept_id: int | None = None) -> Kit:
    if await db.get_kit(guild_id, name, kind) is not None:
        raise keyed(InvalidInput, f"catalogue.{kind}.exists_remove_first", name=name)
    if len(await db.list_kits(guild_id, kind, limit=MAX_ENTRIES)) >= MAX_ENTRIES:
        raise keyed(InvalidInput, f"catalogue.{kind}.full", limit=MAX_ENTRIES)
    try:
        return await db.add_kit(guild_id=guild_id, name=name, description=description, kind=kind,
                                concept_id=concept_id, created_by=created_by)
    except sqlite3.IntegrityError:
        raise keyed(InvalidInput, f"catalogue.{kind}.exists", name=name) from None


async def remove_entry(services: Services, guild_id: int, name: str, kind: Kind) -> Kit:
    """Remove an entry, its guild-owned concept (row, file, checkpoints, photos), preview and training job."""
    db, store = services.db, services.store
    kit = await get_entry(db, guild_id, name, kind)
    await db.remove_kit(guild_id, kit.name, kind)
    if kit.concept_id is not None:
        concept = await db.get_concept(kit.concept_id)
        if concept is not None and concept.guild_id == guild_id and concept.kind == kind:
            await cancel.cancel_concept(services, concept.id)
            await delete_guild_concept(services, concept)
    if kit.preview_key:
        await asyncio.to_thread(store.delete, kit.preview_key)
    return kit


async def delete_guild_concept(services: Services, concept: Concept) -> None:
    store = services.store
    if concept.guild_id is not None:
        for prefix in (keys.guild_photos_prefix(concept.guild_id, concept.id),
                       keys.guild_checkpoint_prefix(concept.guild_id, concept.id)):
            await asyncio.to_thread(store.delete_prefix, prefix)
        await asyncio.to_thread(store.delete, keys.guild_concept_key(concept.guild_id, concept.id))
    if concept.artifact_key and concept.artifact_key.startswith("guilds/"):
        await asyncio.to_thread(store.delete, concept.artifact_key)
    await services.db.delete_concept(concept.id)


# --- autocomplete -----------------------------------------------------------------------------------
async def _choices(interaction: discord.Interaction, current: str, kind: Kind) -> list[app_commands.Choice[str]]:
    if interaction.guild_id is None:
        return []
    db = interaction.client.services.db  # type: ignore[attr-defined]
    await ensure_seeded(db, interaction.guild_id)
    current = (current or "").strip()[:MAX_NAME]
    entries = await db.list_kits(interaction.guild_id, kind, search=current, limit=100)
    low = current.lower()
    entries.sort(key=lambda k: (not k.name.lower().startswith(low), k.name.lower()))
    return [app_commands.Choice(name=k.name, value=k.name) for k in entries[:25]]


async def kit_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    """Up to 25 of this server's kits matching ``current`` (prefix matches first)."""
    return await _choices(interaction, current, "kit")


async def style_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    """Up to 25 of this server's styles matching ``current`` (prefix matches first)."""
    return await _choices(interaction, current, "style")


def _clip(text: str, n: int = 40) -> str:
    return text_checks.shown(text, n)  # escaped, valid UTF-8, no mentions
