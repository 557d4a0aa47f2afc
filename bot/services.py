"""The handles every cog needs, built once by ``create_bot`` and reachable as ``bot.services``. Torch-free."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from arq.connections import ArqRedis
    from redis.asyncio import Redis

    from kitbooth.settings import Settings
    from storage import ArtifactStore
    from storage.database import Database

# ``(kind, [(filename, bytes), ...]) -> report`` with ``.verdicts`` (index, filename, accepted, reason) and
# ``.photos`` (index, image, optional mask): the contract of ``training.faces.check_selfies`` /
# ``prepare_reference_photos``.
PhotoChecker = Callable[[str, list[tuple[str, bytes]]], Any]


@dataclass
class Services:
    """Settings, the SQLite repository, the artifact store, Redis and the arq pool, plus the bot's two test seams
    and its in-process state.

    ``redis`` is a plain ``redis.asyncio.Redis`` (bytes replies) for the events stream and flags; ``arq`` is the
    arq pool used to enqueue jobs (it is itself a Redis client on the same server).

    Seams (documented; tests replace them, nothing else does):
      ``photo_checker`` — the selfie/reference-photo checks; None means ``training.faces`` (dlib, seconds per
      photo). Tests that are not about the photo checks pass a fast fake with the same report shape.
      ``clock`` — the monotonic clock of the per-user rate limit (``Settings.rate_limit_s``).
    """

    settings: Settings
    db: Database
    store: ArtifactStore
    redis: Redis
    arq: ArqRedis
    photo_checker: PhotoChecker | None = None
    clock: Callable[[], float] = time.monotonic
    # In-process state: when each user last asked for images (rate limit); users whose training is being set up.
    last_request_at: dict[int, float] = field(default_factory=dict)
    training_starting: set[int] = field(default_factory=set)
