"""Live progress: the GPU thread records the latest step; a task posts it to Discord about once a second."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
from collections.abc import Callable
from typing import Any

from gpu_worker.contract import DiscordTarget
from kitbooth.render import Outgoing

log = logging.getLogger(__name__)


class ProgressPump:
    """``update(...)`` is thread-safe (called from the GPU thread); the pump edits the message every
    ``interval`` seconds when something changed. ``render(state) -> Outgoing``."""

    def __init__(self, poster: Any, target: DiscordTarget, render: Callable[[dict], Outgoing], *,
                 interval: float = 1.0):
        self.poster = poster
        self.target = target
        self.render = render
        self.interval = interval
        self._lock = threading.Lock()
        self._state: dict | None = None
        self._version = 0
        self._posted = 0
        self._task: asyncio.Task | None = None

    def update(self, **state: Any) -> None:
        with self._lock:
            self._state = state
            self._version += 1

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> None:
        with self._lock:
            state, version = self._state, self._version
        if state is None or version == self._posted:
            return
        self._posted = version
        if self.poster is None or not (self.target.token_valid() or self.target.message_id):
            return
        try:
            msg = await asyncio.to_thread(self.render, state)
            await self.poster.progress(self.target, msg)
        except Exception as exc:  # noqa: BLE001 - progress is best effort
            log.info("progress post failed: %s", exc)

    async def __aenter__(self) -> ProgressPump:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def preview_png(preview: Any, max_side: int = 256) -> bytes | None:
    """A small PNG of a PIL preview image (None when there is none)."""
    if preview is None or not hasattr(preview, "save"):
        return None
    im = preview.convert("RGB")
    if max(im.size) > max_side:
        im = im.copy()
        im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
