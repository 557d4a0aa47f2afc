"""``kitbooth health``: one line per component — Redis, the artifact store, the database, the workers' heartbeats —
exit 0 when all pass, 1 otherwise. ``--probe URL`` instead asks a running process's /readyz (the compose
healthchecks use it). Torch-free and aiosqlite-free (stdlib sqlite3, read-only), so it runs from either install.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable

from redis.asyncio import Redis

from kitbooth.health import Result, run_check, worker_heartbeats
from kitbooth.settings import Settings, redacted_dsn
from storage import open_store

COMPONENTS = ("redis", "store", "db", "workers")


def _checks(settings: Settings, redis: Redis) -> dict[str, Callable]:
    async def check_redis() -> str:
        await redis.ping()
        return f"{redacted_dsn(settings.redis_url)} answers PING"

    async def check_store() -> str:
        where = settings.store_url or str(settings.artifacts_path)
        await asyncio.to_thread(open_store, settings)  # builds and probes it once
        return f"{redacted_dsn(where)} answers"

    async def check_db() -> str:
        path = settings.db_path
        if not path.exists():
            raise RuntimeError(f"{path} does not exist: run `kitbooth migrate` (or --skip db on a worker host)")

        def version() -> int:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2) as conn:
                return conn.execute("PRAGMA user_version").fetchone()[0]

        return f"{path}: schema version {await asyncio.to_thread(version)}"

    async def check_workers() -> str:
        beats = await worker_heartbeats(redis, settings.queue_name)
        if not beats:
            raise RuntimeError(f"no worker heartbeat on queue {settings.queue_name!r}: start `kitbooth worker`")
        return f"{len(beats)} alive: " + "; ".join(f"{name} ({line.split(' ', 2)[-1]})" for name, line in beats.items())

    return {"redis": check_redis, "store": check_store, "db": check_db, "workers": check_workers}


async def collect(settings: Settings, skip: set[str] = frozenset(), timeout: float = 5.0) -> list[Result]:
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        checks = {n: c for n, c in _checks(settings, redis).items() if n not in skip}
        results = []
        for name, check in checks.items():  # in order; workers need Redis, but each says its own failure
            results.append(await run_check(name, check, timeout))
        return results
    finally:
        await redis.aclose()


def probe(url: str, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except OSError as exc:
        print(f"❌ {url}: {exc}")
        return 1
    try:
        checks = json.loads(body).get("checks", {})
    except ValueError:
        checks = {}
    for name, c in checks.items():
        print(f"{'✅' if c['ok'] else '❌'} {name:8} {c['detail']}")
    print(f"{url}: HTTP {status}")
    return 0 if status == 200 else 1


def _health(args: argparse.Namespace, settings: Settings) -> int:
    if args.probe:
        return probe(args.probe)
    results = asyncio.run(collect(settings, set(args.skip or ())))
    for r in results:
        print(f"{'✅' if r.ok else '❌'} {r.name:8} {r.detail}")
    return 0 if all(r.ok for r in results) else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("health", help="check Redis, the store, the database and the workers' heartbeats (exit 0/1)")
    p.add_argument("--skip", action="append", choices=COMPONENTS, help="leave a component out (repeatable)")
    p.add_argument("--probe", metavar="URL", help="ask a running bot's or worker's /readyz instead")
    p.set_defaults(func=_health)
