"""/me, /forget (confirm button, no trace, owner-only, persistent, expiry) and /export (enqueue + DM delivery)."""

from __future__ import annotations

import pytest
from simcord import SetupError

from bot.cogs import privacy
from gpu_worker import contract
from storage import keys
from tests.bot.conftest import emit
from tests.bot.test_forget import db_traces, redis_traces


@pytest.fixture
def bot_cogs():
    return ["bot.cogs.privacy"]


async def give_face(s, uid, guild_id, *, training=False):
    await s.db.record_consent(uid)
    face = await s.db.create_concept(owner_id=uid, guild_id=guild_id, kind="face", name="face",
                                     method="pivotal", status="ready")
    key = keys.concept_key(uid, face.id)
    s.store.put_bytes(key, b"concept-bytes")
    face = await s.db.update_concept(face.id, artifact_key=key, size_bytes=1_500_000)
    return face


async def result_message(arena, uid, text="your images"):
    """A finished generation whose result the bot posted in the channel."""
    s = arena.services
    msg = await arena.bot.get_channel(arena.channel.id).send(text)
    job = await s.db.create_job(kind="generate", user_id=uid, guild_id=arena.guild.id, channel_id=arena.channel.id,
                                payload={"prompt": "me lifting the cup", "count": 2})
    await s.db.update_job(job.id, status="done", message_id=msg.id)
    for i in range(2):
        s.store.put_bytes(keys.output_key(uid, job.id, i), b"png")
        await s.db.add_output(job_id=job.id, user_id=uid, artifact_key=keys.output_key(uid, job.id, i), seed=i)
    return job, msg


def _text(r):
    return "\n".join(m.content for m in [r.response, *r.followups] if m is not None)


# --- /forget ------------------------------------------------------------------------------------------
async def test_forget_confirm_deletes_everything_and_reports(arena):
    s, alice = arena.services, arena.alice
    await give_face(s, alice.id, arena.guild.id)
    job, msg = await result_message(arena, alice.id)
    await give_face(s, arena.bob.id, arena.guild.id)
    shown = await alice.slash(arena.channel, "forget")
    assert shown.response.ephemeral and "cannot be undone" in shown.response.content
    assert s.store.list(keys.user_prefix(alice.id))  # nothing happened yet
    start = len(arena.env.http_requests)
    done = await alice.click(shown.response, label="Delete everything")
    first = arena.env.http_requests[start]
    assert first.path.endswith("/callback")  # acknowledged before the work
    text = done.response.content
    assert "no longer holds anything" in text and "generated images: 2" in text and "face concepts: 1" in text
    assert "Discord messages showing your pictures or prompts: 1 message deleted" in text
    assert any(r.method == "DELETE" and r.path.endswith(f"/messages/{msg.id}") for r in arena.env.http_requests)
    assert not done.response.components  # the buttons are gone
    assert s.store.list(keys.user_prefix(alice.id)) == []
    assert await db_traces(s, alice.id) == []
    assert await redis_traces(s, alice.id, {job.id}) == []
    assert await s.db.ready_face(arena.bob.id) is not None and s.store.list(keys.user_prefix(arena.bob.id))


async def test_someone_else_cannot_press_your_forget_button(arena):
    s, alice, bob = arena.services, arena.alice, arena.bob
    await give_face(s, alice.id, arena.guild.id)
    shown = await alice.slash(arena.channel, "forget")
    # The prompt is ephemeral: Bob cannot even see it ...
    with pytest.raises(SetupError):
        await bob.click(shown.response, label="Delete everything")
    # ... and a forged press of Alice's custom_id by Bob is refused (SimCord's low-level dispatch).
    from simcord.actors import _component_interaction

    stored = arena.env.backend.get_message(arena.channel.id, shown.response.id)
    custom_id = next(c["custom_id"] for row in stored.components for c in row["components"]
                     if c.get("label") == "Delete everything")
    forged = await _component_interaction(bob, stored, {"custom_id": custom_id, "component_type": 2})
    assert forged.response.ephemeral and "belongs to someone else" in forged.response.content
    assert await s.db.ready_face(alice.id) is not None
    assert s.store.list(keys.user_prefix(alice.id))


