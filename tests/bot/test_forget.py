"""``forget_user`` against the real SQLite DB, the real artifact store and real Redis (arq queue included):
everything of the user goes, everything of others stays."""

from __future__ import annotations

import contextlib
import pickle

import pytest
from arq.constants import abort_jobs_ss, in_progress_key_prefix, result_key_prefix, retry_key_prefix

from bot import forget, jobs
from bot.services import Services
from gpu_worker import contract
from storage import keys

ALICE = 411111111111111111
BOB = 422222222222222222
GUILD = 433333333333333333
CHANNEL = 444444444444444444


@pytest.fixture
async def services(db, store, redis_url, tmp_path):
    from arq import create_pool
    from arq.connections import RedisSettings
    from redis.asyncio import Redis

    from kitbooth.settings import Settings

    settings = Settings(_env_file=None, data_dir=tmp_path, redis_url=redis_url, queue_name="kitbooth:test:queue",
                        events_stream="kitbooth:test:events", base_hidden_size=32)
    redis = Redis.from_url(redis_url)
    arq = await create_pool(RedisSettings.from_dsn(redis_url), default_queue_name=settings.queue_name)
    yield Services(settings=settings, db=db, store=store, redis=redis, arq=arq)
    await redis.aclose()
    await arq.aclose()


def target(uid):
    return contract.DiscordTarget(channel_id=CHANNEL, user_id=uid, guild_id=GUILD)


async def populate(s: Services, uid: int) -> dict:
    """A user with a trained face, a retraining in the queue, finished images, an export, a kit they made, and
    Redis state: queue entries, arq results/retries, events."""
    db, store = s.db, s.store
    await db.record_consent(uid)
    face = await db.create_concept(owner_id=uid, guild_id=GUILD, kind="face", name="face", method="pivotal",
                                   status="ready", trigger_tokens=[f"<u{uid}>"])
    store.put_bytes(keys.concept_key(uid, face.id), b"concept")
    await db.update_concept(face.id, artifact_key=keys.concept_key(uid, face.id), size_bytes=7)
    # A retraining, queued in arq, with its photos and a checkpoint.
    new = await db.create_concept(owner_id=uid, guild_id=GUILD, kind="face", name="face", method="pivotal",
                                  status="training")
    for i in range(4):
        store.put_bytes(keys.photo_key(uid, new.id, i), b"png")
    store.put_bytes(keys.checkpoint_prefix(uid, new.id) + "slice-0.safetensors", b"ckpt")

    def train_payload(job):
        return contract.TrainPayload(
            job_id=job.id, user_id=uid, concept_id=new.id, kind="face", method="pivotal", name="face",
            photo_keys=[keys.photo_key(uid, new.id, i) for i in range(4)],
            artifact_key=keys.concept_key(uid, new.id), checkpoint_prefix=keys.checkpoint_prefix(uid, new.id),
            target=target(uid))

    train_job, _ = await jobs.create_and_enqueue(s, kind="train", user_id=uid, build_payload=train_payload,
                                                 guild_id=GUILD, channel_id=CHANNEL, concept_id=new.id)
    # A finished generation with outputs, a message in Discord and an arq result; a queued one.
    done = await db.create_job(kind="generate", user_id=uid, guild_id=GUILD, channel_id=CHANNEL,
                               payload={"prompt": "me at anfield"})
    await db.update_job(done.id, status="done", message_id=555000000000000000 + uid % 1000)
    for i in range(2):
        key = keys.output_key(uid, done.id, i)
        store.put_bytes(key, b"img")
        await db.add_output(job_id=done.id, user_id=uid, artifact_key=key, seed=i)
    await s.arq.set(result_key_prefix + contract.arq_job_id(done.id), pickle.dumps({"r": "x"}), ex=3600)
    await s.arq.set(retry_key_prefix + contract.arq_job_id(done.id), b"1", ex=3600)

    def gen_payload(job):
        return contract.GeneratePayload(job_id=job.id, user_id=uid, prompt="me scoring",
                                        output_prefix=keys.outputs_prefix(uid, job.id), target=target(uid))

    queued, _ = await jobs.create_and_enqueue(s, kind="generate", user_id=uid, build_payload=gen_payload,
                                              guild_id=GUILD, channel_id=CHANNEL)
    store.put_bytes(f"{keys.user_prefix(uid)}exports/9/face-a1111.safetensors", b"export")
    # A kit they trained for the server.
    kit_concept = await db.create_concept(owner_id=uid, guild_id=GUILD, kind="kit", name=f"Kit {uid}",
                                          method="lora", status="ready",
                                          artifact_key=keys.guild_concept_key(GUILD, 900 + uid % 7))
    store.put_bytes(kit_concept.artifact_key, b"kit")
    await db.add_kit(guild_id=GUILD, name=f"Kit {uid}", description="red shirt", concept_id=kit_concept.id,
                     created_by=uid)
    # Events about them (one consumed and pending in the group, one not yet read).
    stream = s.settings.events_stream
    for job_id, typ in ((done.id, "job.done"), (train_job.id, "job.progress")):
        ev = contract.Event(type=typ, job_id=job_id, user_id=uid, kind="generate", target=target(uid))
        await s.redis.xadd(stream, ev.to_fields())
    return {"face": face, "new": new, "train": train_job, "done": done, "queued": queued, "kit": kit_concept}


