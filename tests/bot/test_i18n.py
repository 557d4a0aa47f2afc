"""KitBooth speaks the member's language (issue 16), checked on what the member receives through SimCord.

Members get a locale with ``with_locale(member, "de")`` (tests/bot/conftest.py: the one place SimCord's
interaction payloads are given a ``locale`` and ``guild_locale``). English stays the default, and a language
KitBooth does not ship (``ja``) falls back to the server's preferred locale, then English.
"""

from __future__ import annotations

import discord
import pytest
from simcord.backend import serializers

from bot.translator import KitBoothTranslator
from kitbooth import i18n
from tests.bot.conftest import emit, fake_checker, make_ready_face, tiny_png, with_locale

SHIPPED = [discord.Locale(code) for code in i18n.SHIPPED if code != "en-US"]


def _walk(payload: dict, path: str):
    """(path, dict) of a command payload and every option, sub-command and choice in it."""
    yield path, payload
    for opt in payload.get("options") or []:
        yield from _walk(opt, f"{path} {opt['name']}")
    for ch in payload.get("choices") or []:
        yield f"{path} ={ch['value']}", ch


async def test_the_command_tree_carries_every_localisation(arena):
    tree = arena.bot.tree
    assert isinstance(tree.translator, KitBoothTranslator)
    commands = tree.get_commands()
    assert {c.name for c in commands} >= {"train", "generate", "kits", "forget", "help", "kitbooth"}
    missing: dict[str, list[str]] = {}  # "path field" → languages without it
    for command in commands:
        payload = await command.get_translated_payload(tree, tree.translator)
        for path, part in _walk(payload, "/" + command.name):
            wanted = ["name_localizations"] + (["description_localizations"] if "description" in part else [])
            for field in wanted:
                have = part.get(field) or {}
                langs = [loc.value for loc in SHIPPED if loc.value not in have]
                if langs:
                    missing[f"{path} {field.split('_')[0]} ({part.get(field.split('_')[0])!r})"] = langs
    assert not missing, (f"{len(missing)} command-tree strings lack translations (keys: bot/translator.py; add "
                         f"them to every kitbooth/locales/*/LC_MESSAGES/kitbooth.po): {list(missing)[:15]}")
    train = await tree.get_command("train").get_translated_payload(tree, tree.translator)
    assert train["name_localizations"]["de"] == "trainieren" and train["name_localizations"]["pt-BR"] == "treinar"
    assert train["description_localizations"]["es-ES"] == "Enséñale tu cara a KitBooth con 4-10 selfis."


@pytest.mark.parametrize("locale, expected", [
    ("de", "Du hast dein Gesicht noch nicht trainiert — führe /trainieren mit 4-10 Selfies aus."),
    ("pt-BR", "Você ainda não treinou seu rosto — use /treinar com 4-10 selfies."),
    ("ja", "You haven't trained your face yet — run /train with 4-10 selfies."),  # not shipped: English
])
async def test_a_refusal_arrives_in_the_members_language(arena, locale, expected):
    with_locale(arena.alice, locale)
    result = await arena.alice.slash(arena.channel, "generate", prompt="at the stadium")
    assert result.response.content == expected and result.response.ephemeral
    assert await arena.services.db.list_jobs(user_id=arena.alice.id) == []


async def test_an_unshipped_locale_falls_back_to_the_servers(simcord_env):
    guild = simcord_env.create_guild(name="Torcida", preferred_locale="pt-BR")
    channel = guild.create_text_channel("kitbooth")
    fan = with_locale(guild.add_member(simcord_env.create_user("fan")), "ja")
    result = await fan.slash(channel, "generate", prompt="at the stadium")
    assert result.response.content.startswith("Você ainda não treinou seu rosto")


@pytest.fixture
def bot_seams():
    from training.photo_report import NO_FACE

    return {"photo_checker": fake_checker(refuse={4: NO_FACE})}


async def test_the_selfie_checklist_in_german_and_in_english_for_an_unknown_locale(arena):
    photos = [(f"IMG_{i}.png", tiny_png((i * 30, 80, 80))) for i in range(1, 5)]
    with_locale(arena.alice, "de")
    shown = await arena.alice.slash(arena.channel, "train")
    assert shown.modal is not None and shown.modal["title"] == "Bring KitBooth dein Gesicht bei"
    result = await arena.alice.submit_modal(shown, {"photos": photos, "consent": ["yes"]})
    text = result.response.content
    assert "✅ Foto 1: ok" in text and "❌ Foto 4: kein Gesicht gefunden — nimm ein scharfes Foto von vorne" in text
    assert "Nur 3 brauchbare Fotos — schick mindestens 4 scharfe Selfies" in text
    with_locale(arena.bob, "ja")  # a language KitBooth does not ship, in an English server: English
    shown = await arena.bob.slash(arena.channel, "train")
    result = await arena.bob.submit_modal(shown, {"photos": photos, "consent": ["yes"]})
    assert "❌ photo 4: no face found" in result.response.content and "Only 3 usable photos" in result.response.content


