"""Reference identity and "no training another person's face" (issues 14.1, 11.5), with the real selfie checks
(dlib on real photos), the real SQLite DB, the real store and SimCord; best-of-N's per-server setting."""

from __future__ import annotations

import discord
import numpy as np
import pytest
from simcord import SetupError

from bot import forget
from gpu_worker import contract
from storage import keys
from tests.bot.conftest import make_ready_face, queued, selfies
from training.rerank import decode_reference, encode_reference


@pytest.fixture
def bot_cogs():
    return ["bot.cogs.train", "bot.cogs.admin", "bot.cogs.generate"]


def admin_of(arena):
    role = arena.guild.create_role("Mods", permissions=discord.Permissions(manage_guild=True))
    return arena.guild.add_member(arena.env.create_user("carol"), roles=[role])


async def _train(member, arena, photos):
    shown = await member.slash(arena.channel, "train")
    return (await member.submit_modal(shown, {"photos": photos, "consent": ["yes"]})).response


@pytest.mark.slow
async def test_second_account_with_the_first_accounts_photos_is_refused_until_an_admin_allows_the_pair(arena):
    s = arena.services
    first = await _train(arena.alice, arena, selfies(4))
    assert "Training your face" in first.content
    (concept,) = await s.db.list_concepts(owner_id=arena.alice.id, kind="face")
    # The reference identity is kept with the face: a DB row and the worker's copy under alice's own prefix.
    blob = await s.db.face_reference(concept.id)
    assert blob is not None and len(blob) == 1024
    ref = decode_reference(blob)
    assert ref.shape == (128,) and np.all(np.isfinite(ref))
    assert s.store.get_bytes(keys.reference_key(arena.alice.id, concept.id)) == blob
    ((_, payload),) = await queued(s)
    assert blob.hex() not in str(payload) and "descriptor" not in str(payload)  # never in a payload

    refused = await _train(arena.bob, arena, selfies(4))
    assert refused.ephemeral and "another member has already taught me" in refused.content
    assert "/kitbooth allow-lookalike" in refused.content and arena.alice.name not in refused.content
    assert await s.db.list_concepts(owner_id=arena.bob.id) == []  # nothing written
    assert s.store.list(keys.user_prefix(arena.bob.id)) == []

    carol = admin_of(arena)
    r = await carol.slash(arena.channel, "kitbooth allow-lookalike", member=arena.bob, lookalike=arena.alice)
    assert r.response.ephemeral and "may each train their own face" in r.response.content
    again = await _train(arena.bob, arena, selfies(4))
    assert "Training your face" in again.content
    (bobs,) = await s.db.list_concepts(owner_id=arena.bob.id, kind="face")
    assert bobs.status == "training" and await s.db.face_reference(bobs.id) is not None


async def test_allow_lookalike_needs_two_members_and_a_manager(arena):
    with pytest.raises(SetupError, match="not visible"):  # Manage Server only: a member cannot even see it
        await arena.alice.slash(arena.channel, "kitbooth allow-lookalike", member=arena.bob, lookalike=arena.alice)
    assert await arena.services.db.lookalikes_allowed(arena.guild.id, arena.bob.id) == set()
    carol = admin_of(arena)
    r = await carol.slash(arena.channel, "kitbooth allow-lookalike", member=arena.bob, lookalike=arena.bob)
    assert "two different members" in r.response.content
    assert await arena.services.db.lookalikes_allowed(arena.guild.id, arena.bob.id) == set()


async def test_forget_deletes_the_reference_row_file_and_allowances(arena):
    s = arena.services
    face = await make_ready_face(s, arena.alice.id)
    ref = encode_reference(np.linspace(-0.2, 0.2, 128))
    await s.db.save_face_reference(face.id, arena.alice.id, ref, 4)
    s.store.put_bytes(keys.reference_key(arena.alice.id, face.id), ref)
    await s.db.allow_lookalike(arena.guild.id, arena.alice.id, arena.bob.id, by=1)
    await forget.forget_user(s, arena.alice.id)
    assert await s.db.face_reference(face.id) is None
    assert await s.db.other_face_references(arena.bob.id) == []
    assert await s.db.lookalikes_allowed(arena.guild.id, arena.bob.id) == set()
    assert s.store.list(keys.user_prefix(arena.alice.id)) == []


async def test_generate_sends_the_reference_by_key_and_the_servers_best_of(arena):
    s = arena.services
    face = await make_ready_face(s, arena.alice.id)
    ref = encode_reference(np.full(128, 0.05))
    await s.db.save_face_reference(face.id, arena.alice.id, ref, 4)
    await arena.alice.slash(arena.channel, "generate", prompt="celebrating a goal", count=3)
    ((_, payload),) = await queued(s)
    p = contract.GeneratePayload.from_dict(payload)
    assert p.reference_key == keys.reference_key(arena.alice.id, face.id)
    assert p.candidates == 6 and p.face_detail == "auto"  # default: 2× shown
    assert ref.hex() not in str(payload)

    carol = admin_of(arena)
    r = await carol.slash(arena.channel, "kitbooth settings", best_of=4)
    fields = {f.name: f.value for f in r.response.embeds[0].fields}
    assert "best-of-N → 4" in r.response.content and "4 candidates" in fields["Best-of-N (likeness)"]
    assert (await s.db.guild_settings(arena.guild.id)).best_of == 4
    await s.arq.flushdb()
    await arena.alice.slash(arena.channel, "generate", prompt="celebrating a goal", count=3)
    ((_, payload),) = await queued(s)
    assert payload["candidates"] == contract.limits.CANDIDATES_MAX  # 12 capped at 8
    await carol.slash(arena.channel, "kitbooth settings", best_of=1)
    await s.arq.flushdb()
    await arena.alice.slash(arena.channel, "generate", prompt="celebrating a goal", count=3)
    ((_, payload),) = await queued(s)
    assert payload["candidates"] is None  # off
