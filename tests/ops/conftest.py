"""Fixtures for the operations tests: their own Redis DB, the loopback S3 server, worker processes.

- ``ops_redis_url``: a Redis DB of their own (``KITBOOTH_TEST_OPS_REDIS_URL``, default DB 12), emptied first:
  worker processes here outlive a test function's await points, and the shared DB 15 is flushed by others.
- ``s3_server`` (from tests/storage/conftest.py): moto's S3 server on loopback, one per session.
- ``arena`` and the bot fixtures (from tests/bot/conftest.py): the real bot on SimCord.
- ``engine`` (from tests/worker/conftest.py): the tiny pipeline in this process, for reference runs.
- ``worker_env(data_dir, store_url=...)``: the environment of a ``kitbooth worker`` process on the tiny model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
import torch

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
from tests.redis_dbs import area_redis_url
from tests.storage.conftest import S3Server, free_port, s3_server  # noqa: F401 (fixture re-export)
from tests.worker.conftest import base_engine, engine  # noqa: F401 (fixture re-exports; base_engine resets it per test)

ROOT = Path(__file__).resolve().parents[2]
OPS_REDIS_URL = area_redis_url("KITBOOTH_TEST_OPS_REDIS_URL", 12)

__all__ = ["ROOT", "S3Server", "free_port", "spawn", "stop"]


@pytest.fixture
def ops_redis_url() -> str:
    r = redis.Redis.from_url(OPS_REDIS_URL)
    try:
        r.flushdb()
    finally:
        r.close()
    return OPS_REDIS_URL


@pytest.fixture
def queue_names() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {"KITBOOTH_QUEUE_NAME": f"kb:ops:{tag}:queue", "KITBOOTH_EVENTS_STREAM": f"kb:ops:{tag}:events"}


@pytest.fixture
def worker_env(ops_redis_url, queue_names, tiny_model_dir):
    """``worker_env(data_dir, **KITBOOTH_overrides)`` -> env of a worker process (no KITBOOTH_* inherited)."""

    def make(data_dir: Path, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KITBOOTH_")}
        env.update(queue_names)
        env.update({
            "PYTHONPATH": str(ROOT), "KITBOOTH_REDIS_URL": ops_redis_url, "KITBOOTH_BASE_MODEL": str(tiny_model_dir),
            "KITBOOTH_DEVICE": "cpu", "KITBOOTH_DTYPE": "float32", "KITBOOTH_DATA_DIR": str(data_dir),
            "KITBOOTH_SAFETY_CHECKER": "false", "KITBOOTH_OFFLINE": "true", "KITBOOTH_TRAIN_SAMPLES": "0",
            "KITBOOTH_TI_SLOTS": "8", "KITBOOTH_SAMPLE_STEPS": "2",
            # same intra-op thread count as this process, so float reductions run in the same order
            "OMP_NUM_THREADS": str(torch.get_num_threads()),
        })
        env.update(extra)
        return env

    return make


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A KitBooth CLI process (``python -m kitbooth.cli ARGS``) writing stdout+stderr to ``log``."""
    return subprocess.Popen([sys.executable, "-m", "kitbooth.cli", *args], cwd=log.parent, env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen, sig: int | None = None, timeout: float = 30) -> int:
    """Stop ``proc`` with ``sig`` (default SIGTERM) and return its exit status (killed if it hangs)."""
    if proc.poll() is None:
        proc.send_signal(sig or signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"process {proc.args} did not stop within {timeout}s") from None
