"""/squad (issue 15) through SimCord: invitations only the named member can answer (persistent buttons, forged ids
refused), a decline or a member who can't be invited stops everything before any GPU work, and a squad picture
belongs to every member in it (Delete button, /forget). The all-approve test runs the real worker (tiny model)."""

from __future__ import annotations

import io

import discord
import pytest
from arq.jobs import Job as ArqJob
from PIL import Image

from bot import squads
from gpu_worker import contract
from storage import keys
from tests.bot.conftest import emit, make_ready_face, queued, tiny_png
from tests.bot.in_process import running_worker, until, worker_settings

KIT = "Arsenal home"


@pytest.fixture
def bot_settings(tmp_path, redis_url, tiny_model_dir):
    return worker_settings(tmp_path, redis_url, tiny_model_dir, tag="squad")


@pytest.fixture
def carol(arena):
    return arena.guild.add_member(arena.env.create_user("carol"))


async def _faces(s, *members) -> None:
    from tests.worker.conftest import face_artifact
    from training.artifact import save_artifact

    for seed, m in enumerate(members, start=1):
        await make_ready_face(s, m.id, tokens=(f"<kb-face-{seed}>",), data=save_artifact(face_artifact(seed)))


def _invite(arena, member):
    """The invitation message addressed to ``member`` (it carries their Approve button)."""
    for m in reversed(arena.channel.history()):
        if m.content.startswith(member.mention) and "Approve?" in m.content:
            return m
    raise AssertionError(f"no invitation for {member}")


def _text(r) -> str:
    return "\n".join(m.content for m in [r.response, *r.followups] if m is not None)


async def _squad_jobs(s, uid):
    return await s.db.list_jobs(user_id=uid, kind="squad")


@pytest.mark.slow
async def test_a_squad_of_three_who_all_approve_gets_one_picture_that_each_can_delete(arena, carol, bot_settings,
                                                                                      store):
    s, alice, bob, ch = arena.services, arena.alice, arena.bob, arena.channel
    await _faces(s, alice, bob, carol)
    r = await alice.slash(ch, "squad", prompt="lifting the trophy", kit=KIT, member1=bob, member2=carol)
    assert "Nothing is drawn until everyone approves" in _text(r), _text(r)
    await bob.click(_invite(arena, bob), label="✅ Approve")
    assert await _squad_jobs(s, alice.id) == [] and await queued(s) == []  # nothing before everyone approved
    async with running_worker(bot_settings, store) as worker:
        await carol.click(_invite(arena, carol), label="✅ Approve")
        (job,) = await _squad_jobs(s, alice.id)
        assert "Everyone approved" in ch.last_message.content and "queue" in ch.last_message.content
        assert job.payload["approved"] == [alice.id, bob.id, carol.id]
        assert [m["face"]["key"].split("/")[1] for m in job.payload["members"]] == [str(alice.id), str(bob.id),
                                                                                   str(carol.id)]

        async def finished():
            j = await s.db.get_job(job.id)
            return j if j.status in ("done", "failed") else None

        j = await until(arena, finished, timeout=60)
        assert j.status == "done", j.error
        result = ch.last_message
        assert "Squad photo of" in result.content and all(m.mention in result.content for m in (alice, bob, carol))
        png = await result.attachments[0].read()
        assert len(result.attachments) == 1 and png.startswith(b"\x89PNG")
        params = Image.open(io.BytesIO(png)).info["parameters"]  # no face on the tiny model: the column layout
        assert "Squad: 3" in params and "Squad faces: columns" in params and "one concept per face" in params
        (out,) = await s.db.list_outputs(job_id=job.id)
        assert s.store.exists(out.artifact_key)

        # The worker re-checks the approval set: a payload naming a face nobody approved is refused.
        dave = arena.guild.add_member(arena.env.create_user("dave"))
        tampered = dict(job.payload, job_id=job.id + 1000, output_prefix=keys.outputs_prefix(alice.id, job.id + 1000),
                        members=[
            *job.payload["members"][:2], {"user_id": dave.id, "face": {"key": keys.concept_key(dave.id, 1),
                                                                       "kind": "face"}, "reference_key": None}])
        await s.arq.enqueue_job(contract.SQUAD_JOB, tampered, _job_id="kb-squad-tampered",
                                _queue_name=s.settings.queue_name)
        res = await ArqJob("kb-squad-tampered", s.arq, _queue_name=s.settings.queue_name).result(timeout=30)
        assert res["ok"] is False and "approved" in res["reason"]
        assert worker is not None

    r = await dave.click(result, label="🗑 Delete")
    assert "Only the members in this squad photo" in r.response.content
    r = await carol.click(result, label="🗑 Delete")  # a member who is not the requester
    assert result.id not in {m.id for m in ch.history()}
    assert not s.store.exists(out.artifact_key) and await s.db.list_outputs(job_id=job.id) == []


async def test_one_decline_cancels_it_and_tells_only_who_declined(arena, carol):
    s, alice, bob, ch = arena.services, arena.alice, arena.bob, arena.channel
    await _faces(s, alice, bob, carol)
    await alice.slash(ch, "squad", prompt="a team photo", kit=KIT, member1=bob, member2=carol)
    await bob.click(_invite(arena, bob), label="✖ Decline")
    notice = ch.last_message.content
    assert notice == f"{alice.mention}, your squad photo was cancelled: {bob.mention} declined."
    r = await carol.click(_invite(arena, carol), label="✅ Approve")  # too late: nothing runs
    assert "isn't waiting for answers" in r.response.content
    assert await _squad_jobs(s, alice.id) == [] and await queued(s) == []


