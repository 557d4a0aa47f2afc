"""Isolation: every path by which member B (Bob) might reach member A's (Alice's) face, photos, images, jobs or
exports is refused — through the real bot on SimCord (forged button ids, autocomplete, prompt text, /export,
/kit import of her face file, forged event-stream entries) and through the real worker (forged job payloads naming
her keys: the worker re-checks ownership in every payload it receives). Each path is a row of the suite's table in
the figures; each scenario ends with ``kitbooth doctor``'s scan finding nothing.
"""

from __future__ import annotations

import asyncio

import discord
import pytest
from simcord.actors import _component_interaction

from gpu_worker import contract
from storage import keys
from tests.bot.conftest import emit, finish_generate, make_ready_face, queued
from tests.bot.in_process import running_worker, until, worker_settings
from tests.reliability.figures import count, row

SUITE = "isolation"


def _face_bytes(seed: int) -> bytes:
    from tests.worker.conftest import face_artifact
    from training.artifact import save_artifact

    return save_artifact(face_artifact(seed))


def _text(r) -> str:
    return "\n".join(m.content for m in [r.response, *r.followups] if m is not None)


def _refused(name: str, r, *, ephemeral: bool = True) -> str:
    text = _text(r)
    assert text and "Traceback" not in text, (name, text)
    if ephemeral:
        assert r.response.ephemeral, (name, text)
    row(SUITE, name, "refused")
    count(SUITE, paths=1, refused=1)
    return text


async def _alice_result(arena):
    """Alice's ready face and a finished generate whose images the bot posted with their buttons."""
    s = arena.services
    face = await make_ready_face(s, arena.alice.id, tokens=("<kb-alice-face>",), data=_face_bytes(1))
    await s.db.record_consent(arena.alice.id)
    r = await arena.alice.slash(arena.channel, "generate", prompt="holding the trophy", count=2, seed=11)
    assert "queue" in _text(r), _text(r)
    (job,) = await s.db.list_jobs(user_id=arena.alice.id, kind="generate")
    out = await finish_generate(s, job)
    await arena.bot.consumer.drain()
    await s.arq.delete(s.settings.queue_name)  # as if the worker had taken it
    return face, job, out, arena.channel.last_message


async def _alice_untouched(s, face, job, out) -> None:
    assert await s.db.ready_face(face.owner_id) is not None and s.store.exists(face.artifact_key)
    assert all(s.store.exists(k) for k in out) and (await s.db.get_job(job.id)).status == "done"
    assert [o.artifact_key for o in await s.db.list_outputs(job_id=job.id)] == sorted(out, reverse=True)


async def test_member_b_cannot_reach_member_a_through_the_bot(arena, doctor_clean):
    s, alice, bob, ch = arena.services, arena.alice, arena.bob, arena.channel
    face, job, out, msg = await _alice_result(arena)
    stored = arena.env.backend.get_message(ch.id, msg.id)

    # 1. Buttons with forged custom ids: Alice's job, the owner field rewritten to Bob. Sent by a modified client
    # against her message, discord.py drops it (no such button there); on a message that does carry such an id
    # (here: posted by the bot for the test), the owner is re-checked against the job's row.
    for action in ("upscale", "reroll", "vary", "delete"):
        cid = contract.button_id(action, job.id, 1, bob.id)
        r = await _component_interaction(bob, stored, {"custom_id": cid, "component_type": 2})
        assert not r.acknowledged and await queued(s) == []
    row(SUITE, "button id absent from the message", "dropped by discord.py")
    count(SUITE, paths=1, refused=1)
    view = discord.ui.View(timeout=None)
    for action in ("upscale", "reroll", "vary", "delete"):
        view.add_item(discord.ui.Button(label=action, custom_id=contract.button_id(action, job.id, 1, bob.id)))
    planted = await arena.bot.get_channel(ch.id).send("buttons", view=view)
    for action in ("upscale", "reroll", "vary", "delete"):
        r = await bob.click(planted, label=action)
        _refused(f"button {action} (forged owner)", r)
    assert await queued(s) == [] and ch.history()[-1].id == planted.id
    await planted.delete()

    # 2. Autocomplete: another server's kit and Alice's face name are never offered to Bob.
    other = arena.env.create_guild(name="Elsewhere")
    await s.db.add_kit(guild_id=other.id, name="Secret Away Kit", description="gold shirt", created_by=alice.id)
    choices = await bob.autocomplete(ch, "generate", "kit", "Secret", prompt="me")
    assert not [c for c in choices if "Secret" in c["name"]], choices
    choices = await bob.autocomplete(ch, "generate", "style", face.name, prompt="me")
    assert not [c for c in choices if c["name"] == face.name and c.get("value") == face.name], choices
    row(SUITE, "autocomplete (other server's kit, A's face)", "not offered")
    count(SUITE, paths=1, refused=1)

    # 3. Prompt text naming Alice's trigger token.
    r = await bob.slash(ch, "generate", prompt="<kb-alice-face> scoring a goal")
    _refused("prompt naming A's trigger", r)
    assert await queued(s) == []

    # 4. /export by Bob (no face of his own): refused; nothing naming Alice's keys is queued.
    await s.db.record_consent(bob.id)
    r = await bob.slash(ch, "export")
    _refused("/export by B", r)
    assert await queued(s) == []

    # 5. /kit import of Alice's face file by an admin (Bob made admin of the server).
    role = arena.guild.create_role("Mods", permissions=discord.Permissions(manage_guild=True))
    carol = arena.guild.add_member(arena.env.create_user("carol"), roles=[role])
    r = await carol.slash(ch, "kit import", name="Alice Lookalike", file=("alice-kb-face.safetensors",
                                                                           s.store.get_bytes(face.artifact_key)))
    _refused("/kit import of A's face file", r)
    assert await s.db.get_kit(arena.guild.id, "Alice Lookalike") is None
    assert not s.store.list(keys.guild_prefix(arena.guild.id) + "concepts/")

    # 6. Forged event-stream entries: a job.done for Alice's job claiming Bob, and one for Bob's own (new) job
    # listing Alice's images and face as its outputs.
    await emit(s, "job.done", job.id, bob.id, "generate", posted=False, output_keys=[keys.output_key(bob.id, job.id, 0)])
    bob_job = await s.db.create_job(kind="generate", user_id=bob.id, guild_id=arena.guild.id, channel_id=ch.id,
                                    payload={"prompt": "me", "count": 1})
    await emit(s, "job.done", bob_job.id, bob.id, "generate", posted=False,
               output_keys=[out[0], face.artifact_key, f"users/{bob.id}/../{alice.id}/outputs/{job.id}/0.png"],
               target=contract.DiscordTarget(channel_id=ch.id, user_id=bob.id))
    await arena.bot.consumer.drain()
    assert await s.db.list_outputs(job_id=bob_job.id) == []  # none of her keys became his outputs
    shown_to_bob = [m for m in ch.history() if f"<@{bob.id}>" in m.content and m.attachments]
    assert shown_to_bob == [], [m.content for m in shown_to_bob]  # her images were never attached for him
    row(SUITE, "forged stream entries (A's job as B; A's keys in B's job)", "ignored")
    count(SUITE, paths=1, refused=1)
    await s.db.update_job(bob_job.id, status="failed")

    await _alice_untouched(s, face, job, out)
    await doctor_clean(s.settings, SUITE)


