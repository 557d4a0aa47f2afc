"""Faults, with the real bot on SimCord and the real worker (tiny model, CPU, in-process, posting through SimCord's
REST: the worker's documented poster seam): each scenario ends with the member seeing their result exactly once
(or a clear failure) and ``kitbooth doctor``'s scan finding nothing.

- a shutdown (SIGTERM) of the worker just after it posted a result, before the job ended: arq runs the job again;
  the worker's delivered mark makes the new try re-send the event only (regression: it drew and posted twice);
- Redis restarted empty with jobs queued, the bot still running: its sweep's reconcile re-enqueues them from SQLite
  (it ran only at the bot's start-up before), each delivered once;
- Discord answering 429 (``retry_after``) and 5xx to the worker's post: retried, delivered once;
- the store failing every write (ENOSPC) at the store seam: the job fails with a message, nothing half-written;
- a corrupt concept file in the store: refused with a message saying what to do.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import subprocess
import time

import pytest

from gpu_worker import contract
from gpu_worker.poster import Poster
from storage import LocalArtifactStore
from tests.bot.conftest import make_ready_face
from tests.bot.in_process import running_worker, simcord_poster, until, worker_settings
from tests.reliability.figures import count
from tests.storage.conftest import free_port

pytestmark = pytest.mark.slow
SUITE = "faults"


@pytest.fixture
def bot_settings(request, tmp_path, redis_url, tiny_model_dir):
    if getattr(request, "param", None) == "kill":
        # 20 denoising steps so the kill lands mid-generation; a timeout short enough that arq hands the job on
        # soon after (the dead worker's in-progress mark lasts the longest timeout + margins).
        return worker_settings(tmp_path, redis_url, tiny_model_dir, tag="kill", generate_steps=20, job_timeout_s=15.0)
    return worker_settings(tmp_path, redis_url, tiny_model_dir, tag="faults")


def _face_bytes(seed: int) -> bytes:
    from tests.worker.conftest import face_artifact
    from training.artifact import save_artifact

    return save_artifact(face_artifact(seed))


async def _request(arena, member, prompt: str):
    s = arena.services
    before = {j.id for j in await s.db.list_jobs(user_id=member.id)}
    r = await member.slash(arena.channel, "generate", prompt=prompt, count=1, seed=1)
    assert "queue" in r.response.content, r.response.content
    (job,) = [j for j in await s.db.list_jobs(user_id=member.id) if j.id not in before]
    return job


async def _finished(arena, job_id: int, timeout: float = 120.0):
    s = arena.services

    async def ended():
        j = await s.db.get_job(job_id)
        return j if j.status in ("done", "failed", "cancelled") else None

    return await until(arena, ended, timeout, interval=0.05)


def _results_shown(arena, member) -> list:
    """The channel messages that show the member an image (the worker's channel post or the bot's delivery)."""
    return [m for m in arena.channel.history() if m.attachments and f"<@{member.id}>" in m.content]


async def _no_wait(_seconds: float) -> None:
    return None


class ShutdownAfterPost(Poster):
    """The worker's real poster; with ``when="post"``, right after its first final post (delivered or not) it runs
    the worker's SIGTERM handler (what arq runs on SIGTERM): the job's task is cancelled before the job function
    returns. (``when="event"``: the test arms it from the job's end event instead, see ``_arm_after_event``.)"""

    worker = None
    fired = 0
    when = "post"

    async def final(self, target, msg, *, in_channel=False):
        res = await super().final(target, msg, in_channel=in_channel)
        if self.when == "post":
            self.shutdown()
        return res

    def shutdown(self) -> None:
        if self.worker is not None and not self.fired:
            self.fired += 1
            self.worker.handle_sig(signal.SIGTERM)


def _arm_after_event(worker, poster: ShutdownAfterPost) -> None:
    """Run the SIGTERM handler just after the worker sent a job's end event (the window of the original bug:
    the event is out, the job function has not returned, arq runs the job again)."""
    sink = worker.ctx["kitbooth"].events
    send = sink.send

    async def send_then_shutdown(type_, **kw):
        entry = await send(type_, **kw)
        if type_ == "job.done":
            poster.shutdown()
        return entry

    sink.send = send_then_shutdown


@pytest.mark.parametrize("when", ["post", "event"])
@pytest.mark.parametrize("discord_down", [False, True], ids=["worker-posted", "bot-delivers"])
async def test_a_shutdown_between_post_and_job_end_posts_once(arena, bot_settings, store, doctor_clean,
                                                              discord_down, when):
    """Either the worker posted (then the new try must not draw and post again), or Discord failed every try of
    the worker's post, the bot delivered from the event, and the new try's repeated event must not make the bot
    deliver it again."""
    s, alice = arena.services, arena.alice
    await make_ready_face(s, alice.id, tokens=("<kb-face-1>",), data=_face_bytes(1))
    poster = ShutdownAfterPost(arena.env.bot.http, attempts=2, sleep=_no_wait)
    poster.when = when
    if discord_down:  # the worker's two tries of its channel post fail; the bot's own post then goes through
        arena.env.inject_error("POST", "/channels/*/messages", status=503, times=2)
    async with running_worker(bot_settings, store, poster=poster) as first:
        poster.worker = first
        if when == "event":
            await until(arena, lambda: asyncio.sleep(0, "kitbooth" in first.ctx), 60, interval=0.02)  # started
            _arm_after_event(first, poster)
        job = await _request(arena, alice, "a fox lifting the cup")
        await until(arena, lambda: asyncio.sleep(0, poster.fired), 120, interval=0.05)
        await until(arena, lambda: asyncio.sleep(0, all(t.done() for t in first.tasks.values())), 30, interval=0.05)
    async with running_worker(bot_settings, store, poster=simcord_poster(arena)) as second:
        j = await _finished(arena, job.id)
        await until(arena, lambda: asyncio.sleep(0, second.jobs_complete >= 1), 30, interval=0.05)
        await asyncio.sleep(0.2)
        await arena.bot.consumer.drain()
        tries = await s.arq.get(f"arq:retry:kb-{job.id}")
    assert j.status == "done", j.error
    shown = _results_shown(arena, alice)  # SimCord's clock is behind: the token expired, channel posts
    assert len(shown) == 1, [m.content for m in shown]  # exactly once (twice before the delivered mark)
    assert len(await s.db.list_outputs(job_id=job.id)) == 1 and tries is None  # arq finished it on try 2
    await doctor_clean(bot_settings, SUITE)
    count(SUITE, scenarios=1, shutdown_after_post=1, delivered_once=1, double_posts=len(shown) - 1)


@pytest.fixture
def restartable_redis(tmp_path):
    """A redis-server of this test's own on a free port (≥ 6390), killed and started again empty by the test (every
    test of this module runs on one: the kill/restart scenario needs it, the others get an untouched server)."""
    port = free_port()
    while port < 6390:  # never one of the shared servers' ports
        port = free_port()

    def start():
        return subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)

    proc = [start()]

    def restart():
        proc[0].kill()
        proc[0].wait(10)
        proc[0] = start()

    deadline = time.monotonic() + 10
    import redis

    while True:
        try:
            redis.Redis(port=port).ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    restart.url = f"redis://127.0.0.1:{port}/0"  # type: ignore[attr-defined]
    yield restart
    proc[0].kill()
    proc[0].wait(10)


