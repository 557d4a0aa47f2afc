"""/forget with the real worker (tiny model, CPU, in-process, posting through SimCord's REST) while Discord
misbehaves: an expired interaction token (the worker falls back to a channel message), 5xx on every edit of the
original reply (the bot delivers), 404 on ``@original`` (a channel message), and a training still running when
/forget is pressed. Afterwards no channel message shows Alice's pictures, prompts or mention, Redis holds nothing
naming her id, prompts or interaction tokens, and the database files' bytes hold none of them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from arq.constants import in_progress_key_prefix

from gpu_worker import contract
from tests.bot.conftest import fake_checker, make_ready_face, selfies
from tests.bot.in_process import running_worker, simcord_poster, until, worker_settings

pytestmark = pytest.mark.slow

PROMPTS = {"expired": "zebra striped scarf at anfield", "edit5xx": "quokka juggling at old trafford",
           "gone404": "narwhal penalty at the emirates", "ok": "axolotl header at goodison"}
BOB_PROMPT = "bob walrus keeper at villa park"


@pytest.fixture
def bot_settings(tmp_path, redis_url, tiny_model_dir):
    return worker_settings(tmp_path, redis_url, tiny_model_dir, tag="fw", train_steps=2000, train_resolution=64)


@pytest.fixture
def bot_seams():
    return {"photo_checker": fake_checker()}


@pytest.fixture
async def worker(arena, bot_settings, store):
    # The worker posts with its own REST client; here SimCord's (the seam), so faults hit it too.
    async with running_worker(bot_settings, store, poster=simcord_poster(arena)) as w:
        yield w


async def _until(arena, pred, timeout=120.0):
    return await until(arena, pred, timeout, interval=0.05)


async def _generate(arena, member, prompt):
    s = arena.services
    before = {j.id for j in await s.db.list_jobs(user_id=member.id)}
    r = await member.slash(arena.channel, "generate", prompt=prompt, count=1, seed=1)
    assert "queue" in r.response.content, r.response.content
    (job,) = [j for j in await s.db.list_jobs(user_id=member.id) if j.id not in before]

    async def finished():
        j = await s.db.get_job(job.id)
        return j if j.status in ("done", "failed") else None

    j = await _until(arena, finished)
    assert j.status == "done", j.error
    return j


def _sync_clock(env) -> None:
    """SimCord's virtual clock starts in 2026-01; the worker judges a token by the wall clock."""
    env.backend.advance_clock(time.time() - env.backend.clock.now().timestamp())


def _strings(value) -> list[bytes]:
    if isinstance(value, bytes):
        return [value]
    if isinstance(value, str):
        return [value.encode()]
    if isinstance(value, dict):
        return [b for k, v in value.items() for b in _strings(k) + _strings(v)]
    if isinstance(value, list | tuple | set):
        return [b for v in value for b in _strings(v)]
    return [str(value).encode()]


async def redis_bytes(r) -> list[bytes]:
    """Every key name and value in the test's Redis DB (the test may scan; the bot never does)."""
    out = []
    async for key in r.scan_iter(match="*", count=1000):
        out.append(key)
        typ = (await r.type(key)).decode()
        if typ == "string":
            out += _strings(await r.get(key))
        elif typ == "hash":
            out += _strings(await r.hgetall(key))
        elif typ == "list":
            out += _strings(await r.lrange(key, 0, -1))
        elif typ == "set":
            out += _strings(await r.smembers(key))
        elif typ == "zset":
            out += _strings(await r.zrange(key, 0, -1))
        elif typ == "stream":
            out += _strings(await r.xrange(key))
    return out


def db_file_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())