async def ensure_group(s):
    with contextlib.suppress(Exception):  # the group may exist already
        await s.redis.xgroup_create(s.settings.events_stream, "bot", id="0", mkstream=True)
    await s.redis.xreadgroup("bot", "c1", {s.settings.events_stream: ">"}, count=1)  # one pending


async def redis_traces(s: Services, uid: int, job_ids: set[int]) -> list[str]:
    """Every place in Redis that still refers to ``uid`` or its jobs."""
    from arq.jobs import deserialize_job

    traces = []
    async for raw in s.redis.scan_iter(match="*", count=1000):
        key = raw.decode()
        if str(uid) in key.split(":"):
            traces.append(f"key {key}")
        parsed = contract.parse_arq_job_id(key.rsplit(":", 1)[-1])
        if parsed and parsed[0] in job_ids:
            traces.append(f"arq key {key}")
        dump = await s.redis.dump(key)
        if dump and str(uid).encode() in dump:
            traces.append(f"value of {key}")
        typ = (await s.redis.type(key)).decode()
        if typ == "zset":
            for m in await s.redis.zrange(key, 0, -1):
                p = contract.parse_arq_job_id(m.decode())
                if p and p[0] in job_ids:
                    traces.append(f"queue entry {m!r}")
        elif typ == "string" and key.startswith("arq:job:"):
            job = deserialize_job(await s.redis.get(key))
            if any(isinstance(a, dict) and a.get("user_id") == uid for a in job.args):
                traces.append(f"arq job {key}")
        elif typ == "stream":
            for _id, fields in await s.redis.xrange(key):
                if contract.Event.from_fields(fields).user_id == uid:
                    traces.append(f"event {_id!r}")
            for g in await s.redis.xinfo_groups(key):
                pend = await s.redis.xpending_range(key, g["name"], min="-", max="+", count=100)
                ids = {e["message_id"] for e in pend}
                alive = {i for i, _ in await s.redis.xrange(key)}
                if ids - alive:
                    traces.append(f"pending entries of deleted events in group {g['name']!r}")
    return traces


async def db_traces(s: Services, uid: int) -> list[str]:
    out = []
    for table, col in (("users", "id"), ("concepts", "owner_id"), ("jobs", "user_id"), ("outputs", "user_id"),
                       ("kits", "created_by")):
        row = await s.db._one(f"SELECT COUNT(*) FROM {table} WHERE {col} = ?", (uid,))
        if row[0]:
            out.append(f"{row[0]} row(s) in {table}")
    return out


async def test_forget_leaves_no_trace_and_spares_others(services):
    s = services
    a = await populate(s, ALICE)
    b = await populate(s, BOB)
    await ensure_group(s)
    alice_jobs = {j.id for j in await s.db.list_jobs(user_id=ALICE)}
    assert await redis_traces(s, ALICE, alice_jobs)  # the check does see Alice before
    bob_before = {
        "files": s.store.list(keys.user_prefix(BOB)),
        "jobs": await s.db.list_jobs(user_id=BOB),
        "queue": [m for m in await s.arq.zrange(s.settings.queue_name, 0, -1)
                  if contract.parse_arq_job_id(m.decode())[0] not in alice_jobs],
    }
    assert len(bob_before["queue"]) == 2

    report = await forget.forget_user(s, ALICE)

    # DB
    assert await db_traces(s, ALICE) == []
    # Artifact store: nothing under her prefix, the server's kit file stays.
    assert s.store.list(keys.user_prefix(ALICE)) == []
    assert s.store.exists(a["kit"].artifact_key)
    kit = await s.db.get_concept(a["kit"].id)
    assert kit is not None and kit.owner_id is None and kit.status == "ready"
    # Redis: queue, arq keys, events (and their pending entries), cache keys, the cancel flag (nothing running).
    assert await redis_traces(s, ALICE, alice_jobs) == []
    # Report counts
    assert report.cancelled_jobs == 2
    assert report.artifacts["photos"] == 4 and report.artifacts["outputs"] == 2
    assert report.artifacts["concepts"] == 1 and report.artifacts["checkpoints"] == 1
    assert report.artifacts["exports"] == 1
    assert report.rows == {"concepts": 2, "jobs": 3, "outputs": 2, "users": 1}
    assert report.events == 2 and report.redis_keys >= 3
    text = "\n".join(report.lines())
    assert "photos: 4" in text and "generated images: 2" in text
    # Bob is untouched.
    assert s.store.list(keys.user_prefix(BOB)) == bob_before["files"]
    assert await s.db.list_jobs(user_id=BOB) == bob_before["jobs"]
    assert await s.arq.zrange(s.settings.queue_name, 0, -1) == bob_before["queue"]
    assert len(await s.redis.xrange(s.settings.events_stream)) == 2
    assert (await s.db.ready_face(BOB)).id == b["face"].id


