"""Health: ``/healthz`` and ``/readyz`` of the real bot (SimCord gateway) and of a real ``kitbooth worker``
process, ``kitbooth health`` and ``kitbooth health --probe``. Redis "going away" is a client pointed at a
closed port: the shared Redis is never stopped."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import aiohttp
import pytest
from redis.asyncio import Redis

from gpu_worker.health import readiness_checks
from kitbooth.health import HealthServer
from tests.bot.conftest import make_ready_face
from tests.ops.conftest import ROOT, free_port, spawn, stop


@pytest.fixture
def bot_setting_overrides():
    return {"health_port": free_port()}


@pytest.fixture
async def bot_port(arena):
    """The health port of the running bot; its server is stopped after the test (SimCord does not close the
    bot, ``close()`` would)."""
    yield arena.bot.settings.health_port
    await arena.bot.health.stop()


async def _get(port: int, path: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}",
                                                   timeout=aiohttp.ClientTimeout(total=10)) as r:
        return r.status, await r.json()


def _closed_redis() -> Redis:
    return Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)


async def test_bot_readyz_follows_gateway_db_redis_and_store(arena, bot_port):
    status, body = await _get(bot_port, "/healthz")
    assert status == 200 and body["alive"]
    status, body = await _get(bot_port, "/readyz")
    assert status == 200, body
    checks = body["checks"]
    assert set(checks) == {"gateway", "database", "redis", "store"}
    assert checks["gateway"]["detail"].startswith("connected, 1 guild(s)")
    assert checks["database"]["detail"].startswith("schema version ")

    services = arena.bot.services
    real, services.redis = services.redis, _closed_redis()  # Redis goes away
    try:
        status, body = await _get(bot_port, "/readyz")
    finally:
        await services.redis.aclose()
        services.redis = real
    assert status == 503 and not body["ready"], body
    assert not body["checks"]["redis"]["ok"] and "6379" not in body["checks"]["redis"]["detail"]
    assert all(body["checks"][n]["ok"] for n in ("gateway", "database", "store")), body
    assert (await _get(bot_port, "/healthz"))[0] == 200  # alive all along


async def test_worker_readyz_is_unhealthy_while_loading_and_without_redis():
    redis = _closed_redis()
    server, port = HealthServer(lambda: readiness_checks({"redis": redis}), timeout=2), free_port()
    await server.start(port, host="127.0.0.1")
    try:
        assert (await _get(port, "/healthz"))[0] == 200
        status, body = await _get(port, "/readyz")
    finally:
        await server.stop()
        await redis.aclose()
    assert status == 503 and body["checks"]["model"] == {"ok": False, "detail": "loading the base pipeline"}
    assert not body["checks"]["redis"]["ok"], body


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kitbooth.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
async def test_worker_process_health_and_kitbooth_health(tmp_path, worker_env):
    port = free_port()
    env = worker_env(tmp_path, KITBOOTH_HEALTH_PORT=str(port))
    assert _cli(["migrate"], env).returncode == 0
    log = tmp_path / "worker.log"
    worker = spawn(["worker"], env, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                status, body = await _get(port, "/readyz")
            except aiohttp.ClientError:
                status = 0
            if status == 200:
                break
            await asyncio.sleep(0.2)
        assert body["checks"]["device"]["detail"] == "cpu" and body["checks"]["jobs"]["detail"] == "idle", body
        assert body["checks"]["model"]["detail"].endswith("resident")

        for _ in range(50):  # arq writes the heartbeat at its first poll, just after start-up
            out = await asyncio.to_thread(_cli, ["health"], env)
            if out.returncode == 0:
                break
            await asyncio.sleep(0.2)
        assert out.returncode == 0, out.stdout + out.stderr
        lines = out.stdout.splitlines()
        assert [ln.split()[1] for ln in lines] == ["redis", "store", "db", "workers"], lines
        assert all(ln.startswith("✅") for ln in lines) and "1 alive" in lines[3], lines

        out = await asyncio.to_thread(_cli, ["health", "--probe", f"http://127.0.0.1:{port}/readyz"], env)
        assert out.returncode == 0 and "HTTP 200" in out.stdout, out.stdout
    finally:
        assert stop(worker) == 0, log.read_text()[-3000:]

    out = await asyncio.to_thread(_cli, ["health"], env)  # the worker said goodbye: its heartbeat is gone
    assert out.returncode == 1 and "❌ workers" in out.stdout and "start `kitbooth worker`" in out.stdout, out.stdout
    closed = {**env, "KITBOOTH_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    out = await asyncio.to_thread(_cli, ["health", "--skip", "workers"], closed)
    assert out.returncode == 1 and out.stdout.splitlines()[0].startswith("❌ redis"), out.stdout
    out = await asyncio.to_thread(_cli, ["health", "--probe", f"http://127.0.0.1:{port}/readyz"], env)
    assert out.returncode == 1, out.stdout


async def test_bot_metrics_count_commands_refusals_and_queue_depth(arena, bot_port):
    await arena.alice.slash(arena.channel, "queue")
    refused = await arena.bob.slash(arena.channel, "generate", prompt="scoring")  # bob has no face
    assert refused.response.ephemeral
    await make_ready_face(arena.services, arena.alice.id)
    await arena.alice.slash(arena.channel, "generate", prompt="ohwx scoring", count=1)  # queued, no worker
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{bot_port}/metrics") as r:
        assert r.status == 200 and r.content_type == "text/plain"
        text = await r.text()
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert samples['kitbooth_bot_commands_total{command="queue",outcome="ok"}'] == "1"
    assert samples['kitbooth_bot_commands_total{command="generate",outcome="refused"}'] == "1"
    assert samples['kitbooth_bot_commands_total{command="generate",outcome="ok"}'] == "1"
    assert samples["kitbooth_bot_refusals_total"] == "1" and samples["kitbooth_queue_depth"] == "1", text
