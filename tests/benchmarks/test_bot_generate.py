"""The bot's /generate keyspace ratio (``benchmarks/bot_generate.py``) through the real handler functions, real
SQLite and real Redis: it measures, records the figure, and leaves its own Redis database empty."""

from __future__ import annotations

import redis

from benchmarks import bot_generate
from benchmarks.common import Report
from benchmarks.queue import redis_ok
from kitbooth.settings import Settings


def test_bench_redis_db_is_its_own():
    assert bot_generate.bench_redis_url("redis://:pw@h:6379/0") == "redis://:pw@h:6379/9"
    assert bot_generate.bench_redis_url("redis://127.0.0.1:6379") == "redis://127.0.0.1:6379/9"


def test_generate_ratio_is_measured_and_cleans_up(redis_url, tmp_path):
    settings = Settings(_env_file=None, data_dir=tmp_path, redis_url=redis_url, base_hidden_size=32)
    report = Report()
    bot_generate.run(report, settings=settings, repeats=3, redis_ok=redis_ok)
    ratio = report.figures["bot_generate_keyspace_ratio"]
    assert isinstance(ratio, float) and 0 < ratio < 10, report.lines
    assert any("100,000 unrelated keys + 10,000 queued jobs" in line for line in report.lines)
    for number in (bot_generate.BENCH_DB, bot_generate.BENCH_DB_EMPTY):
        r = redis.Redis.from_url(bot_generate.bench_redis_url(redis_url, number))
        try:
            assert r.dbsize() == 0
        finally:
            r.close()
