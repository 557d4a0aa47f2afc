"""``kitbooth up`` on one machine, no Docker: the configured local Redis does not answer, so it starts a private
``redis-server`` (append-only, under the data folder); its worker serves a generate job on the tiny model; Ctrl-C
(SIGINT) stops the worker and then the private Redis, and exits 0."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time

import pytest
from arq import create_pool
from arq.connections import RedisSettings

from gpu_worker import contract
from kitbooth.local_redis import answers
from storage import LocalArtifactStore
from tests.ops.conftest import free_port, spawn
from tests.worker.conftest import put_face, wait_events
from tests.worker.test_generate import _payload


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
async def test_up_starts_a_private_redis_serves_a_job_and_stops_on_sigint(tmp_path, worker_env, queue_names):
    url = f"redis://127.0.0.1:{free_port()}/0"
    data = tmp_path / "data"
    env = worker_env(data, KITBOOTH_REDIS_URL=url)
    log = tmp_path / "up.log"
    up = spawn(["up", "--no-bot"], env, log)
    try:
        deadline = time.monotonic() + 30
        while not answers(url, 0.5):
            assert up.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.2)
        pool = await create_pool(RedisSettings.from_dsn(url), default_queue_name=queue_names["KITBOOTH_QUEUE_NAME"])
        try:
            store = LocalArtifactStore(data / "artifacts")
            face = put_face(store, 7, 1, seed=5)
            g = _payload(3, 7, contract.DiscordTarget(channel_id=1, user_id=7), face, count=1, steps=2)
            assert await pool.enqueue_job(contract.GENERATE_JOB, g.to_dict(), _job_id=contract.arq_job_id(g.job_id))
            await wait_events(pool, queue_names["KITBOOTH_EVENTS_STREAM"],
                              lambda e: any(x.type == "job.done" and x.job_id == 3 for x in e), timeout=120)
        finally:
            await pool.aclose()
        assert store.list("users/") and any(k.endswith(".png") for k in store.list(f"users/{7}/"))
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if up.poll() is None:
            up.kill()
    text = log.read_text()
    assert "started a private redis-server" in text and "stopped the private redis-server" in text, text[-3000:]
    assert "started worker" in text and "stopped: worker (" in text, text[-3000:]
    assert not answers(url, 0.5)  # the private Redis went with it
    assert any((data / "redis").rglob("*.aof*")), list((data / "redis").rglob("*"))  # append-only persistence
