"""The real worker (tiny model, CPU) running in the test's own process beside the SimCord bot, for the end-to-end
tests of tests/bot: their settings, the worker's lifetime, and waiting on the bot's event consumer."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from kitbooth.settings import Settings


def worker_settings(tmp_path: Any, redis_url: str, tiny_model_dir: Any, *, tag: str, **overrides: Any) -> Settings:
    """Settings shared by the bot and the in-process worker: tiny model, CPU, fast polling, own queue and stream."""
    unique = f"kb:{tag}:{uuid.uuid4().hex[:8]}"
    values: dict[str, Any] = dict(
        _env_file=None, data_dir=tmp_path, redis_url=redis_url, queue_name=f"{unique}:queue",
        events_stream=f"{unique}:events", base_model=str(tiny_model_dir), device="cpu", dtype="float32",
        max_batch=4, slice_seconds=30.0, poll_delay=0.01, safety_checker=False, discord_token=None, offline=True,
        job_timeout_s=120.0, batch_gather_s=0.05, ti_slots=8, sample_steps=2, train_samples=0, base_hidden_size=32,
        rate_limit_s=0, generate_steps=2, generate_side=64,
    )
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, store: Any, *, poster: Any = None) -> AsyncIterator[Any]:
    """``build_worker`` on a freshly loaded engine, run until the block ends (``poster``: the worker's REST seam)."""
    from gpu_worker.engine import Engine
    from gpu_worker.worker import build_worker

    engine = Engine(settings)
    engine.load()
    w = build_worker(settings, store=store, engine=engine, handle_signals=False, poster=poster)
    task = asyncio.create_task(w.async_run())
    try:
        yield w
    finally:
        await asyncio.sleep(0.05)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await w.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def _no_sleep(_s: float) -> None:
    return None


def simcord_poster(arena: Any) -> Any:
    """The worker's poster on SimCord's REST client (the seam), retrying without waiting, so REST faults hit it."""
    from gpu_worker.poster import Poster

    return Poster(arena.env.bot.http, sleep=_no_sleep)


async def until(arena: Any, pred: Any, timeout: float = 120.0, interval: float = 0.1) -> Any:
    """Drain the bot's event consumer until ``await pred()`` is truthy; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await arena.bot.consumer.drain()
        value = await pred()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError("timed out")