@pytest.fixture
def bot_settings(tmp_path, redis_url, tiny_model_dir):
    return worker_settings(tmp_path, redis_url, tiny_model_dir, tag="iso")


@pytest.mark.slow
async def test_the_worker_refuses_forged_payloads_naming_member_a_keys(arena, bot_settings, store, doctor_clean):
    s, alice, bob, ch = arena.services, arena.alice, arena.bob, arena.channel
    face, job, out, _msg = await _alice_result(arena)
    await s.db.ensure_user(bob.id)
    ref = contract.ConceptRef(key=face.artifact_key, kind="face")
    tgt = contract.DiscordTarget(channel_id=ch.id, user_id=bob.id, guild_id=arena.guild.id)

    async def forged(kind: str, build) -> int:
        row_ = await s.db.create_job(kind=kind, user_id=bob.id, guild_id=arena.guild.id, channel_id=ch.id)
        payload = build(row_.id)
        await s.db.update_job(row_.id, payload=payload.to_dict())
        func = {"generate": contract.GENERATE_JOB, "upscale": contract.UPSCALE_JOB, "export": contract.EXPORT_JOB,
                "train": contract.TRAIN_JOB}[kind]
        arq_id = contract.arq_job_id(row_.id, 0 if kind == "train" else None)
        await s.arq.enqueue_job(func, payload.to_dict(), _job_id=arq_id, _queue_name=s.settings.queue_name)
        return row_.id

    def gen(jid, **kw):
        base = dict(job_id=jid, user_id=bob.id, prompt="me at the stadium", output_prefix=keys.outputs_prefix(bob.id, jid),
                    target=tgt, guild_id=arena.guild.id, count=1, steps=2, width=64, height=64)
        return contract.GeneratePayload(**{**base, **kw})

    cases = {
        "payload: generate with A's face": await forged("generate", lambda j: gen(j, face=ref)),
        "payload: vary A's image": await forged("generate", lambda j: gen(j, variation_of=out[0])),
        "payload: B's job writing into A's folder": await forged(
            "generate", lambda j: gen(j, output_prefix=keys.outputs_prefix(alice.id, j))),
        "payload: A's reference identity": await forged(
            "generate", lambda j: gen(j, reference_key=keys.reference_key(alice.id, face.id))),
        "payload: upscale A's image": await forged("upscale", lambda j: contract.UpscalePayload(
            job_id=j, user_id=bob.id, source_key=out[0], output_key=keys.output_key(bob.id, j, 0, "png"), target=tgt)),
        "payload: export A's face": await forged("export", lambda j: contract.ExportPayload(
            job_id=j, user_id=bob.id, concept_key=face.artifact_key, output_prefix=f"users/{bob.id}/exports/{j}/",
            target=tgt)),
        "payload: train on A's photos": await forged("train", lambda j: contract.TrainPayload(
            job_id=j, user_id=bob.id, concept_id=999, kind="face", method="pivotal", name="face",
            photo_keys=[keys.photo_key(alice.id, face.id, 0)], artifact_key=keys.concept_key(bob.id, 999),
            checkpoint_prefix=keys.checkpoint_prefix(bob.id, 999), target=tgt, steps=2)),
    }
    async with running_worker(bot_settings, store):
        for name, jid in cases.items():
            async def ended(jid=jid):
                j = await s.db.get_job(jid)
                return j if j.status in ("done", "failed", "cancelled") else None

            j = await until(arena, ended, 120, interval=0.05)
            assert j.status == "failed" and j.error and "went wrong" not in j.error, (name, j.status, j.error)
            row(SUITE, name, "refused by the worker")
            count(SUITE, paths=1, refused=1, worker_rechecks=1)
        await asyncio.sleep(0.1)
    await arena.bot.consumer.drain()
    assert store.list(keys.user_prefix(bob.id)) == []  # nothing was drawn, copied or exported for Bob
    await _alice_untouched(s, face, job, out)
    await doctor_clean(s.settings, SUITE)