async def test_a_result_arrives_in_the_language_the_request_was_made_in(arena):
    s, alice = arena.services, arena.alice
    await make_ready_face(s, alice.id)
    with_locale(alice, "pt-BR")
    echo = await alice.slash(arena.channel, "generate", prompt="lifting the cup in the rain", count=2, seed=5)
    shown = "\n".join(m.content for m in [echo.response, *echo.followups] if m is not None)
    assert "🎨 2 imagens suas: *lifting the cup in the rain*" in shown and "fila" in shown  # prompt as typed
    (job,) = await s.db.list_jobs(user_id=alice.id, kind="generate")
    assert job.payload["target"]["locale"] == "pt-BR"  # the worker renders in it too
    out = []
    for i in range(2):
        key = f"users/{alice.id}/outputs/{job.id}/{i}.png"
        s.store.put_bytes(key, tiny_png((40 * i, 100, 200)))
        out.append(key)
    await emit(s, "job.done", job.id, alice.id, "generate", posted=False, output_keys=out, seeds=[5, 6],
               prompt=job.payload["prompt"], seconds=12.5)
    await arena.bot.consumer.drain()
    msg = arena.channel.last_message
    assert "**lifting the cup in the rain**" in msg.content and "semente 5-6 · 12,5 s" in msg.content
    labels = [c.label for row in msg.components for c in row.children]
    assert labels == ["U1", "U2", "🔁 Gerar de novo", "🎲 Variar", "🗑 Apagar"]


async def test_help_in_the_members_language(arena):
    with_locale(arena.alice, "fr")
    result = await arena.alice.slash(arena.channel, "help")
    text = result.response.content
    assert result.response.ephemeral
    assert "`/entraîner`" in text and "`/générer`" in text and "`/maillots`" in text and "`/oublier`" in text
    assert "les prompts ne sont jamais traduits" in text and "`/kitbooth paramètres`" in text
    english = await arena.bob.slash(arena.channel, "help")
    assert "`/train`" in english.response.content and "prompts are never translated" in english.response.content


async def _join(env, guild, system_channel) -> None:
    """The seam: SimCord 3.2.1 cannot dispatch a guild *join* — its GUILD_CREATE always says
    ``"unavailable": false`` (discord.py reads that as guild_available) and create_guild announces the guild
    before it has channels. So this replays what Discord sends when the bot is removed and invited again:
    GUILD_DELETE, then GUILD_CREATE without ``unavailable`` (discord.py's on_guild_join)."""
    model = env.backend.get_guild(guild.id)
    model.system_channel_id = system_channel.id
    env.backend.emit("GUILD_DELETE", {"id": str(guild.id), "unavailable": False})
    joined = dict(serializers.guild_create_payload(env.backend, model))
    joined.pop("unavailable", None)
    env.backend.emit("GUILD_CREATE", joined)
    await env.settle()


async def test_the_welcome_on_joining_a_server_is_in_its_preferred_locale(arena):
    env = arena.env
    guild = env.create_guild(name="Peña Madridista", preferred_locale="es-ES")
    channel = guild.create_text_channel("general")
    quiet = guild.create_text_channel("silencio")
    await _join(env, guild, channel)
    (welcome,) = [m for m in channel.history() if m.author.id == env.bot.user.id]
    text = welcome.content
    assert text.startswith("👋 **KitBooth** te dibuja con la equipación de tu club.")
    assert "`/entrenar`" in text and "`/generar`" in text and "`/equipaciones`" in text
    assert "`/olvidar` elimina todo lo que KitBooth guarda sobre ti" in text
    assert "**Para administradores**" in text and "`/kitbooth ajustes`" in text
    assert quiet.history() == []


async def test_no_welcome_where_the_bot_may_not_post(arena, caplog):
    caplog.set_level("INFO", logger="bot.cogs.help")
    env = arena.env
    guild = env.create_guild(name="Locked", preferred_locale="de")
    channel = guild.create_text_channel("announcements",
                                        overwrites={env.bot.user: discord.PermissionOverwrite(send_messages=False)})
    await _join(env, guild, channel)
    assert channel.history() == []  # nothing posted, nothing raised (the arena fails on unexpected errors)
    assert "no system channel KitBooth may post in" in caplog.text  # checked before trying, not a refused POST
