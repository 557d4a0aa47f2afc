"""The handles every cog needs, built once by ``create_bot`` and reachable as ``bot.services``. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from arq.connections import ArqRedis
    from redis.asyncio import Redis

    from kitbooth.settings import Settings
    from storage import ArtifactStore
    from storage.database import Database


@dataclass
class Services:
    """Settings, the SQLite repository, the artifact store, Redis and the arq pool.

    ``redis`` is a plain ``redis.asyncio.Redis`` (bytes replies) for the events stream and flags; ``arq`` is the
    arq pool used to enqueue jobs (it is itself a Redis client on the same server). ``extras`` is a small
    bag for seams that tests replace (e.g. ``extras["photo_checker"]``).
    """

    settings: Settings
    db: Database
    store: ArtifactStore
    redis: Redis
    arq: ArqRedis
    extras: dict[str, Any] = field(default_factory=dict)
