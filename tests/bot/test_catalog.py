"""The kit/style catalogue: starter seeding, /kit add|edit|train|import|remove, /kits, autocomplete, refusals."""

from __future__ import annotations

import discord
import numpy as np
import pytest
from safetensors.numpy import save
from simcord import SetupError

from bot import catalogue
from gpu_worker import contract
from storage import keys
from tests.bot.conftest import fake_checker, tiny_png


@pytest.fixture
def bot_cogs():
    return ["bot.cogs.catalog"]


def admin_of(arena, name: str = "carol"):
    role = arena.guild.create_role("Mods", permissions=discord.Permissions(manage_guild=True))
    return arena.guild.add_member(arena.env.create_user(name), roles=[role])


async def allow_everyone(arena, command: str):
    """A server admin re-grants a Manage-Server command to everyone (Discord allows this); our runtime check
    must still refuse non-managers."""
    cmds = await arena.bot.tree.fetch_commands()
    cmd = next(c for c in cmds if c.name == command)
    arena.guild.set_command_permissions(cmd, {arena.alice: True})


def starter_count(kind):
    return len(catalogue.load_starters(kind))


# --- starters ---------------------------------------------------------------------------------------
def test_starter_files_are_sane():
    kits, styles = catalogue.load_starters("kit"), catalogue.load_starters("style")
    assert 30 <= len(kits) <= 50 and 4 <= len(styles) <= 8
    names = [k.name.lower() for k in kits]
    assert len(set(names)) == len(names)
    for e in kits + styles:
        assert catalogue.validate_name(e.name) == e.name
        assert catalogue.validate_description(e.description) == e.description
    assert {"Liverpool home", "Brazil home", "Barcelona home"} <= {k.name for k in kits}
    assert {"Comic book", "Oil painting", "Retro video game", "Stadium poster"} <= {s.name for s in styles}


async def test_ensure_catalogue_seeds_once_and_respects_removals(db):
    n = await catalogue.ensure_catalogue(db, 7)
    assert n == starter_count("kit") + starter_count("style")
    assert len(await db.list_kits(7, "kit")) == starter_count("kit")
    assert (await db.guild_settings(7)).catalogue_seeded_at is not None
    await db.remove_kit(7, "Liverpool home")
    assert await catalogue.ensure_catalogue(db, 7) == 0
    assert await db.get_kit(7, "Liverpool home") is None
    assert await db.list_kits(8) == []  # other guilds untouched


async def test_ensure_catalogue_keeps_an_admins_entry_with_a_starter_name(db):
    await db.add_kit(guild_id=9, name="liverpool HOME", description="my own words")
    await catalogue.ensure_catalogue(db, 9)
    assert (await db.get_kit(9, "Liverpool home")).description == "my own words"


# --- add / edit / remove ----------------------------------------------------------------------------
async def test_admin_adds_a_kit_usable_at_once(arena):
    carol = admin_of(arena)
    r = await carol.slash(arena.channel, "kit add", name="Hometown FC", description="white shirt with a red collar, navy shorts")
    assert r.response.ephemeral and "Added the kit **Hometown FC**" in r.response.content
    db = arena.services.db
    kit = await db.get_kit(arena.guild.id, "hometown fc")
    assert kit.description == "white shirt with a red collar, navy shorts" and kit.created_by == carol.id
    # Seeded too, and resolvable for /generate with words only.
    assert len(await db.list_kits(arena.guild.id)) == starter_count("kit") + 1
    res = await catalogue.resolve(db, arena.guild.id, "Hometown FC")
    assert res.words == kit.description and res.concept is None
    # Autocomplete (as /generate uses it) offers it.
    choices = await carol.autocomplete(arena.channel, "kit remove", "name", "homet")
    assert [c["name"] for c in choices] == ["Hometown FC"]


async def test_kit_commands_are_hidden_from_non_admins(arena):
    with pytest.raises(SetupError):
        await arena.alice.slash(arena.channel, "kit add", name="X", description="red shirt")


async def test_non_admin_kit_add_refused_even_when_command_is_granted(arena):
    await allow_everyone(arena, "kit")
    r = await arena.alice.slash(arena.channel, "kit add", name="Bad FC", description="red shirt")
    assert r.response.ephemeral and "Manage Server" in r.response.content
    assert await arena.services.db.get_kit(arena.guild.id, "Bad FC") is None


@pytest.mark.parametrize("name,description,needle", [
    ("Liverpool home", "red shirt", "already has a kit"),
    ("<|endoftext|>", "red shirt", "name may use"),
    ("Fine", "<sks> person", "plain words"),
    ("Fine", "x", "Describe the kit"),
])
async def test_kit_add_refusals(arena, name, description, needle):
    carol = admin_of(arena)
    r = await carol.slash(arena.channel, "kit add", name=name, description=description)
    assert needle in r.response.content and r.response.ephemeral


