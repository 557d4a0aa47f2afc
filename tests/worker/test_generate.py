"""Generate jobs through arq on the real worker (tiny model, CPU), posting through SimCord."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from gpu_worker import contract
from storage import keys
from tests.worker.conftest import put_face, read_events, target_of, wait_events, wctx


def _payload(job_id: int, user_id: int, target, face=None, **kw) -> contract.GeneratePayload:
    base = dict(prompt="at the stadium, cheering", count=2, seed=11, width=64, height=64, steps=4, guidance=5.0)
    base.update(kw)
    return contract.GeneratePayload(job_id=job_id, user_id=user_id, output_prefix=keys.outputs_prefix(user_id, job_id),
                                    target=target, face=face, **base)


async def _enqueue(pool, p) -> float:
    t = time.time()
    job = await pool.enqueue_job(contract.GENERATE_JOB, p.to_dict(), _job_id=contract.arq_job_id(p.job_id))
    assert job is not None
    return t


async def test_generate_job_posts_images_and_stores_outputs(simcord_env, arq_pool, store, start_worker,
                                                            worker_settings, engine):
    guild = simcord_env.create_guild()
    ch = guild.create_text_channel("booth")
    alice = guild.add_member(env_user := simcord_env.create_user("alice"))
    result = await alice.slash(ch, "draw", prompt="me")
    target = target_of(simcord_env.bot.interactions[-1])
    face = put_face(store, alice.id, 1, seed=1)
    await start_worker(http=simcord_env.bot.http)
    p = _payload(101, alice.id, target, face, count=4)
    t0 = await _enqueue(arq_pool, p)
    evs = await wait_events(arq_pool, worker_settings.events_stream, lambda e: any(x.type == "job.done" for x in e))
    done = next(e for e in evs if e.type == "job.done")
    assert done.posted and done.job_id == 101 and done.data["seeds"] == [11, 12, 13, 14]
    assert done.data["output_keys"] == [f"users/{alice.id}/outputs/101/{i}.png" for i in range(4)]
    for k in done.data["output_keys"]:
        assert Image.open(store.open(k)).size == (64, 64)
    resp = result.response
    assert resp.id == done.data["message_id"] and "at the stadium" in resp.content and "seed 11-14" in resp.content
    # each stored image is attached as is (no grid): see test_posted_png.py for its metadata
    assert [a.filename for a in resp.attachments] == [f"kitbooth-101-{i}.png" for i in range(1, 5)]
    assert [await a.read() for a in resp.attachments] == [store.get_bytes(k) for k in done.data["output_keys"]]
    ids = [c["custom_id"] for row in resp.components for c in row["components"]]
    assert contract.parse_button_id(ids[0]) == contract.ButtonId("upscale", 101, 0, alice.id)
    assert {contract.parse_button_id(i).action for i in ids} == {"upscale", "reroll", "vary", "delete"}
    assert env_user is not None and len(ch.history()) == 1
    w = start_worker.workers[-1]
    pipeline = next(t["pipeline"] for t in wctx(w).timings if t["job_id"] == 101)
    total = done.ts - t0
    print(f"generate: enqueue->posted+event {total * 1000:.0f} ms, pipeline {pipeline * 1000:.0f} ms, "
          f"queue overhead {(total - pipeline) * 1000:.0f} ms")


async def test_two_users_share_one_pipeline_call_each_with_their_own_face(
    simcord_env, arq_pool, store, start_worker, worker_settings, engine
):
    from training.compose import ConceptUse
    from training.generate import GenerationRequest, generate

    guild = simcord_env.create_guild()
    ch = guild.create_text_channel("booth")
    users = [guild.add_member(simcord_env.create_user(n)) for n in ("alice", "bob")]
    targets, faces = [], []
    for i, u in enumerate(users):
        await u.slash(ch, "draw", prompt="me")
        targets.append(target_of(simcord_env.bot.interactions[-1]))
        faces.append(put_face(store, u.id, 1, seed=100 + i))
    # Same prompt and seed: only the face concept differs.
    for i, u in enumerate(users):
        await _enqueue(arq_pool, _payload(200 + i, u.id, targets[i], faces[i], count=1, seed=5))
    calls_before = list(engine.calls)
    await start_worker(http=simcord_env.bot.http)
    evs = await wait_events(arq_pool, worker_settings.events_stream,
                            lambda e: sum(x.type == "job.done" for x in e) == 2)
    assert list(engine.calls)[len(calls_before):] == [2]  # ONE pipeline call for both users
    out = {e.job_id: np.asarray(Image.open(store.open(e.data["output_keys"][0])), dtype=np.float32) for e in evs}
    assert np.abs(out[200] - out[201]).mean() > 1.0  # different faces -> different pictures
    # Each batched image equals its user's request generated alone (so it carries that user's face).
    from training.artifact import load_artifact

    for i in range(len(users)):
        art = load_artifact(store.get_bytes(faces[i].key))
        req = GenerationRequest(prompt="at the stadium, cheering", concepts=[ConceptUse(faces[i].key, art)], seed=5,
                                count=1, width=64, height=64, steps=4, guidance=5.0)
        alone = np.asarray(generate(engine.pipe, engine.composer, [req])[0][0].image, dtype=np.float32)
        assert np.abs(alone - out[200 + i]).max() <= 2.0, f"user {i}: batched image differs from solo"
    assert all(e.posted for e in evs)


@pytest.mark.slow
async def test_bad_payloads_fail_clearly_and_the_worker_keeps_serving(arq_pool, store, start_worker,
                                                                       worker_settings, engine):
    from tests.worker.conftest import face_artifact
    from training.artifact import save_artifact

    target = contract.DiscordTarget(channel_id=1, user_id=9)
    uid = 9
    other = face_artifact(3, hidden=48)  # made for a base model with another text width
    store.put_bytes(keys.concept_key(uid, 2), save_artifact(other))
    store.put_bytes(keys.concept_key(uid, 3), b"\x00not a safetensors file at all")
    ref = lambda cid: contract.ConceptRef(key=keys.concept_key(uid, cid), kind="face")  # noqa: E731
    bad = [
        _payload(301, uid, target, ref(99)),  # unknown concept key
        _payload(302, uid, target, ref(2)),  # another base model
        _payload(303, uid, target, ref(3)),  # corrupt artifact
        _payload(304, uid, target, None, prompt="goal! " * 1700),  # 10,200 characters
        _payload(306, uid, target, put_face(store, uid + 1, 1, seed=4)),  # someone else's face
    ]
    for p in bad:
        await _enqueue(arq_pool, p)
    await arq_pool.enqueue_job(contract.GENERATE_JOB, {"job_id": 305, "user_id": uid, "prompt": 3, "what": 1},
                               _job_id=contract.arq_job_id(305))
    await arq_pool.enqueue_job(contract.GENERATE_JOB, "{not json", _job_id="kb-999")
    good = _payload(307, uid, target, put_face(store, uid, 1, seed=5), count=1)
    await _enqueue(arq_pool, good)
    await start_worker()  # no Discord client: posted=False, the bot delivers
    evs = await wait_events(arq_pool, worker_settings.events_stream,
                            lambda e: {x.job_id for x in e} >= {301, 302, 303, 304, 305, 306, 307}, timeout=60)
    by = {e.job_id: e for e in evs}
    reasons = {j: by[j].data.get("reason", "") for j in by}
    assert by[307].type == "job.done" and not by[307].posted
    assert all(by[j].type == "job.failed" for j in (301, 302, 303, 304, 305, 306))
    assert "no longer exists" in reasons[301]
    assert "different base model" in reasons[302]
    assert "damaged" in reasons[303] or "not a valid" in reasons[303]  # the concept-file validator says why
    assert "too long" in reasons[304] and "10200" in reasons[304]
    assert "could not be read" in reasons[305]
    assert "own face" in reasons[306]
    assert not any(store.list(keys.outputs_prefix(uid, j)) for j in (301, 302, 303, 304, 305, 306))
    assert len(await read_events(arq_pool, worker_settings.events_stream)) == 7
