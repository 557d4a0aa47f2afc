"""``bot_generate_keyspace_ratio``: the bot's ``/generate`` handling time with 100,000 unrelated keys and 10,000
queued jobs in Redis ÷ the same with an empty Redis (target ≤ 1.2: a command costs the same whatever else Redis
holds — no SCAN of the keyspace, no read of the whole queue).

The path timed is the one the ``/generate`` cog runs (``bot.generate_request``): every check (prompt, own face,
catalogue, quotas), the job row in a real SQLite database, the arq enqueue in real Redis and the queue position,
in one process. The interaction is a small stand-in with the attributes those functions read (the Discord
gateway is not part of the bot's handling time). Each call is a different member (quotas and the rate limit
never refuse). Two bots side by side — each its own SQLite file and its own Redis database — take the calls in
turn (the order flipped every pair), so whatever else loads the machine weighs on both sides alike.

Redis: two databases of the bench's own (``BENCH_DB`` full, ``BENCH_DB_EMPTY`` empty, on ``settings.redis_url``'s
server, never 0), emptied before and after: the bench must own them.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from arq import create_pool
from arq.connections import RedisSettings
from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis

from benchmarks.common import Report
from bot.generate_request import describe, enqueue_generate, prepare_request
from bot.jobs import format_queue
from bot.services import Services
from gpu_worker import contract
from storage import LocalArtifactStore, keys
from storage.database import Database

BENCH_DB = 9  # the full Redis
BENCH_DB_EMPTY = 8  # the empty one
UNRELATED_KEYS = 100_000
QUEUED_JOBS = 10_000
USER_BASE = 9_200_000_000
GUILD = 9_200_000_001
CHANNEL = 9_200_000_002


def bench_redis_url(url: str, db: int = BENCH_DB) -> str:
    """``url`` with its database number replaced by the bench's own."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{int(db)}", parts.query, parts.fragment))


@dataclass
class _User:
    id: int


@dataclass
class _Channel:
    id: int = CHANNEL

    def is_nsfw(self) -> bool:
        return False


@dataclass
class _Interaction:
    """What ``prepare_request`` / ``enqueue_generate`` read of a ``discord.Interaction``."""

    user: _User
    id: int
    guild_id: int = GUILD
    channel_id: int = CHANNEL
    channel: _Channel = field(default_factory=_Channel)
    application_id: int = 1
    token: str = "bench-token"
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


async def _handle(services: Services, user_id: int) -> float:
    """Seconds for one /generate as the cog handles it (checks, row, enqueue, queue position, reply text)."""
    interaction = _Interaction(user=_User(user_id), id=user_id)
    t0 = time.perf_counter()
    req, face = await prepare_request(services, interaction, prompt="celebrating a goal in the rain", kit=None,  # type: ignore[arg-type]
                                      style=None, count=1, seed=None, shape="square")
    job, queue = await enqueue_generate(services, interaction, req, face)  # type: ignore[arg-type]
    _reply = f"{describe(req)}\n⏳ {format_queue(queue)} · job {job.id}"
    return time.perf_counter() - t0


async def _fill(redis: Redis, queue_name: str) -> None:
    """100,000 unrelated keys (other apps' caches, other arq queues' results) and 10,000 queued generate jobs of
    other members, written the way arq writes them."""
    now_ms = int(time.time() * 1000)
    for start in range(0, UNRELATED_KEYS, 5000):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + 5000, UNRELATED_KEYS)):
                key = f"other-app:cache:{i}" if i % 2 else f"arq:result:other-{i}"
                pipe.set(key, b"x" * 32)
            await pipe.execute()
    for start in range(0, QUEUED_JOBS, 2000):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + 2000, QUEUED_JOBS)):
                job_id = 8_000_000_000 + i
                payload = contract.GeneratePayload(
                    job_id=job_id, user_id=job_id, prompt="someone else's picture",
                    output_prefix=keys.outputs_prefix(job_id, job_id),
                    target=contract.DiscordTarget(channel_id=CHANNEL, user_id=job_id)).to_dict()
                arq_id = contract.arq_job_id(job_id)
                pipe.psetex(job_key_prefix + arq_id, 86_400_000,
                            serialize_job(contract.GENERATE_JOB, (payload,), {}, None, now_ms + i))
                pipe.zadd(queue_name, {arq_id: now_ms + i})
            await pipe.execute()


