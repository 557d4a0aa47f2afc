"""Fixtures of the reliability suites (faults, isolation, bad input, secrets, doctor): the real bot on SimCord
(tests/bot/conftest.py), the real in-process worker on the tiny model (tests/bot/in_process.py), and
``doctor_clean`` — the consistency scan of ``kitbooth doctor`` that every scenario ends with, expecting nothing.

Each suite's figures (``tests.reliability.figures``) are printed at the end of the run, one line per suite
(the hooks are in tests/conftest.py, which the xdist controller loads too).
"""

from __future__ import annotations

import pytest

from tests.bot.conftest import (  # noqa: F401 (fixture re-exports: the real bot on SimCord)
    arena,
    bot_arq,
    bot_cogs,
    bot_redis,
    bot_seams,
    bot_setting_overrides,
    bot_settings,
    simcord_bot,
)
from tests.reliability.figures import count


async def scan_findings(settings, *, grace_s: float = 0.0) -> list[str]:
    """The consistency scan of ``kitbooth doctor`` over the settings' database, store and Redis (its lines)."""
    from arq import create_pool
    from arq.connections import RedisSettings

    from bot.doctor import scan
    from storage import open_store
    from storage.database import Database

    db = await Database.open(settings.db_path)
    redis = await create_pool(RedisSettings.from_dsn(settings.redis_url), default_queue_name=settings.queue_name)
    try:
        return [f.line() for f in await scan(db, open_store(settings), redis, settings, grace_s=grace_s)]
    finally:
        await db.close()
        await redis.aclose()


@pytest.fixture
def doctor_clean():
    """``await doctor_clean(settings, suite)``: assert the scan finds nothing (and count the scan in the figures)."""

    async def check(settings, suite: str) -> None:
        found = await scan_findings(settings)
        count(suite, doctor_scans=1, doctor_findings=len(found))
        assert found == [], found

    return check
