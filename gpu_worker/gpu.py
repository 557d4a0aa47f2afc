"""The GPU lane: every piece of torch work of a worker runs on ONE dedicated thread, in priority order.

- ``submit(fn, priority=...)`` runs ``fn()`` on the GPU thread and awaits its result; lower priority values
  run first (generate before upscale/export before training), FIFO within a priority.
- ``submit_batched(key, item, runner)`` queues one request of a batchable kind; when the thread frees up, every
  queued request with the same ``key`` (same size, steps...) is handed to ``runner(items)`` in ONE call, up to
  ``max_batch``. ``runner`` returns one result (or exception instance) per item.
- Jobs that are still preparing a batchable request (fetching concepts...) call ``preparing()``: the dispatcher
  waits for them briefly (``gather_s``) so that requests arriving together share a batch; and when one arq poll
  started several jobs (``expect(n)``), a batchable request lingers ``linger_s`` (20 ms) for the others, which
  reach the lane a few Redis round trips apart. A lone job does not linger.

The event loop never blocks on torch: it only awaits futures resolved by the GPU thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

PRIO_GENERATE = 0
PRIO_LIGHT = 1  # upscale, export
PRIO_TRAIN = 2
RECENT_BATCHES = 1000  # batch sizes kept in memory


@dataclass(order=True)
class _Work:
    priority: int
    seq: int
    fn: Callable[..., Any] | None = field(compare=False, default=None)
    batch_key: Hashable | None = field(compare=False, default=None)
    item: Any = field(compare=False, default=None)
    runner: Callable[[list[Any]], list[Any]] | None = field(compare=False, default=None)
    future: asyncio.Future | None = field(compare=False, default=None)
    queued_at: float = field(compare=False, default_factory=time.monotonic)


class GpuLane:
    def __init__(self, *, max_batch: int = 4, gather_s: float = 0.25, linger_s: float = 0.02):
        self.max_batch = max_batch
        self.gather_s = gather_s
        self.linger_s = linger_s
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="kitbooth-gpu")
        self._pending: list[_Work] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._preparing = 0
        self._linger_until = 0.0
        self._task: asyncio.Task | None = None
        self.busy = False
        self.batches: deque[int] = deque(maxlen=RECENT_BATCHES)  # sizes of recent batched calls (tests, logs)
        self.on_batch: Callable[[int], Any] | None = None  # e.g. Metrics.observe_batch

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._dispatch(), name="kitbooth-gpu-lane")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for w in self._pending:
            if w.future and not w.future.done():
                w.future.cancel()
        self._pending.clear()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)

    @property
    def depth(self) -> int:
        return len(self._pending)

    # --- submission -----------------------------------------------------------------------------
    async def call(self, fn: Callable[[], Any], *, priority: int = PRIO_TRAIN) -> Any:
        """Run ``fn`` on the GPU thread (after all higher-priority work queued before it starts)."""
        fut = asyncio.get_running_loop().create_future()
        self._push(_Work(priority, next(self._seq), fn=fn, future=fut))
        return await fut

    async def call_batched(
        self, key: Hashable, item: Any, runner: Callable[[list[Any]], list[Any]], *, priority: int = PRIO_GENERATE,
        preparing: _Preparing | None = None,
    ) -> Any:
        fut = asyncio.get_running_loop().create_future()
        if preparing is not None:
            preparing.release(wake=False)
        self._push(_Work(priority, next(self._seq), batch_key=key, item=item, runner=runner, future=fut))
        return await fut

    @contextlib.contextmanager
    def preparing(self):
        """Mark a job that will soon submit a batchable request (so the dispatcher may wait for it). The
        mark ends when the block exits or ``release()`` is called on the yielded handle (idempotent);
        ``call_batched(..., preparing=handle)`` releases it as the request is queued."""
        handle = _Preparing(self)
        self._preparing += 1
        self._wake.set()
        try:
            yield handle
        finally:
            handle.release()

    def expect(self, n_started: int) -> None:
        """arq just started ``n_started`` jobs in one poll: if several, let a batch wait a moment for them."""
        if n_started > 1:
            self._linger_until = max(self._linger_until, time.monotonic() + self.linger_s)

    def _push(self, work: _Work) -> None:
        self._pending.append(work)
        self._wake.set()

    # --- dispatch -------------------------------------------------------------------------------
    def _take(self) -> list[_Work]:
        self._pending = [w for w in self._pending if not (w.future and w.future.done())]  # dropped waiters
        if not self._pending:
            return []
        first = min(self._pending)
        if first.batch_key is None:
            chosen = [first]
        else:
            same = sorted(w for w in self._pending if w.batch_key == first.batch_key and w.runner == first.runner)
            chosen = same[: self.max_batch]
        ids = {id(w) for w in chosen}
        self._pending = [w for w in self._pending if id(w) not in ids]
        return chosen

    async def _gather(self) -> None:
        """Give jobs still preparing a batchable request a moment to join the batch."""
        first = min(self._pending)
        if first.batch_key is None:
            if first.priority >= PRIO_TRAIN and self._preparing > 0:
                # A generation is about to arrive: let it go first (training is not latency-bound).
                deadline = time.monotonic() + self.gather_s
                while self._preparing > 0 and time.monotonic() < deadline and min(self._pending) is first:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), max(0.0, deadline - time.monotonic()))
            return
        now = time.monotonic()
        deadline = now + self.gather_s
        linger = self._linger_until  # jobs started by the same poll reach the lane a few ms apart
        while time.monotonic() < deadline and (self._preparing > 0 or time.monotonic() < linger):
            n = sum(1 for w in self._pending if w.batch_key == first.batch_key)
            if n >= self.max_batch:
                return
            if self._preparing == 0:
                await asyncio.sleep(max(0.0, linger - time.monotonic()))
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, deadline - time.monotonic()))

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._gather()
            chosen = self._take()
            if not chosen:
                continue
            self.busy = True
            try:
                if chosen[0].batch_key is None:
                    w = chosen[0]
                    try:
                        result = await loop.run_in_executor(self._executor, w.fn)
                    except BaseException as exc:  # noqa: BLE001 - handed to the waiter
                        if isinstance(exc, asyncio.CancelledError):
                            raise
                        _resolve(w.future, exc=exc)
                    else:
                        _resolve(w.future, result)
                else:
                    runner = chosen[0].runner
                    items = [w.item for w in chosen]
                    self.batches.append(len(items))
                    if self.on_batch is not None:
                        try:
                            self.on_batch(len(items))
                        except Exception:  # noqa: BLE001 - metrics never break the lane
                            log.exception("batch observer failed")
                    try:
                        results = await loop.run_in_executor(self._executor, runner, items)
                    except Exception as exc:  # noqa: BLE001
                        results = [exc] * len(items)
                    for w, r in zip(chosen, results, strict=True):
                        if isinstance(r, BaseException):
                            _resolve(w.future, exc=r)
                        else:
                            _resolve(w.future, r)
            finally:
                self.busy = False


class _Preparing:
    def __init__(self, lane: GpuLane):
        self._lane: GpuLane | None = lane

    def release(self, wake: bool = True) -> None:
        if self._lane is not None:
            self._lane._preparing -= 1
            if wake:
                self._lane._wake.set()
            self._lane = None


def _resolve(fut: asyncio.Future | None, value: Any = None, *, exc: BaseException | None = None) -> None:
    if fut is None or fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)