@pytest.fixture
def redis_url(restartable_redis):
    return restartable_redis.url  # the bot, its arq pool and the worker all on the Redis this test restarts


async def test_redis_restarted_empty_reconcile_requeues_each_job_once(arena, bot_settings, store, restartable_redis,
                                                                      doctor_clean):
    from bot.reconcile import reconcile

    s, alice, bob = arena.services, arena.alice, arena.bob
    for member, seed in ((alice, 1), (bob, 2)):
        await make_ready_face(s, member.id, tokens=(f"<kb-face-{seed}>",), data=_face_bytes(seed))
    jobs = [await _request(arena, m, p) for m, p in ((alice, "a lion on the terraces"), (alice, "a bear in goal"),
                                                     (bob, "an owl taking a corner"))]
    assert len(await s.arq.zrange(bot_settings.queue_name, 0, -1)) == 3
    restartable_redis()  # killed, started again with nothing in it: the queue is gone
    for client in (s.redis, s.arq):  # the bot's connections notice the restart on their next call
        for _ in range(50):
            try:
                await client.ping()
                break
            except Exception:  # noqa: BLE001 - the connection is being re-made
                await asyncio.sleep(0.05)
    assert await s.arq.zrange(bot_settings.queue_name, 0, -1) == []
    await arena.bot.consumer.sweep()  # the bot's minutely sweep (the bot kept running): the reconcile re-enqueues
    assert len(await s.arq.zrange(bot_settings.queue_name, 0, -1)) == 3
    assert await reconcile(s) == 0  # and again (a restart of the bot): arq refuses the same ids, nothing doubles
    async with running_worker(bot_settings, store, poster=simcord_poster(arena)):
        ended = [await _finished(arena, j.id) for j in jobs]
    assert [j.status for j in ended] == ["done"] * 3, [j.error for j in ended]
    assert (len(_results_shown(arena, alice)), len(_results_shown(arena, bob))) == (2, 1)
    assert [len(await s.db.list_outputs(job_id=j.id)) for j in jobs] == [1, 1, 1]
    await doctor_clean(bot_settings, SUITE)
    count(SUITE, scenarios=1, redis_restarts=1, lost_by_redis=3, requeued=3, delivered_once=3, doubled=0)