async def test_forget_leaves_nothing_after_faults_and_a_running_job(arena, worker, tmp_path):
    s, env, alice, bob, ch = arena.services, arena.env, arena.alice, arena.bob, arena.channel
    from tests.worker.conftest import face_artifact
    from training.artifact import save_artifact

    for member, seed in ((alice, 1), (bob, 2)):
        await make_ready_face(s, member.id, tokens=(f"<kb-face-{seed}>",), data=save_artifact(face_artifact(seed)))

    # Expired token (SimCord's clock is months behind the wall clock): the worker posts a channel message.
    await _generate(arena, alice, PROMPTS["expired"])
    assert f"<@{alice.id}>" in ch.last_message.content and ch.last_message.attachments
    _sync_clock(env)
    # 5xx on every edit of the original reply: the worker gives up, the bot delivers.
    env.inject_error("PATCH", "/webhooks/*/messages/@original", status=503, times=None)
    await _generate(arena, alice, PROMPTS["edit5xx"])
    env.backend.faults.clear()
    # The original reply is gone (404): the worker falls back to a channel message.
    env.inject_error("PATCH", "/webhooks/*/messages/@original", status=404, code=10008, times=None,
                     message="Unknown Message")
    await _generate(arena, alice, PROMPTS["gone404"])
    env.backend.faults.clear()
    await _generate(arena, alice, PROMPTS["ok"])  # the worker edits the "queued" reply in place
    await _generate(arena, bob, BOB_PROMPT)

    def alice_shown():
        return [m for m in ch.history() if f"<@{alice.id}>" in m.content or any(p in m.content for p in PROMPTS.values())
                or (m.attachments and BOB_PROMPT not in m.content)]

    assert len(alice_shown()) >= 5  # echoes, worker posts, the bot's delivery

    # A training that is still running when /forget is pressed.
    shown = await alice.slash(ch, "train")
    r = await alice.submit_modal(shown, {"photos": selfies(4), "consent": ["yes"]})
    assert "queue" in r.response.content, r.response.content
    (train,) = await s.db.list_jobs(user_id=alice.id, kind="train")
    slice0 = in_progress_key_prefix + contract.arq_job_id(train.id, 0)
    await _until(arena, lambda: s.arq.exists(slice0))
    tokens = {str(j.payload.get("target", {}).get("interaction_token")) for j in await s.db.list_jobs(user_id=alice.id)}
    assert len(tokens) == 5 and "None" not in tokens

    kinds = [m.kind for m in await s.db.list_messages(alice.id)]
    assert {"echo", "job.done", "delivery"} <= set(kinds), kinds  # every way a result reached the channel
    needles = [str(alice.id).encode(), *(p.encode() for p in PROMPTS.values()), *(t.encode() for t in tokens)]
    before = {n for n in needles for h in await redis_bytes(s.redis) if n in h}
    assert str(alice.id).encode() in before and len(before & {t.encode() for t in tokens}) == 1  # the live slice
    confirm = await alice.slash(ch, "forget")
    done = await alice.click(confirm.response, label="Delete everything")
    assert "messages deleted" in done.response.content and "couldn't delete" not in done.response.content

    async def worker_idle():
        return not worker.tasks and not await s.arq.exists(slice0)

    await _until(arena, worker_idle)
    await asyncio.sleep(0.2)  # arq's after_job_end hook of the cancelled slice
    await arena.bot.consumer.drain()

    # Discord: nothing of Alice in the channel (Bob's result stays).
    assert alice_shown() == [], [m.content for m in alice_shown()]
    assert any(BOB_PROMPT in m.content for m in ch.history())
    # Redis: nothing names her, her prompts or her interaction tokens.
    haystack = await redis_bytes(s.redis)
    found = {n for n in needles for h in haystack if n in h}
    assert not found, found
    assert any(BOB_PROMPT.encode() not in h for h in haystack)
    # Disk: the database and its WAL/SHM files hold none of her prompts or ids.
    raw = db_file_bytes(tmp_path / "kitbooth.db")
    assert raw and BOB_PROMPT.encode() in raw  # the check does read the rows
    leaked = [n for n in needles if n in raw] + ([b"<id int64>"] if alice.id.to_bytes(8, "big") in raw else [])
    assert not leaked, leaked
