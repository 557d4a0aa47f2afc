"""The worker's side of the events stream: one XADD per event (``contract.Event``), bounded by MAXLEN.

An entry never carries the interaction token (the bot needs only the channel and the user of a target)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from gpu_worker.contract import DiscordTarget, Event

log = logging.getLogger(__name__)

STREAM_MAXLEN = 100_000  # approximate (~) trimming: the bot's consumer group is expected to keep up


class EventSink:
    """Writes ``Event`` entries to ``stream`` on a redis.asyncio client (arq's pool is one)."""

    def __init__(self, redis: Any, stream: str, *, maxlen: int = STREAM_MAXLEN):
        self.redis = redis
        self.stream = stream
        self.maxlen = maxlen

    async def emit(self, event: Event) -> str:
        entry_id = await self.redis.xadd(self.stream, event.to_fields(), maxlen=self.maxlen, approximate=True)
        log.debug("event %s job=%s -> %s", event.type, event.job_id, entry_id)
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def send(
        self, type_: str, *, job_id: int, user_id: int, kind: str, target: DiscordTarget | None = None,
        posted: bool = False, **data: Any,
    ) -> str:
        if target is not None and target.interaction_token:
            target = dataclasses.replace(target, interaction_token=None)
        return await self.emit(
            Event(type=type_, job_id=job_id, user_id=user_id, kind=kind, target=target, posted=posted, data=data)
        )