def _no_incident(text: str) -> None:
    assert "Traceback" not in text and "incident" not in text.lower() and "error." not in text, text


async def test_discord_429_and_5xx_on_the_post_are_retried_and_delivered_once(arena, bot_settings, store,
                                                                                doctor_clean):
    import discord

    from gpu_worker.poster import _retryable

    s, alice = arena.services, arena.alice
    await make_ready_face(s, alice.id, tokens=("<kb-face-1>",), data=_face_bytes(1))
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    arena.env.inject_error("POST", "/channels/*/messages", status=429, times=1, message="You are being rate limited.")
    arena.env.inject_error("POST", "/channels/*/messages", status=503, times=1)
    async with running_worker(bot_settings, store, poster=Poster(arena.env.bot.http, sleep=sleep)):
        job = await _request(arena, alice, "a hare on the wing")
        j = await _finished(arena, job.id)
    assert j.status == "done", j.error
    assert len(_results_shown(arena, alice)) == 1 and len(waits) == 2
    assert waits[0] >= 1.0  # SimCord's 429 carries no Retry-After: the poster waits its 1 s default at least
    posts = [r for r in arena.env.http_requests if r.method == "POST" and r.path.endswith("/messages")
             and "/channels/" in r.path]
    assert len(posts) == 3  # 429, 503, then the one that went through
    # retry_after is honoured where Discord gives it (discord.py's RateLimited, or the header of a raw 429)
    response = type("R", (), {"status": 429, "reason": "Too Many Requests", "headers": {"Retry-After": "3.5"}})()
    assert _retryable(discord.RateLimited(2.5)) == 2.5
    assert _retryable(discord.HTTPException(response, {"message": "rate limited"})) == 3.5
    await doctor_clean(bot_settings, SUITE)
    count(SUITE, scenarios=1, discord_429=1, discord_5xx=1, delivered_once=1, expired_token_channel_posts=1)


class FullDisk(LocalArtifactStore):
    """The real local store whose disk is full for generated images: the write starts, then the disk refuses it
    (ENOSPC), as a full volume does (the store seam of ``build_worker``)."""

    refused = 0

    def put_bytes(self, key: str, data: bytes) -> int:
        if "/outputs/" not in key:
            return super().put_bytes(key, data)
        from storage.artifacts import _atomic_writer

        self.refused += 1
        with _atomic_writer(self._path(key)) as f:
            f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")


async def test_a_full_disk_fails_the_job_cleanly_with_a_message(arena, bot_settings, store, doctor_clean):
    s, alice = arena.services, arena.alice
    await make_ready_face(s, alice.id, tokens=("<kb-face-1>",), data=_face_bytes(1))
    full = FullDisk(store.root)
    settings = bot_settings.model_copy(update={"retry_defer_s": 0.05})
    async with running_worker(settings, full, poster=simcord_poster(arena)):
        job = await _request(arena, alice, "a mole in the dugout")
        j = await _finished(arena, job.id)
    assert j.status == "failed" and full.refused == 2  # retried once (a transient store failure), then failed
    told = [m.content for m in arena.channel.history() if f"<@{alice.id}>" in m.content]
    assert len(told) == 1 and f"job {job.id}" in told[0] and not _results_shown(arena, alice), told
    _no_incident(told[0])
    left = [p for p in store.root.rglob("*") if p.is_file() and "/outputs/" in p.as_posix() or p.name.startswith(".tmp")]
    assert left == [] and await s.db.list_outputs(job_id=job.id) == []  # nothing half-written
    await doctor_clean(bot_settings, SUITE)
    count(SUITE, scenarios=1, store_write_refused=full.refused, failed_with_message=1, half_written=len(left))


async def test_a_corrupt_concept_file_is_refused_with_what_to_do(arena, bot_settings, store, doctor_clean):
    s, alice = arena.services, arena.alice
    face = await make_ready_face(s, alice.id, tokens=("<kb-face-1>",), data=_face_bytes(1))
    store.put_bytes(face.artifact_key, _face_bytes(1)[:-100])  # truncated on disk after it was trained
    async with running_worker(bot_settings, store, poster=simcord_poster(arena)):
        job = await _request(arena, alice, "a seal in the six-yard box")
        j = await _finished(arena, job.id)
    assert j.status == "failed"
    told = [m.content for m in arena.channel.history() if f"<@{alice.id}>" in m.content]
    assert len(told) == 1 and not _results_shown(arena, alice), told
    _no_incident(told[0])
    assert "/train" in told[0] or "train" in told[0].lower(), told  # says what to do
    await doctor_clean(bot_settings, SUITE)
    count(SUITE, scenarios=1, corrupt_artifacts=1, refused_with_message=1)


