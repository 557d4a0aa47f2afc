"""Fixtures for the GPU worker's tests: real Redis (DB 15), the tiny model on CPU, SimCord for Discord.

- ``worker_settings``: Settings on the tiny model, a unique queue and stream per test, 64² everything.
- ``engine``: the tiny pipeline + composer, loaded once per session and shared by the in-process workers;
  ``base_engine`` (autouse) returns it to its base state (no resident adapter, free TI slots) around each test.
- ``simcord_bot``: a minimal discord.py bot with ``/draw`` (defers; the test builds a ``DiscordTarget`` from it),
  whose ``bot.http`` is the poster's HTTP client — the documented seam.
- ``start_worker(...)``: runs the real arq worker in-process (``async_run``) until the test ends.
- ``face_artifact(seed)``: a small TI face concept (random vectors) made for the tiny model.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import discord
import pytest
from discord import app_commands
from discord.ext import commands

from gpu_worker import contract
from gpu_worker.context import CTX_KEY, WorkerContext
from tests.redis_dbs import area_redis_url

WORKER_REDIS_URL = area_redis_url("KITBOOTH_TEST_WORKER_REDIS_URL", 14)


def wctx(worker) -> WorkerContext:
    """The running worker's ``WorkerContext``."""
    return worker.ctx[CTX_KEY]


@pytest.fixture
def redis_url() -> str:
    """The worker tests' own Redis DB (14), emptied before each test.

    Overrides the shared DB 15 fixture: other packages' tests flush DB 15 at every test start, which (when test
    runs overlap) deletes a running worker's queue, in-progress keys and events mid-test.
    """
    import redis

    r = redis.Redis.from_url(WORKER_REDIS_URL)
    try:
        r.flushdb()
    finally:
        r.close()
    return WORKER_REDIS_URL


@pytest.fixture
def worker_settings(tmp_path, redis_url, tiny_model_dir):
    from kitbooth.settings import Settings

    tag = uuid.uuid4().hex[:8]
    return Settings(
        _env_file=None, data_dir=tmp_path, redis_url=redis_url, queue_name=f"kb:test:{tag}:queue",
        events_stream=f"kb:test:{tag}:events", base_model=str(tiny_model_dir), device="cpu", dtype="float32",
        max_batch=4, slice_seconds=30.0, slice_steps=None, poll_delay=0.01, safety_checker=False,
        discord_token=None, offline=True, job_timeout_s=60.0, batch_gather_s=0.25, ti_slots=8,
        sample_steps=2, train_samples=1,
    )


@pytest.fixture(scope="session")
def engine(tiny_model_dir):
    from gpu_worker.engine import Engine
    from kitbooth.settings import Settings

    s = Settings(_env_file=None, base_model=str(tiny_model_dir), device="cpu", dtype="float32",
                 safety_checker=False, offline=True, ti_slots=8, sample_steps=2)
    eng = Engine(s)
    eng.load()
    return eng


def reset_engine(eng) -> None:
    """The shared engine back to its freshly loaded state, through the composer's own API: no resident LoRA
    adapter (an earlier test's concepts would show up in ``resident_adapters()`` and in ``forget_deleted``, and
    fill the LRU), every TI slot row zero (a composition zeroes what it wrote; this frees them all)."""
    composer = eng.composer
    composer.evict_all()
    emb = eng.pipe.text_encoder.get_input_embeddings()
    emb.weight.data[composer.slot_ids] = 0.0
    eng.calls.clear()


@pytest.fixture(autouse=True)
def base_engine(request):
    """Every test that uses the session-wide ``engine`` starts and ends with it in its base state.

    Autouse, so it is set up before (and torn down after) ``start_worker``: the workers, and their GPU lane
    threads, have stopped before the reset. Each worker has its own concept cache (``build_worker``), so
    nothing else outlives a test. Tests that do not use the engine do not load it.
    """
    if "engine" not in request.fixturenames:
        yield None
        return
    eng = request.getfixturevalue("engine")
    reset_engine(eng)
    yield eng
    reset_engine(eng)