async def test_edit_and_remove(arena):
    carol = admin_of(arena)
    r = await carol.slash(arena.channel, "kit edit", name="liverpool home", description="red shirt, red shorts")
    assert "now reads" in r.response.content
    db = arena.services.db
    assert (await db.get_kit(arena.guild.id, "Liverpool home")).description == "red shirt, red shorts"
    r = await carol.slash(arena.channel, "kit remove", name="Liverpool home")
    assert "Removed the kit **Liverpool home**" in r.response.content
    assert await db.get_kit(arena.guild.id, "Liverpool home") is None
    # Removed starters are not re-seeded (even after a restart of the bot).
    await arena.env.restart_bot()
    assert await catalogue.ensure_catalogue(arena.env.bot.services.db, arena.guild.id) == 0
    choices = await carol.autocomplete(arena.channel, "kit remove", "name", "Liverpool")
    assert [c["name"] for c in choices] == ["Liverpool away"]


async def test_remove_unknown_kit_refused_with_suggestions(arena):
    carol = admin_of(arena)
    r = await carol.slash(arena.channel, "kit remove", name="Liverpol hme")
    assert "no kit called" in r.response.content and "/kits" in r.response.content
    r = await carol.slash(arena.channel, "kit remove", name="Liverpool third")
    assert "Liverpool home" in r.response.content  # a suggestion


# --- train --------------------------------------------------------------------------------------------
async def test_non_admin_kit_train_refused(arena):
    await allow_everyone(arena, "kit")
    r = await arena.alice.slash(arena.channel, "kit train", name="Away 2026", photo1=("k.png", tiny_png()))
    assert "Manage Server" in r.response.content
    assert await arena.services.db.list_jobs() == []


@pytest.mark.parametrize("bot_seams", [{"photo_checker": fake_checker()}])
async def test_kit_train_with_attachments_enqueues_guild_owned_training(arena):
    carol = admin_of(arena)
    r = await carol.slash(arena.channel, "kit train", name="Away 2026", description="teal shirt, black shorts",
                          photo1=("a.png", tiny_png()), photo2=("b.png", tiny_png((0, 200, 0))))
    assert "queue" in r.response.content
    s = arena.services
    kit = await s.db.get_kit(arena.guild.id, "Away 2026")
    concept = await s.db.get_concept(kit.concept_id)
    assert concept.kind == "kit" and concept.guild_id == arena.guild.id and concept.status == "training"
    assert kit.description == "teal shirt, black shorts"
    stored = s.store.list(keys.guild_prefix(arena.guild.id))
    assert stored == [keys.guild_photo_key(arena.guild.id, concept.id, i) for i in range(2)]
    assert s.store.list("users/") == []
    (queued,) = await s.arq.queued_jobs(queue_name=s.settings.queue_name)
    p = contract.TrainPayload.from_dict(queued.args[0])
    assert p.kind == "kit" and p.artifact_key == keys.guild_concept_key(arena.guild.id, concept.id)
    # Not usable until trained; removal cancels the training and deletes everything of it.
    with pytest.raises(Exception, match="still being learned"):
        await catalogue.resolve(s.db, arena.guild.id, "Away 2026")
    r = await carol.slash(arena.channel, "kit remove", name="Away 2026")
    assert "trained file" in r.response.content
    assert s.store.list(keys.guild_prefix(arena.guild.id)) == []
    assert await s.db.get_concept(concept.id) is None
    assert await s.arq.queued_jobs(queue_name=s.settings.queue_name) == []
    (job,) = await s.db.list_jobs()
    assert job.status == "cancelled" and await s.arq.exists(contract.cancel_job_key(job.id))


@pytest.mark.parametrize("bot_seams", [{"photo_checker": fake_checker()}])
async def test_kit_train_modal(arena):
    carol = admin_of(arena)
    shown = await carol.slash(arena.channel, "style train", name="Mural")
    assert shown.modal is not None
    r = await carol.submit_modal(shown, {"photos": [("m.png", tiny_png())]})
    assert "queue" in r.response.content
    kit = await arena.services.db.get_kit(arena.guild.id, "Mural", "style")
    assert kit is not None and kit.description == "Mural style"


# --- import -------------------------------------------------------------------------------------------
def embedding(width=32, n=2) -> bytes:
    return save({"emb_params": np.zeros((n, width), np.float32)})


async def test_import_embedding(arena):
    carol = admin_of(arena)
    r = await carol.slash(arena.channel, "style import", name="Sketchy", file=("sketchy.safetensors", embedding()))
    assert "Imported the style **Sketchy**" in _text(r) and "embedding, 2 vectors" in _text(r)
    s = arena.services
    kit = await s.db.get_kit(arena.guild.id, "Sketchy", "style")
    concept = await s.db.get_concept(kit.concept_id)
    assert concept.method == "imported" and concept.status == "ready" and concept.owner_id is None
    assert concept.artifact_key == keys.guild_concept_key(arena.guild.id, concept.id)
    assert s.store.get_bytes(concept.artifact_key) == embedding()
    res = await catalogue.resolve(s.db, arena.guild.id, "sketchy", "style")
    import hashlib

    sha = hashlib.sha256(embedding()).hexdigest()
    assert res.concept == contract.ConceptRef(key=concept.artifact_key, kind="style", sha256=sha)