def _worker_process(s, tmp_path, log_name: str) -> subprocess.Popen:
    import os
    import sys

    from tests.conftest import ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith("KITBOOTH_")}
    env.update({
        "PYTHONPATH": str(ROOT), "KITBOOTH_REDIS_URL": s.redis_url, "KITBOOTH_QUEUE_NAME": s.queue_name,
        "KITBOOTH_EVENTS_STREAM": s.events_stream, "KITBOOTH_BASE_MODEL": s.base_model, "KITBOOTH_DEVICE": "cpu",
        "KITBOOTH_DTYPE": "float32", "KITBOOTH_DATA_DIR": str(tmp_path), "KITBOOTH_SAFETY_CHECKER": "false",
        "KITBOOTH_OFFLINE": "true", "KITBOOTH_TI_SLOTS": "8", "KITBOOTH_JOB_TIMEOUT_S": str(s.job_timeout_s),
        "KITBOOTH_BATCH_GATHER_S": "0.05", "KITBOOTH_POLL_DELAY": "0.01",
    })
    log = (tmp_path / log_name).open("ab")
    return subprocess.Popen([sys.executable, "-m", "gpu_worker"], cwd=tmp_path, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


@pytest.mark.parametrize("bot_settings", ["kill"], indirect=True)
async def test_a_worker_killed_mid_generation_is_retried_and_delivered_once(arena, bot_settings, store, tmp_path,
                                                                            doctor_clean):
    """SIGKILL (no clean-up at all) while the generation runs: arq hands the job to the next worker once the
    dead one's in-progress mark expires; the member sees one result (the bot delivers: no token here)."""
    s, alice = arena.services, arena.alice
    await make_ready_face(s, alice.id, tokens=("<kb-face-1>",), data=_face_bytes(1))
    first = _worker_process(bot_settings, tmp_path, "worker1.log")
    second = None
    try:
        job = await _request(arena, alice, "a badger in the penalty box")
        in_progress = f"arq:in-progress:{contract.arq_job_id(job.id)}"
        deadline = time.monotonic() + 120
        while not await s.arq.exists(in_progress):
            assert time.monotonic() < deadline and first.poll() is None, (tmp_path / "worker1.log").read_text()[-3000:]
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # inside the job: loading the face, or the denoising loop
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert (await s.db.get_job(job.id)).status in ("queued", "running")
        second = _worker_process(bot_settings, tmp_path, "worker2.log")
        j = await _finished(arena, job.id, timeout=150)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)
    assert j.status == "done", (j.error, (tmp_path / "worker2.log").read_text()[-2000:])
    assert "try=2" in (tmp_path / "worker2.log").read_text()  # the killed job, retried by the new worker
    assert len(_results_shown(arena, alice)) == 1
    assert len(await s.db.list_outputs(job_id=job.id)) == 1
    await doctor_clean(s.settings, SUITE)
    count(SUITE, scenarios=1, sigkill_mid_generation=1, retried=1, delivered_once=1)


async def test_the_bot_restarted_mid_job_still_delivers_and_old_buttons_work(arena, bot_settings, store,
                                                                            doctor_clean):
    s, alice = arena.services, arena.alice
    await make_ready_face(s, alice.id, tokens=("<kb-face-1>",), data=_face_bytes(1))
    job = await _request(arena, alice, "a heron heading the ball")
    await arena.env.restart_bot()  # the job is queued; the bot goes away and comes back (start-up reconcile)
    async with running_worker(bot_settings, store, poster=simcord_poster(arena)):
        j = await _finished(arena, job.id)
        assert j.status == "done", j.error
        (result,) = _results_shown(arena, alice)
        await arena.env.restart_bot()  # and again, with the result's buttons on screen
        r = await alice.click(result, label="U1")
        assert not r.response.ephemeral or "belong" not in r.response.content, r.response.content
        (up,) = await s.db.list_jobs(user_id=alice.id, kind="upscale")
        u = await _finished(arena, up.id)
    assert u.status == "done", u.error
    assert len(_results_shown(arena, alice)) == 2  # the image, then its upscale: each once
    await doctor_clean(bot_settings, SUITE)
    count(SUITE, scenarios=1, bot_restarts=2, delivered_once=2, old_buttons_worked=1)
