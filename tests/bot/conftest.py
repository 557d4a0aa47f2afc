"""Shared SimCord fixtures for the bot's tests (B1 and B2).

``simcord_bot`` is the real ``create_bot`` on temp dirs, the test Redis (DB 15), a real SQLite DB and a local
artifact store. ``arena`` gives a guild, a channel and two members (alice, bob). ``selfies()`` builds real
photo bytes of one real face (scikit-image's astronaut) with light augmentations.

Seams tests may override (documented on ``bot.services.Services``): the ``bot_seams`` fixture (keyword arguments
of ``create_bot``: ``{"photo_checker": fake}``, ``{"clock": ...}``), ``bot_setting_overrides`` (``Settings``
fields, e.g. ``{"rate_limit_s": 30}``) and ``bot_cogs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

# --- member locales -------------------------------------------------------------------------------------
# SimCord 3.2.1 builds every interaction payload in ``simcord.interactions.base_payload`` with ``locale`` and
# ``guild_locale`` fixed to "en-US". This is the ONE place the tests change that: ``member_locales`` wraps
# ``base_payload`` (SimCord's actors call it through the module) so ``locale`` is the member's, as set with
# ``with_locale(member, "de")``, and ``guild_locale`` is the guild's own ``preferred_locale``
# (``env.create_guild(preferred_locale="pt-BR")``). Members without one stay "en-US".
_MEMBER_LOCALES: dict[int, str] = {}


def with_locale(member: Any, locale: str) -> Any:
    """Interactions ``member`` sends from now on (this test) carry ``locale`` (a Discord code, e.g. "de")."""
    _MEMBER_LOCALES[int(member.id)] = locale
    return member


@pytest.fixture(autouse=True)
def member_locales(monkeypatch):
    from simcord import interactions

    original = interactions.base_payload

    def base_payload(backend, *, user_id, guild_id, **kwargs):
        record, payload = original(backend, user_id=user_id, guild_id=guild_id, **kwargs)
        payload["locale"] = _MEMBER_LOCALES.get(int(user_id), "en-US")
        if guild_id is not None:
            payload["guild_locale"] = backend.get_guild(guild_id).preferred_locale
        return record, payload

    monkeypatch.setattr(interactions, "base_payload", base_payload)
    yield
    _MEMBER_LOCALES.clear()


@pytest.fixture
def bot_setting_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def bot_settings(tmp_path, redis_url, bot_setting_overrides):
    import uuid

    from kitbooth.settings import Settings

    tag = uuid.uuid4().hex[:8]
    return Settings(
        _env_file=None,
        data_dir=tmp_path,
        redis_url=redis_url,
        # Unique per test: other test processes share Redis DB 15.
        queue_name=f"kb:bot-test:{tag}:queue",
        events_stream=f"kb:bot-test:{tag}:events",
        discord_token=None,
        base_hidden_size=32,
        daily_quota=20,
        **{"rate_limit_s": 0, **bot_setting_overrides},  # the rate limit has its own test
    )


@pytest.fixture
def bot_seams() -> dict[str, Any]:
    return {}


@pytest.fixture
def bot_cogs() -> list[str] | None:
    return None  # bot.app.COGS


@pytest.fixture
async def bot_redis(bot_settings):
    from redis.asyncio import Redis

    r = Redis.from_url(bot_settings.redis_url)
    yield r
    await r.aclose()


@pytest.fixture
async def bot_arq(bot_settings):
    from arq import create_pool
    from arq.connections import RedisSettings

    pool = await create_pool(RedisSettings.from_dsn(bot_settings.redis_url),
                             default_queue_name=bot_settings.queue_name)
    yield pool
    await pool.aclose()


@pytest.fixture
def simcord_bot(bot_settings, db, store, bot_redis, bot_arq, bot_seams, bot_cogs):
    from bot import create_bot

    return create_bot(bot_settings, db=db, store=store, redis=bot_redis, arq=bot_arq, cogs=bot_cogs, **bot_seams)


@dataclass
class Arena:
    env: Any
    guild: Any
    channel: Any
    alice: Any
    bob: Any

    error_cursor: int = 0

    def expect_errors(self) -> None:
        """Errors captured so far were intended by the test (e.g. an incident test)."""
        self.error_cursor = self.env.error_cursor

    @property
    def bot(self):
        return self.env.bot

    @property
    def services(self):
        return self.env.bot.services


@pytest.fixture
def arena(simcord_env):
    """A guild with a channel and two members. At teardown, expected refusals (``UserFacingError``) that
    reached an error hook are acknowledged; anything else still fails the test."""
    from bot.errors import unwrap
    from kitbooth.errors import UserFacingError

    # Real native work (dlib's photo checks) runs in a thread; on a loaded 2-core CI box it can outlast
    # SimCord's 5 s default for the bot to settle.
    simcord_env.settle_timeout = 30.0
    guild = simcord_env.create_guild(name="Football Fans")
    channel = guild.create_text_channel("kitbooth")
    alice = guild.add_member(simcord_env.create_user("alice"))
    bob = guild.add_member(simcord_env.create_user("bob"))
    arena = Arena(simcord_env, guild, channel, alice, bob)
    yield arena
    captured = simcord_env.errors[arena.error_cursor:]
    unexpected = [e for e in captured if not isinstance(unwrap(e), UserFacingError)]
    if unexpected:
        raise ExceptionGroup("the bot raised unexpected errors", unexpected)


# --- photos -------------------------------------------------------------------------------------------
def selfies(n: int = 5) -> list[tuple[str, bytes]]:
    """``n`` (≤ 8) distinct uploads of one real face."""
    from tests.training import photos

    base = photos.distinct_good_set()
    extra = [("IMG_0006.JPG", photos.rotated(-5)), ("IMG_0007.JPG", photos.brighter(0.85)),
             ("IMG_0008.JPG", photos.cropped((30, 0, 430, 400)))]
    out = (base + extra)[:n]
    assert len(out) == n
    return out


@dataclass
class FakeVerdict:
    index: int
    filename: str
    accepted: bool
    reason: str


@dataclass
class FakePhoto:
    index: int
    image: Any


@dataclass
class FakeReport:
    verdicts: list
    photos: list


def fake_checker(refuse: dict[int, str] | None = None):
    """A fast photo checker for tests that are not about the photo checks (the real one runs dlib).

    Accepts every non-empty file except indices in ``refuse`` (1-based → reason); crops are 64² grey PNGs.
    """
    from PIL import Image

    refuse = refuse or {}

    def check(kind, photos):
        verdicts, prepared = [], []
        for i, (name, data) in enumerate(photos, start=1):
            if not data:
                verdicts.append(FakeVerdict(i, name, False, f"photo {i}: the file is empty"))
            elif i in refuse:
                verdicts.append(FakeVerdict(i, name, False, f"photo {i}: {refuse[i]}"))
            else:
                verdicts.append(FakeVerdict(i, name, True, f"photo {i}: ok"))
                prepared.append(FakePhoto(i, Image.new("RGB", (64, 64), (i * 20, 90, 120))))
        return FakeReport(verdicts, prepared)

    return check


def tiny_png(color=(200, 10, 10), size=(64, 64)) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def requests_since(env, start: int) -> list:
    return list(env.http_requests)[start:]


def assert_acknowledged_first(env, start: int) -> None:
    """The first REST call after ``start`` is the interaction callback (defer / modal / message)."""
    reqs = requests_since(env, start)
    assert reqs, "the bot made no REST call"
    assert reqs[0].method == "POST" and reqs[0].path.endswith("/callback"), [r.path for r in reqs]


def callbacks_so_far(env) -> int:
    return sum(1 for r in env.http_requests if r.path.endswith("/callback"))


async def make_ready_face(services, user_id: int, tokens=("ohwx",), *, data: bytes = b"face-lora") -> Any:
    """A ready face concept for ``user_id`` (as if the worker had trained it)."""
    from storage import keys

    await services.db.ensure_user(user_id)
    c = await services.db.create_concept(owner_id=user_id, guild_id=None, kind="face", name="face",
                                         method="pivotal", trigger_tokens=list(tokens))
    key = keys.concept_key(user_id, c.id)
    services.store.put_bytes(key, data)
    return await services.db.update_concept(c.id, status="ready", artifact_key=key, size_bytes=len(data))


async def queued(services) -> list[tuple[str, dict]]:
    """(function, payload dict) of every job in the arq queue."""
    jobs = await services.arq.queued_jobs(queue_name=services.settings.queue_name)
    return [(j.function, j.args[0]) for j in jobs]


async def emit(services, type_: str, job_id: int, user_id: int, kind: str, *, posted: bool = False,
               target=None, **data) -> str:
    """XADD one worker event to the events stream (what gpu_worker does)."""
    from gpu_worker.contract import Event

    ev = Event(type=type_, job_id=job_id, user_id=user_id, kind=kind, target=target, posted=posted, data=data)
    entry = await services.redis.xadd(services.settings.events_stream, ev.to_fields())
    return entry.decode() if isinstance(entry, bytes) else entry


async def finish_generate(services, job, *, n: int | None = None, posted: bool = False) -> list[str]:
    """Act as the worker for one generate job: write PNG outputs, emit job.done, let the bot consume it."""
    from storage import keys

    count = n if n is not None else job.payload.get("count", 1)
    out = []
    for i in range(count):
        key = keys.output_key(job.user_id, job.id, i)
        services.store.put_bytes(key, tiny_png((40 * i, 100, 200)))
        out.append(key)
    await emit(services, "job.done", job.id, job.user_id, job.kind, posted=posted, output_keys=out,
               seeds=[job.payload.get("seed", 0) + i for i in range(count)], prompt=job.payload.get("prompt"))
    return out