@pytest.fixture
async def arq_pool(worker_settings):
    from arq import create_pool
    from arq.connections import RedisSettings

    pool = await create_pool(RedisSettings.from_dsn(worker_settings.redis_url),
                             default_queue_name=worker_settings.queue_name)
    yield pool
    await pool.aclose()


class DrawBot(commands.Bot):
    def __init__(self):
        super().__init__(command_prefix="!", intents=discord.Intents.default())
        self.interactions: list[discord.Interaction] = []

        @app_commands.command(name="draw", description="draw something")
        async def draw(interaction: discord.Interaction, prompt: str) -> None:
            await interaction.response.defer(thinking=True)
            self.interactions.append(interaction)

        self.tree.add_command(draw)

    async def setup_hook(self) -> None:
        await self.tree.sync()


@pytest.fixture
def simcord_bot():
    return DrawBot()


def target_of(interaction: discord.Interaction) -> contract.DiscordTarget:
    return contract.DiscordTarget(
        channel_id=interaction.channel_id, user_id=interaction.user.id, guild_id=interaction.guild_id,
        application_id=interaction.application_id, interaction_token=interaction.token,
        interaction_created_at=time.time(),  # SimCord's virtual clock starts in 2026-01; the token is fresh
    )


@pytest.fixture
async def start_worker(worker_settings, engine, store):
    """``await start_worker(**overrides)`` -> the running arq Worker (stopped at teardown)."""
    from gpu_worker.worker import build_worker

    started: list[tuple[Any, asyncio.Task]] = []

    async def start(settings=None, **inject):
        inject.setdefault("store", store)
        inject.setdefault("engine", engine)
        w = build_worker(settings or worker_settings, handle_signals=False, **inject)
        task = asyncio.create_task(w.async_run())
        for _ in range(500):  # until on_startup has run
            if CTX_KEY in w.ctx or task.done():
                break
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
        started.append((w, task))
        start.workers.append(w)  # type: ignore[attr-defined]
        return w

    start.workers = [w for w, _ in started]  # type: ignore[attr-defined]
    yield start
    for w, task in started:
        await asyncio.sleep(0.05)  # let finished jobs write their results
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await w.close()  # cancels running jobs and the poll loop, runs on_shutdown
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def read_events(redis, stream: str) -> list[contract.Event]:
    entries = await redis.xrange(stream)
    return [contract.Event.from_fields(fields) for _id, fields in entries]


async def wait_events(redis, stream: str, pred, timeout: float = 30.0) -> list[contract.Event]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        evs = await read_events(redis, stream)
        if pred(evs):
            return evs
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for events; have {[(e.type, e.job_id) for e in evs]}")


async def until_empty(store, prefix: str, timeout: float = 5.0) -> bool:
    """True once nothing is left under ``prefix`` (a training deletes its meta.json just after concept.ready)."""
    deadline = time.monotonic() + timeout
    while store.list(prefix):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def face_artifact(seed: int, hidden: int = 32, base_model: str = "tiny"):
    import torch

    from training.artifact import ConceptArtifact

    g = torch.Generator().manual_seed(seed)
    return ConceptArtifact(
        kind="face", method="ti", base_model=base_model, hidden_size=hidden, tokens=[f"<kb-face-{seed}>"],
        embeddings=torch.randn(1, hidden, generator=g) * 0.5, unet_lora={}, text_lora={}, rank=None, alpha=None,
        steps=1, created="2026-11-25T00:00:00Z", version="1",
    )


def put_face(store, user_id: int, concept_id: int, seed: int, **kw) -> contract.ConceptRef:
    import hashlib

    from storage import keys
    from training.artifact import save_artifact

    data = save_artifact(face_artifact(seed, **kw))
    key = keys.concept_key(user_id, concept_id)
    store.put_bytes(key, data)
    return contract.ConceptRef(key=key, kind="face", sha256=hashlib.sha256(data).hexdigest())
