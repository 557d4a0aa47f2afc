"""Shared fixtures: the tiny offline model, a real Redis database, a real SQLite database, a local store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.redis_dbs import area_redis_url
from tests.reliability import figures as reliability_figures

ROOT = Path(__file__).resolve().parent.parent
# One cache for the whole run (and across runs): building the tiny model takes a few seconds.
CACHE = Path(os.environ.get("KITBOOTH_TEST_CACHE", ROOT / ".pytest_cache" / "kitbooth"))
TEST_REDIS_URL = area_redis_url("KITBOOTH_TEST_REDIS_URL", 15)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """Path of the tiny SD-1.5-shaped diffusers folder (built once, offline)."""
    from training.tiny import make_tiny_model

    return make_tiny_model(CACHE / "tiny-model")


@pytest.fixture
def redis_url() -> str:
    """A real Redis database, emptied before the test. Tests share DB 15 (never the app's DB 0)."""
    import redis

    r = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        r.flushdb()
    finally:
        r.close()
    return TEST_REDIS_URL


@pytest.fixture
def store(tmp_path):
    from storage import LocalArtifactStore

    return LocalArtifactStore(tmp_path / "artifacts")


@pytest.fixture
async def db(tmp_path):
    from storage.database import Database

    database = await Database.open(tmp_path / "kitbooth.db")
    try:
        yield database
    finally:
        await database.close()


# The reliability suites' figures: one line per suite at the end of the run. Under pytest-xdist each worker sends
# its figures to the controller (workeroutput), which prints them.
def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["reliability_figures"] = reliability_figures.export()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    reliability_figures.merge(getattr(node, "workeroutput", {}).get("reliability_figures", {}))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = reliability_figures.summary_lines()
    if lines:
        terminalreporter.write_sep("-", "reliability figures")
        for line in lines:
            terminalreporter.write_line(line)