async def test_forget_cancel_and_expiry_and_restart(arena):
    s, alice = arena.services, arena.alice
    await give_face(s, alice.id, arena.guild.id)
    shown = await alice.slash(arena.channel, "forget")
    r = await alice.click(shown.response, label="Cancel")
    assert "Nothing was deleted" in r.response.content
    assert await s.db.ready_face(alice.id) is not None
    # An old confirmation (sent before a restart, 20 minutes ago) is refused without deleting anything.
    old = privacy.forget_view(alice.id, issued=0)
    channel = arena.bot.get_channel(arena.channel.id)
    stale = await channel.send("confirm?", view=old)
    await arena.env.restart_bot()
    r = await alice.click(stale, label="Delete everything")
    assert "expired" in r.response.content
    assert await arena.env.bot.services.db.ready_face(alice.id) is not None
    # A fresh one still works after the restart (persistent button).
    fresh = await arena.env.bot.get_channel(arena.channel.id).send("confirm?", view=privacy.forget_view(alice.id))
    r = await alice.click(fresh, label="Delete everything")
    assert "no longer holds anything" in r.response.content
    assert await arena.env.bot.services.db.ready_face(alice.id) is None


# --- /me ------------------------------------------------------------------------------------------------
async def test_me_without_anything(arena):
    r = await arena.alice.slash(arena.channel, "me")
    e = r.response.embeds[0]
    fields = {f.name: f.value for f in e.fields}
    assert "haven't trained" in fields["Face"] and "20 of 20 images left" in fields["Today"]
    assert r.response.ephemeral


async def test_me_with_face_training_and_images(arena):
    s, alice = arena.services, arena.alice
    await give_face(s, alice.id, arena.guild.id)
    new = await s.db.create_concept(owner_id=alice.id, guild_id=arena.guild.id, kind="face", name="face",
                                    method="pivotal", status="training")
    job = await s.db.create_job(kind="train", user_id=alice.id, concept_id=new.id)
    await s.db.update_job(job.id, status="running")
    await result_message(arena, alice.id)
    r = await alice.slash(arena.channel, "me")
    fields = {f.name: f.value for f in r.response.embeds[0].fields}
    assert "ready" in fields["Face"] and "1.5 MB" in fields["Face"] and "training now" in fields["Face"]
    assert "18 of 20 images left" in fields["Today"]
    assert "me lifting the cup" in fields["Recent images"] and "discord.com/channels" in fields["Recent images"]
    assert "1 queued or running" in fields["Jobs"]


# --- /export ----------------------------------------------------------------------------------------------
async def test_export_without_face_refused(arena):
    r = await arena.alice.slash(arena.channel, "export")
    assert "no trained face" in r.response.content and r.response.ephemeral
    assert await arena.services.db.list_jobs() == []


async def test_export_enqueues_and_delivers_by_dm(arena):
    s, alice = arena.services, arena.alice
    face = await give_face(s, alice.id, arena.guild.id)
    r = await alice.slash(arena.channel, "export")
    assert "DM" in _text(r)
    (job,) = await s.db.list_jobs(user_id=alice.id)
    assert job.kind == "export" and job.status == "queued"
    (queued,) = await s.arq.queued_jobs(queue_name=s.settings.queue_name)
    assert queued.function == contract.EXPORT_JOB
    p = contract.ExportPayload.from_dict(queued.args[0])
    assert p.concept_key == face.artifact_key and p.output_prefix == f"users/{alice.id}/exports/{job.id}/"
    assert p.target.channel_id == alice.user.dm_channel.id  # the worker posts into the DM
    # The worker converted it but could not post: the events consumer delivers it by DM (kitbooth.render).
    files = [p.output_prefix + "face-a1111.safetensors", p.output_prefix + "face-kohya.safetensors"]
    for k in files:
        s.store.put_bytes(k, b"file " + k.encode())
    await emit(s, "job.done", job.id, alice.id, "export", target=p.target,
               file_keys=files + ["users/1/elsewhere.safetensors"])
    await arena.bot.consumer.drain()
    dm = alice.user.dm_channel.last_message
    assert "a1111, kohya" in dm.content and len(dm.attachments) == 2  # another user's key is never read
    assert [a.filename for a in dm.attachments] == ["face-a1111.safetensors", "face-kohya.safetensors"]
    assert await dm.attachments[0].read() == b"file " + files[0].encode()
    assert (await s.db.get_job(job.id)).status == "done"