async def _open(settings: Any, tmp: Path, db_number: int, users: range) -> Services:
    """A bot's services on its own SQLite file and Redis database (emptied), with a ready face per user."""
    url = bench_redis_url(settings.redis_url, db_number)
    settings = settings.model_copy(update={"redis_url": url})
    redis = Redis.from_url(url)
    await redis.flushdb()
    arq = await create_pool(RedisSettings.from_dsn(url), default_queue_name=settings.queue_name)
    db = await Database.open(tmp / f"kitbooth-{db_number}.db")
    for uid in users:
        await db.ensure_user(uid)
        c = await db.create_concept(owner_id=uid, guild_id=None, kind="face", name="face", method="pivotal",
                                    trigger_tokens=["ohwx"])
        await db.update_concept(c.id, status="ready", artifact_key=keys.concept_key(uid, c.id))
    return Services(settings=settings, db=db, store=LocalArtifactStore(tmp / f"artifacts-{db_number}"),
                    redis=redis, arq=arq)


async def _close(services: Services) -> None:
    await services.redis.flushdb()
    await services.db.close()
    await services.arq.aclose()
    await services.redis.aclose()


async def _measure(settings: Any, repeats: int) -> tuple[list[float], list[float]]:
    """(empty-Redis times, full-Redis times): calls alternate between the two bots (order flipped every pair), so
    load from anything else on the machine falls on both sides alike."""
    tag = uuid.uuid4().hex[:8]
    settings = settings.model_copy(update={
        "queue_name": f"kitbooth:bench-bot:{tag}:queue", "rate_limit_s": 0.0, "daily_quota": 1_000_000,
    })
    users = range(USER_BASE, USER_BASE + repeats + 1)
    with tempfile.TemporaryDirectory(prefix="kb-bench-bot-") as tmp:
        empty = await _open(settings, Path(tmp), BENCH_DB_EMPTY, users)
        full = await _open(settings, Path(tmp), BENCH_DB, users)
        try:
            await _fill(full.redis, settings.queue_name)
            await _handle(empty, users[0])  # warm-up (seeds the guild's catalogue, fills caches)
            await _handle(full, users[0])
            t_empty, t_full = [], []
            for i, uid in enumerate(users[1:]):
                pair = [(empty, t_empty), (full, t_full)]
                for services, out in (pair if i % 2 == 0 else pair[::-1]):
                    out.append(await _handle(services, uid))
        finally:
            await _close(empty)
            await _close(full)
    return t_empty, t_full


def run(report: Report, *, settings: Any, repeats: int, redis_ok: Any) -> None:
    url = bench_redis_url(settings.redis_url)
    why = redis_ok(url)
    if why is not None:
        report.note(f"bot: Redis at {url} does not answer ({why}): /generate ratio not measured")
        return
    t_empty, t_full = asyncio.run(_measure(settings, repeats))
    empty, loaded = statistics.median(t_empty), statistics.median(t_full)
    report.set("bot_generate_keyspace_ratio", round(loaded / empty, 3))
    report.note(f"bot: /generate handling (checks, SQLite row, arq enqueue, queue position), {repeats} calls per "
                f"side, alternating (Redis DBs {BENCH_DB} full, {BENCH_DB_EMPTY} empty): {loaded * 1e3:.2f} ms median "
                f"with {UNRELATED_KEYS:,} unrelated keys + {QUEUED_JOBS:,} queued jobs vs {empty * 1e3:.2f} ms empty "
                f"= {loaded / empty:.3f}×")
