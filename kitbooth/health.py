"""Health for every process: the HTTP endpoints and the worker heartbeats. Torch-free.

``HealthServer`` serves, on a small aiohttp server (aiohttp comes with discord.py, in both installs):
  GET /healthz  200 while the process's event loop answers (liveness);
  GET /readyz   200 when every named check passes, else 503; the JSON body says which failed and why;
  GET /metrics  (the bot) Prometheus text, when a ``metrics`` callable is given.
A check is an ``async () -> str`` returning a one-line detail, or raising (its message is the detail). Each runs
under a timeout, so a hung Redis makes /readyz answer 503 quickly instead of hanging the probe.

Heartbeats: each worker has its own arq health-check key, ``<queue>:health-check:<host>-<pid>``; arq rewrites
it every ``health_check_interval`` with a TTL just above it, so the live keys are the live workers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[str]]
CHECK_TIMEOUT_S = 3.0
HEARTBEAT_INTERVAL_S = 15


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    detail: str


async def run_check(name: str, check: Check, timeout: float = CHECK_TIMEOUT_S) -> Result:
    try:
        return Result(name, True, await asyncio.wait_for(check(), timeout))
    except TimeoutError:
        return Result(name, False, f"no answer within {timeout:g}s")
    except Exception as exc:  # any failure is the answer
        return Result(name, False, str(exc) or type(exc).__name__)


async def run_checks(checks: Mapping[str, Check], timeout: float = CHECK_TIMEOUT_S) -> list[Result]:
    return list(await asyncio.gather(*(run_check(n, c, timeout) for n, c in checks.items())))


def make_app(checks: Callable[[], Mapping[str, Check]], *, timeout: float = CHECK_TIMEOUT_S,
             metrics: Callable[[], Awaitable[str]] | None = None) -> web.Application:
    """The /healthz + /readyz app; ``checks()`` is called per request (what is checked may change at start-up).
    ``metrics``: also serve GET /metrics, Prometheus's text format."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"alive": True, "pid": os.getpid()})

    async def readyz(_request: web.Request) -> web.Response:
        results = await run_checks(checks(), timeout)
        ready = all(r.ok for r in results)
        body = {"ready": ready, "checks": {r.name: {"ok": r.ok, "detail": r.detail} for r in results}}
        return web.json_response(body, status=200 if ready else 503)

    async def prometheus(_request: web.Request) -> web.Response:
        return web.Response(text=await metrics(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if metrics is not None:
        app.router.add_get("/metrics", prometheus)
    return app


class HealthServer:
    """``await HealthServer(checks).start(port)`` ... ``await server.stop()``."""

    def __init__(self, checks: Callable[[], Mapping[str, Check]], *, timeout: float = CHECK_TIMEOUT_S,
                 metrics: Callable[[], Awaitable[str]] | None = None):
        self._app = make_app(checks, timeout=timeout, metrics=metrics)
        self._runner: web.AppRunner | None = None

    async def start(self, port: int, host: str = "0.0.0.0") -> None:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        log.info("health on :%d (/healthz, /readyz)", port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


# --- worker heartbeats -------------------------------------------------------------------------------
def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def heartbeat_key(queue_name: str, name: str | None = None) -> str:
    return f"{queue_name}:health-check:{worker_name() if name is None else name}"


async def worker_heartbeats(redis: Any, queue_name: str) -> dict[str, str]:
    """Live workers on ``queue_name``: name -> arq's health line (jobs complete/failed/ongoing, queued)."""
    prefix = heartbeat_key(queue_name, "")
    found: dict[str, str] = {}
    async for key in redis.scan_iter(match=prefix + "*", count=500):
        k = key.decode() if isinstance(key, bytes) else key
        value = await redis.get(k)
        if value is not None:
            found[k[len(prefix):]] = value.decode() if isinstance(value, bytes) else value
    return dict(sorted(found.items()))
