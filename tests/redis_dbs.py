"""Which Redis database a test area uses, per pytest-xdist worker.

Each test area has a database of its own (``KITBOOTH_TEST_*_REDIS_URL``; defaults 15 shared, 14 worker, 12 ops;
the bot benchmark takes 8 and 9). Under ``pytest -n 2`` the second worker (``gw1``) takes the same areas 8 lower
(7, 6, 4), so two workers never flush each other's queues. More than two workers would run out of databases.
"""

from __future__ import annotations

import os

DB_OFFSET = 8


def area_redis_url(env_name: str, default_db: int) -> str:
    url = os.environ.get(env_name, f"redis://127.0.0.1:6379/{default_db}")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    n = int(worker.removeprefix("gw") or 0)
    if n == 0:
        return url
    if n > 1:
        raise RuntimeError("the tests' Redis databases allow at most two xdist workers (pytest -n 2)")
    base, _, db = url.rpartition("/")
    return f"{base}/{int(db) - DB_OFFSET}"
