"""The GPU lane: one thread, generate before training, cross-user batching (no torch needed)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from gpu_worker.gpu import PRIO_GENERATE, PRIO_TRAIN, GpuLane


async def test_one_thread_priority_and_batching():
    lane = GpuLane(max_batch=3, gather_s=0.2)
    lane.start()
    order: list[str] = []
    threads: set[int] = set()
    gate = threading.Event()

    def blocker():
        threads.add(threading.get_ident())
        gate.wait(5)
        order.append("slice-1")

    def train2():
        threads.add(threading.get_ident())
        order.append("slice-2")

    def runner(items):
        threads.add(threading.get_ident())
        order.append("batch:" + ",".join(items))
        return [f"img-{i}" for i in items]

    try:
        first = asyncio.create_task(lane.call(blocker, priority=PRIO_TRAIN))
        await asyncio.sleep(0.05)  # the slice is running
        nxt = asyncio.create_task(lane.call(train2, priority=PRIO_TRAIN))  # queued before the generations
        gens = [asyncio.create_task(lane.call_batched(("64", 2), u, runner, priority=PRIO_GENERATE))
                for u in ("alice", "bob", "carol", "dave")]
        other = asyncio.create_task(lane.call_batched(("128", 2), "erin", runner))
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(first, nxt, *gens, other)
    finally:
        await lane.close()
    assert results[2:] == ["img-alice", "img-bob", "img-carol", "img-dave", "img-erin"]
    # generations waited for the running slice only; same-key requests shared a call (max 3)
    assert order == ["slice-1", "batch:alice,bob,carol", "batch:dave", "batch:erin", "slice-2"]
    assert len(threads) == 1 and list(lane.batches) == [3, 1, 1]


async def test_gather_waits_for_jobs_still_preparing():
    lane = GpuLane(max_batch=4, gather_s=1.0)
    lane.start()
    calls: list[list[str]] = []

    def runner(items):
        calls.append(list(items))
        return list(items)

    async def job(name: str, prep: float):
        with lane.preparing():
            await asyncio.sleep(prep)  # fetching concepts...
        return await lane.call_batched("k", name, runner)

    try:
        t0 = time.monotonic()
        a, b = await asyncio.gather(job("a", 0.0), job("b", 0.1))
        waited = time.monotonic() - t0
    finally:
        await lane.close()
    assert (a, b) == ("a", "b") and calls == [["a", "b"]] and waited < 0.9


async def test_a_failing_call_does_not_stop_the_lane():
    lane = GpuLane()
    lane.start()

    def boom():
        raise RuntimeError("cuda oom")

    try:
        with pytest.raises(RuntimeError, match="oom"):
            await lane.call(boom)
        assert await lane.call(lambda: 42) == 42
    finally:
        await lane.close()


async def test_linger_only_when_a_poll_started_several_jobs():
    lane = GpuLane(max_batch=4, gather_s=1.0, linger_s=0.3)
    lane.start()
    calls: list[list[str]] = []

    def runner(items):
        calls.append(list(items))
        return list(items)

    try:
        # A lone job: runs at once, no linger.
        t0 = time.monotonic()
        await lane.call_batched("k", "solo", runner)
        lone = time.monotonic() - t0
        # One poll started two jobs: the first waits for the second, which arrives 50 ms later.
        lane.expect(2)
        first = asyncio.create_task(lane.call_batched("k", "a", runner))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(lane.call_batched("k", "b", runner))
        await asyncio.gather(first, second)
    finally:
        await lane.close()
    assert lone < 0.2  # well under the 0.3 s linger
    assert calls == [["solo"], ["a", "b"]]


def test_engine_refuses_a_misconfigured_upscaler_at_start(tiny_model_dir, tmp_path):
    """An operator's bad KITBOOTH_UPSCALER_MODEL stops the worker at start-up with a clear reason
    (instead of every U button failing later)."""
    from gpu_worker.engine import Engine
    from kitbooth.errors import UserFacingError
    from kitbooth.settings import Settings

    s = Settings(_env_file=None, base_model=str(tiny_model_dir), device="cpu", dtype="float32",
                 safety_checker=False, offline=True, upscaler_model=str(tmp_path / "no-such-upscaler"))
    with pytest.raises(UserFacingError, match="KITBOOTH_UPSCALER_MODEL"):
        Engine(s).load()


def test_engine_uses_the_configured_safety_checker_model(tiny_model_dir, tmp_path):
    """KITBOOTH_SAFETY_CHECKER_MODEL reaches the loader (a missing one is refused at start-up)."""
    from gpu_worker.engine import Engine
    from kitbooth.errors import UserFacingError
    from kitbooth.settings import Settings

    s = Settings(_env_file=None, base_model=str(tiny_model_dir), device="cpu", dtype="float32", offline=True,
                 safety_checker=True, safety_checker_model=str(tmp_path / "no-such-checker"))
    with pytest.raises(UserFacingError, match="Safety checker"):
        Engine(s).load()
    # Switched off, the model setting is not used at all.
    off = Engine(s.model_copy(update={"safety_checker": False}))
    off.load()
    assert off.pipe.safety_checker is None


async def test_batches_and_their_observer_are_bounded_and_fed():
    from gpu_worker.gpu import RECENT_BATCHES

    lane = GpuLane(max_batch=2, gather_s=0.0)
    seen: list[int] = []
    lane.on_batch = seen.append
    lane.start()
    try:
        for i in range(RECENT_BATCHES + 5):
            await lane.call_batched("k", i, lambda items: list(items))
    finally:
        await lane.close()
    assert len(lane.batches) == RECENT_BATCHES and len(seen) == RECENT_BATCHES + 5
