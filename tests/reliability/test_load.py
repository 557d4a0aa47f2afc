"""Load: 200 ``/generate`` requests from 50 members through SimCord, real Redis and two real workers (in-process,
tiny model, posting through SimCord's REST), with three face trainings interleaved. Every request is delivered
exactly once; the figures are throughput, the p50/p95 wait (request → result), the longest wait of a generation
that queued behind a training slice, and fairness (no member's requests all at the back). Counts and rates only:
nothing here asserts a timing."""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import datetime

import pytest

from bot.quotas import MAX_ACTIVE
from tests.bot.conftest import fake_checker, make_ready_face, selfies
from tests.bot.in_process import running_worker, simcord_poster, until, worker_settings
from tests.reliability.figures import count

pytestmark = pytest.mark.slow
SUITE = "load"
MEMBERS, PER_MEMBER, TRAINERS = 50, 4, 3


@pytest.fixture
def bot_settings(tmp_path, redis_url, tiny_model_dir):
    return worker_settings(tmp_path, redis_url, tiny_model_dir, tag="load", daily_quota=50, train_steps=4,
                           train_resolution=64, slice_steps=2)


@pytest.fixture
def bot_seams():
    return {"photo_checker": fake_checker()}


def _t(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def test_200_requests_from_50_members_each_delivered_once(arena, bot_settings, store, doctor_clean):
    s, ch = arena.services, arena.channel
    from tests.worker.conftest import face_artifact
    from training.artifact import save_artifact

    face = save_artifact(face_artifact(1))
    members = [arena.guild.add_member(arena.env.create_user(f"fan{i:02d}")) for i in range(MEMBERS)]
    for i, m in enumerate(members):
        await make_ready_face(s, m.id, tokens=(f"ohwxfan{i:02d}",), data=face)
    trainers = [arena.guild.add_member(arena.env.create_user(f"coach{i}")) for i in range(TRAINERS)]
    prompts: dict[str, object] = {}
    t0 = time.monotonic()
    async with running_worker(bot_settings, store, poster=simcord_poster(arena)) as w1, \
            running_worker(bot_settings, store, poster=simcord_poster(arena)) as w2:
        for round_ in range(PER_MEMBER):
            if round_ == 1:  # trainings land in the middle of the generations
                for coach in trainers:
                    shown = await coach.slash(ch, "train")
                    await coach.submit_modal(shown, {"photos": selfies(4), "consent": ["yes"]})
            for i, m in enumerate(members):
                async def room(m=m):
                    return len([j for j in await s.db.active_jobs(m.id) if j.kind == "generate"]) < MAX_ACTIVE

                await until(arena, room, 120, interval=0.02)
                prompt = f"fan {i} request {round_} at the derby"
                r = await m.slash(ch, "generate", prompt=prompt, count=1)
                assert r.response is not None and not r.response.ephemeral, r.response and r.response.content
                prompts[prompt] = m

        async def all_done():
            jobs = await s.db.list_jobs()
            return jobs if all(j.status in ("done", "failed") for j in jobs) else None

        jobs = await until(arena, all_done, 300, interval=0.1)
        slices = [t for w in (w1, w2) for kind, *_, t in w.ctx["kitbooth"].slices if kind == "start"]
        timings = list(w1.ctx["kitbooth"].timings) + list(w2.ctx["kitbooth"].timings)
    elapsed = time.monotonic() - t0
    gens = [j for j in jobs if j.kind == "generate"]
    assert len(gens) == MEMBERS * PER_MEMBER and all(j.status == "done" for j in gens), \
        [(j.id, j.error) for j in gens if j.status != "done"][:5]
    assert all(j.status == "done" for j in jobs if j.kind == "train")
    history = ch.history()
    shown = {p: sum(1 for msg in history if p in msg.content and msg.attachments) for p in prompts}
    assert set(shown.values()) == {1}, {p: n for p, n in shown.items() if n != 1}  # exactly once each

    waits = sorted(_t(j.finished_at) - _t(j.created_at) for j in gens)
    order = sorted(gens, key=lambda j: j.finished_at)
    back = {j.id for j in order[-len(order) // 4:]}
    all_at_back = sum(1 for m in members if all(j.id in back for j in gens if j.user_id == m.id))
    assert all_at_back == 0  # fairness: nobody's requests all finish in the last quarter
    # A generation waiting behind training: the training slices the GPU took between its request and its turn.
    behind = [sum(1 for st in slices if t["enqueued"] < st < t["gpu_started"]) for t in timings if t.get("gpu_started")]
    count(SUITE, requests=len(gens), delivered_once=sum(1 for n in shown.values() if n == 1), members=MEMBERS,
          trainings=TRAINERS, training_slices=len(slices), members_all_at_back=all_at_back)
    from tests.reliability.figures import FIGURES

    FIGURES[SUITE].update({
        "throughput_per_s": round(len(gens) / elapsed, 2),
        "wait_p50_s": round(statistics.median(waits), 2),
        "wait_p95_s": round(waits[int(len(waits) * 0.95) - 1], 2),
        "longest_wait_behind_training_slices": max(behind, default=0),
    })
    await asyncio.sleep(0)
    await doctor_clean(s.settings, SUITE)