async def test_a_timeout_cancels_it(arena):
    s, alice, bob, ch = arena.services, arena.alice, arena.bob, arena.channel
    await _faces(s, alice, bob)
    await alice.slash(ch, "squad", prompt="a team photo", kit=KIT, member1=bob)
    assert await squads.expire_due(s, arena.bot, now=10**12) == 1
    assert ch.last_message.content == f"{alice.mention}, your squad photo was cancelled: {bob.mention} didn't " \
                                      "answer in time."
    r = await bob.click(_invite(arena, bob), label="✅ Approve")
    assert "isn't waiting" in r.response.content and await queued(s) == []


async def test_a_member_with_invitations_off_or_who_blocked_you_cannot_be_named(arena, carol):
    s, alice, bob, ch = arena.services, arena.alice, arena.bob, arena.channel
    await _faces(s, alice, bob, carol)
    r = await bob.slash(ch, "me", squads="off")
    assert "off" in r.response.content and r.response.ephemeral
    r = await carol.slash(ch, "me", block=alice)
    assert r.response.ephemeral
    for member in (bob, carol):
        r = await alice.slash(ch, "squad", prompt="a team photo", kit=KIT, member1=member)
        assert r.response.ephemeral and r.response.content == f"{member.mention} can't be invited.", \
            r.response.content
    assert [m for m in ch.history() if "Approve?" in m.content] == []
    await bob.slash(ch, "me", squads="on")
    await carol.slash(ch, "me", unblock=alice)
    r = await alice.slash(ch, "squad", prompt="a team photo", kit=KIT, member1=bob, member2=carol)
    assert "Nothing is drawn" in _text(r)


async def test_a_forged_approval_is_refused(arena, carol):
    s, alice, bob, ch = arena.services, arena.alice, arena.bob, arena.channel
    await _faces(s, alice, bob, carol)
    await alice.slash(ch, "squad", prompt="first squad", kit=KIT, member1=bob)
    bob_invite = _invite(arena, bob)
    await carol.slash(ch, "squad", prompt="second squad", kit=KIT, member1=bob)
    # Wrong user: Carol presses Bob's button.
    r = await carol.click(bob_invite, label="✅ Approve")
    assert "only they can answer" in r.response.content
    # Wrong squad: Bob's token of the first squad on a button naming the second squad.
    first, second = sorted({sq.id for sq in await s.db.squads_with(bob.id)})
    token = next(m.token for m in await s.db.squad_members(first) if m.user_id == bob.id)
    forged = f"kbsq:a:{second}:{bob.id}:{token}"
    view = discord.ui.View(timeout=None)
    view.add_item(discord.ui.Button(label="forged", custom_id=forged))
    msg = await arena.bot.get_channel(ch.id).send("forged", view=view)
    r = await bob.click(msg, label="forged")
    assert "isn't a valid squad invitation" in r.response.content
    assert all(m.answer == "pending" for m in await s.db.squad_members(second) if m.user_id == bob.id)
    assert await queued(s) == []


async def test_one_members_forget_deletes_the_squad_picture_and_its_messages_after_a_restart(arena):
    s, alice, bob, ch = arena.services, arena.alice, arena.bob, arena.channel
    await _faces(s, alice, bob)
    await alice.slash(ch, "squad", prompt="on the open-top bus", kit=KIT, member1=bob)
    await arena.env.restart_bot()  # the invitation is persistent: its button works after a restart
    s = arena.services
    await bob.click(_invite(arena, bob), label="✅ Approve")
    (job,) = await _squad_jobs(s, alice.id)
    key = keys.output_key(alice.id, job.id, 0)  # act as the worker: the picture and its job.done event
    s.store.put_bytes(key, tiny_png((10, 200, 10)))
    await emit(s, "job.done", job.id, alice.id, "squad", output_keys=[key], seeds=[1], nsfw=[False],
               member_ids=[alice.id, bob.id])
    await arena.bot.consumer.drain()
    result = ch.last_message
    assert result.attachments and "Squad photo of" in result.content
    assert any("open-top bus" in m.content for m in ch.history())

    shown = await bob.slash(ch, "forget")
    await bob.click(shown.response, label="Delete everything")
    left = ch.history()
    assert not any("open-top bus" in m.content or m.attachments or "Squad photo" in m.content for m in left), \
        [m.content for m in left]
    assert not s.store.exists(key) and await s.db.get_job(job.id) is None
    assert await s.db.squads_with(bob.id) == [] and await s.db.squads_with(alice.id) == []
    assert await s.db.ready_face(alice.id) is not None  # Alice's own face stays hers


async def test_a_squad_message_discord_refuses_to_delete_is_named_by_forget(arena):
    s, alice, bob, ch = arena.services, arena.alice, arena.bob, arena.channel
    await _faces(s, alice, bob)
    await alice.slash(ch, "squad", prompt="on the open-top bus", kit=KIT, member1=bob)
    invite = _invite(arena, bob)  # shows alice's prompt and names bob
    arena.env.inject_error("DELETE", f"/channels/*/messages/{invite.id}", status=503, times=None)
    shown = await bob.slash(ch, "forget")
    done = await bob.click(shown.response, label="Delete everything")
    assert f"/{invite.id}" in done.response.content, done.response.content  # a jump link to delete it by hand
    assert invite.id in {m.id for m in ch.history()} and await s.db.squads_with(bob.id) == []