async def test_forget_with_a_running_job_keeps_only_the_cancel_flag(services):
    s = services
    a = await populate(s, ALICE)
    # The worker has picked up the training slice.
    running = a["train"]
    await s.db.update_job(running.id, status="running")
    await s.arq.zrem(s.settings.queue_name, contract.arq_job_id(running.id, 0))
    await s.arq.set(in_progress_key_prefix + contract.arq_job_id(running.id, 0), b"1", ex=60)

    report = await forget.forget_user(s, ALICE)

    assert report.still_running == 1
    flag = contract.cancel_user_key(ALICE)
    assert await s.arq.exists(flag) and 0 < await s.arq.ttl(flag) <= contract.CANCEL_TTL_S
    # The flag (a timestamp the worker checks), arq's own in-progress marker and arq's abort request for that
    # slice (its id only; the worker drops it once the task is cancelled) are all that remain.
    slice_id = contract.arq_job_id(running.id, 0)
    assert await s.arq.zscore(abort_jobs_ss, slice_id) is not None
    job_ids = {running.id, a["done"].id, a["queued"].id}
    left = await redis_traces(s, ALICE, job_ids)
    assert sorted(left) == sorted([f"arq key {in_progress_key_prefix}{slice_id}",
                                   f"queue entry {slice_id.encode()!r}"])
    # The flags that outlive the job name a hashed id only (the forget marker tells the running job to erase
    # what it writes when it ends).
    marker = contract.forgotten_user_key(ALICE)
    assert str(ALICE) not in flag + marker and contract.user_tag(ALICE) in flag
    assert await s.arq.exists(marker) and 0 < await s.arq.ttl(marker) <= contract.FORGOTTEN_TTL_S
    # A file the running job writes after the purge is caught by the next step of the worker's cancel check;
    # forgetting again (idempotent) removes it.
    s.store.put_bytes(keys.checkpoint_prefix(ALICE, a["new"].id) + "late.safetensors", b"late")
    again = await forget.forget_user(s, ALICE)
    assert again.artifacts["checkpoints"] == 1 and s.store.list(keys.user_prefix(ALICE)) == []
    assert await db_traces(s, ALICE) == []


async def test_forget_of_a_stranger_is_harmless(services):
    report = await forget.forget_user(services, ALICE)
    assert report.rows["users"] == 0 and report.total_files == 0
    assert await redis_traces(services, ALICE, set()) == []


async def test_forgotten_rows_are_not_readable_in_the_database_files(services, tmp_path):
    """secure_delete zeroes the freed pages and a TRUNCATE checkpoint empties the WAL: the bytes of kitbooth.db,
    -wal and -shm hold none of the forgotten user's prompts or ids (the other user's rows are still there)."""
    from pathlib import Path

    s = services
    await populate(s, ALICE)
    await populate(s, BOB)
    prompt = "alice unique prompt: bicycle kick at the kop"
    marked = await s.db.create_job(kind="generate", user_id=ALICE, guild_id=GUILD, channel_id=CHANNEL,
                                   payload={"prompt": prompt})
    await s.db.record_message(user_id=ALICE, channel_id=CHANNEL, message_id=777, kind="echo", job_id=marked.id)
    path = tmp_path / "kitbooth.db"

    def raw() -> bytes:
        return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())

    assert prompt.encode() in raw() and str(ALICE).encode() in raw()  # the check sees her before
    await forget.forget_user(s, ALICE)
    # The kit she added stays with the server, without her (populate() named it after her id).
    after = raw().replace(f"Kit {ALICE}".encode(), b"")
    assert prompt.encode() not in after and b"me at anfield" in after  # Bob's rows are still readable
    i = after.find(str(ALICE).encode())
    assert i < 0, after[max(0, i - 200):i + 60]
    assert ALICE.to_bytes(8, "big") not in after
    assert Path(f"{path}-wal").stat().st_size == 0  # checkpointed and truncated