def _text(r):
    return "\n".join(m.content for m in [r.response, *r.followups] if m is not None)


@pytest.mark.parametrize("filename,data,needle", [
    ("kit.pt", b"\x80\x04\x95" + b"\0" * 40, "pickle"),
    ("kit.ckpt", b"PK\x03\x04" + b"\0" * 40, "pickle"),
    ("kit.safetensors", b"\x80\x04\x95" + b"\0" * 40, "pickle"),
    ("kit.safetensors", embedding(width=1024), "different base model"),
    ("kit.safetensors", save({"clip_l": np.zeros((1, 32), np.float16), "clip_g": np.zeros((1, 1280), np.float16)}),
     "(SDXL?)"),
    ("kit.safetensors", b"this is not a safetensors file at all", "not a valid `.safetensors`"),
    ("kit.zip", b"PK..", "not a `.safetensors` file"),
])
async def test_import_refusals(arena, filename, data, needle):
    carol = admin_of(arena)
    r = await carol.slash(arena.channel, "kit import", name="Imported", file=(filename, data))
    assert needle in _text(r)
    s = arena.services
    assert await s.db.get_kit(arena.guild.id, "Imported") is None
    assert await s.db.list_concepts() == [] and s.store.list("") == []


async def test_import_oversize_refused_before_download(arena):
    arena.services.settings.max_upload_bytes = 100
    carol = admin_of(arena)
    r = await carol.slash(arena.channel, "kit import", name="Big", file=("big.safetensors", embedding(n=10)))
    assert "limit is" in r.response.content and r.response.ephemeral


async def test_non_admin_import_refused(arena):
    await allow_everyone(arena, "kit")
    r = await arena.alice.slash(arena.channel, "kit import", name="X", file=("x.safetensors", embedding()))
    assert "Manage Server" in r.response.content


# --- listing --------------------------------------------------------------------------------------------
async def test_kits_lists_paginated_with_owner_only_buttons(arena):
    r = await arena.alice.slash(arena.channel, "kits")
    msg = r.response
    assert msg.ephemeral
    embed = msg.embeds[0]
    assert "Page 1/" in embed.footer.text and "Arsenal home" in embed.description
    r2 = await arena.alice.click(msg, label="Next ▶")
    assert "Page 2/" in r2.response.embeds[0].footer.text
    assert "Arsenal home" not in r2.response.embeds[0].description
    r3 = await arena.alice.click(r2.response, label="◀ Prev")
    assert "Page 1/" in r3.response.embeds[0].footer.text
    r4 = await arena.alice.slash(arena.channel, "kits", search="liverpool")
    assert "Liverpool home" in r4.response.embeds[0].description
    assert "Arsenal" not in r4.response.embeds[0].description and not r4.response.components


async def test_kits_shows_previews(arena):
    s = arena.services
    await catalogue.ensure_seeded(s.db, arena.guild.id)
    kit = await s.db.get_kit(arena.guild.id, "Ajax home")
    s.store.put_bytes(keys.preview_key(arena.guild.id, kit.id), tiny_png())
    await s.db.update_kit(kit.id, preview_key=keys.preview_key(arena.guild.id, kit.id))
    r = await arena.alice.slash(arena.channel, "kits", search="ajax")
    assert len(r.response.embeds) == 2 and r.response.embeds[1].image.url.endswith(f"preview-{kit.id}.png")
    assert await r.response.attachments[0].read() == tiny_png()


async def test_styles_list(arena):
    r = await arena.alice.slash(arena.channel, "styles")
    assert "Comic book" in r.response.embeds[0].description


@pytest.mark.parametrize("bot_cogs", [None])  # every cog, as in production
async def test_generate_autocomplete_sees_the_catalogue(arena):
    carol = admin_of(arena)
    await carol.slash(arena.channel, "kit add", name="Hometown FC", description="white shirt, navy shorts")
    choices = await arena.alice.autocomplete(arena.channel, "generate", "kit", "Hometown", prompt="me")
    assert "Hometown FC" in [c["name"] for c in choices]
    choices = await arena.alice.autocomplete(arena.channel, "generate", "style", "comic", prompt="me")
    assert [c["name"] for c in choices] == ["Comic book"]


async def test_kit_autocomplete_prefers_prefix_matches(arena):
    carol = admin_of(arena)
    choices = await carol.autocomplete(arena.channel, "kit remove", "name", "man")
    names = [c["name"] for c in choices]
    assert names[:3] == ["Manchester City home", "Manchester United away", "Manchester United home"]
    assert names[3:] == ["Germany home"]  # contains "man", but not at the start
