"""Sliced, resumable training on the real worker (tiny model, CPU): slices == one run, generate waits at most
one slice, cancel cleans up."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from PIL import Image, ImageDraw

from gpu_worker import contract
from gpu_worker.checkpoints import load_photos
from gpu_worker.engine import SliceWork
from storage import keys
from tests.worker.conftest import put_face, target_of, until_empty, wait_events, wctx
from tests.worker.test_posted_png import assert_marked


def photos(n: int = 4, size: int = 64) -> list[bytes]:
    from kitbooth.render import png_bytes

    out = []
    for i in range(n):
        im = Image.new("RGB", (size, size), (40 + 30 * i, 90, 160 - 20 * i))
        d = ImageDraw.Draw(im)
        d.ellipse((12 + i, 8, 52 - i, 56), fill=(220, 180, 150))
        d.ellipse((22, 24, 28, 30), fill=(20, 20, 20))
        d.ellipse((36, 24, 42, 30), fill=(20, 20, 20))
        out.append(png_bytes(im))
    return out


def train_payload(store, uid: int, job_id: int, *, steps: int, target=None, cid: int = 1) -> contract.TrainPayload:
    pkeys = []
    for i, data in enumerate(photos()):
        k = keys.photo_key(uid, cid, i)
        store.put_bytes(k, data)
        pkeys.append(k)
    return contract.TrainPayload(
        job_id=job_id, user_id=uid, concept_id=cid, kind="face", method="pivotal", name="me", photo_keys=pkeys,
        artifact_key=keys.concept_key(uid, cid), checkpoint_prefix=keys.checkpoint_prefix(uid, cid),
        target=target or contract.DiscordTarget(channel_id=1, user_id=uid), steps=steps, resolution=64, seed=3,
    )


def reference_artifact(engine, store, p: contract.TrainPayload):
    """The same training in one uninterrupted run (no slicing, no worker)."""
    from training.artifact import load_artifact

    images, masks = load_photos(store, p.photo_keys)
    res = engine.train_slice(SliceWork(payload=p, images=images, masks=masks, state=None, max_steps=None,
                                       max_seconds=None, samples=0))
    assert res.done
    return load_artifact(res.artifact)


def assert_same_artifact(a, b) -> None:
    assert a.tokens == b.tokens and a.steps == b.steps and a.method == b.method
    assert torch.equal(a.embeddings, b.embeddings)
    assert a.unet_lora.keys() == b.unet_lora.keys()
    for k in a.unet_lora:
        assert torch.equal(a.unet_lora[k], b.unet_lora[k]), k


async def _enqueue_train(pool, p):
    assert await pool.enqueue_job(contract.TRAIN_JOB, p.to_dict(), _job_id=contract.arq_job_id(p.job_id, 0))


@pytest.mark.slow
async def test_sliced_training_equals_an_uninterrupted_run(simcord_env, arq_pool, store, start_worker,
                                                           worker_settings, engine):
    from training.artifact import load_artifact

    guild = simcord_env.create_guild()
    ch = guild.create_text_channel("booth")
    alice = guild.add_member(simcord_env.create_user("alice"))
    result = await alice.slash(ch, "draw", prompt="train me")
    target = target_of(simcord_env.bot.interactions[-1])
    p = train_payload(store, alice.id, 11, steps=6, target=target)
    settings = worker_settings.model_copy(update={"slice_steps": 2})
    w = await start_worker(settings, http=simcord_env.bot.http)
    await _enqueue_train(arq_pool, p)
    evs = await wait_events(arq_pool, settings.events_stream, lambda e: any(x.type == "concept.ready" for x in e),
                            timeout=90)
    ready = next(e for e in evs if e.type == "concept.ready")
    assert [e.type for e in evs] == ["job.started", "job.progress", "job.progress", "concept.ready"]
    assert [s[2] for s in wctx(w).slices if s[0] == "start"] == [0, 1, 2]
    data = store.get_bytes(p.artifact_key)
    import hashlib

    assert ready.data["sha256"] == hashlib.sha256(data).hexdigest() and ready.data["size_bytes"] == len(data)
    assert ready.data["trigger_tokens"] and ready.data["steps"] == 6 and ready.posted
    # photos and checkpoints are gone; the sample image is stored and posted
    assert not store.list(keys.photos_prefix(alice.id, 1)) and await until_empty(store, p.checkpoint_prefix)
    assert all(store.exists(k) for k in ready.data["sample_keys"]) and ready.data["sample_keys"]
    # The private reply said "I'll post in this channel": the result is a channel message that mentions her
    # (progress edited the private reply), and its id is in the event (the bot records it for /forget).
    posted = ch.last_message
    assert posted.content.startswith(f"<@{alice.id}> ✅") and posted.attachments and "✅" not in result.response.content
    assert ready.data["message_id"] == posted.id
    assert_marked(await posted.attachments[0].read(), "portrait")  # the posted sample is marked too
    # the final artifact equals one uninterrupted run's
    p2 = train_payload(store, alice.id, 12, steps=6, cid=2)
    p2 = contract.TrainPayload.from_dict({**p2.to_dict(), "seed": p.seed})
    assert_same_artifact(load_artifact(data), await asyncio.to_thread(reference_artifact, engine, store, p2))


@pytest.mark.slow
async def test_generate_during_training_waits_at_most_one_slice(arq_pool, store, start_worker, worker_settings):
    from tests.worker.test_generate import _payload

    settings = worker_settings.model_copy(update={"slice_steps": 6})
    uid, gen_uid = 21, 22
    p = train_payload(store, uid, 31, steps=30)  # 5 slices
    w = await start_worker(settings)
    await _enqueue_train(arq_pool, p)
    face = put_face(store, gen_uid, 1, seed=7)
    waits, gaps = [], []
    for n in range(2):  # during slice 0, and during a later slice
        while not any(s[0] == "start" and s[2] >= 2 * n for s in wctx(w).slices):
            await asyncio.sleep(0.01)
        t_enq = time.time()
        g = _payload(40 + n, gen_uid, contract.DiscordTarget(channel_id=1, user_id=gen_uid), face, count=1)
        await arq_pool.enqueue_job(contract.GENERATE_JOB, g.to_dict(), _job_id=contract.arq_job_id(g.job_id))
        await wait_events(arq_pool, settings.events_stream,
                          lambda e, j=g.job_id: any(x.type == "job.done" and x.job_id == j for x in e))
        t_gpu = next(t["gpu_started"] for t in wctx(w).timings if t["job_id"] == g.job_id)
        ended_before = [s for s in wctx(w).slices if s[0] == "end" and t_enq < s[3] < t_gpu]
        # the generation waited for at most one slice: the one on the GPU when it arrived (or, if it arrived
        # between two slices, the one that had just been handed to the GPU)
        assert len(ended_before) <= 1, ended_before
        gaps.append(len(ended_before))
        waits.append(t_gpu - t_enq)
    await wait_events(arq_pool, settings.events_stream, lambda e: any(x.type == "concept.ready" for x in e),
                      timeout=90)
    durations = []
    starts = {s[2]: s[3] for s in wctx(w).slices if s[0] == "start"}
    durations = [s[3] - starts[s[2]] for s in wctx(w).slices if s[0] == "end"]
    print(f"generate enqueue->GPU during training: {[f'{x:.2f}s' for x in waits]} ({gaps} slices); "
          f"slices: {[f'{x:.2f}s' for x in durations]}")


@pytest.mark.slow
async def test_cancel_mid_training_cleans_up(arq_pool, store, start_worker, worker_settings):
    settings = worker_settings.model_copy(update={"slice_steps": 400})
    uid = 51
    p = train_payload(store, uid, 61, steps=2000)  # one long slice
    w = await start_worker(settings)
    await _enqueue_train(arq_pool, p)
    while not any(s[0] == "start" for s in wctx(w).slices):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # mid-slice
    t0 = time.time()
    await arq_pool.enqueue_job(contract.CANCEL_JOB, contract.CancelPayload(user_id=uid).to_dict())
    evs = await wait_events(arq_pool, settings.events_stream, lambda e: any(x.type == "job.cancelled" for x in e))
    stopped_in = time.time() - t0
    assert [e.type for e in evs] == ["job.started", "job.cancelled"]
    assert not store.exists(p.artifact_key) and not store.list(p.checkpoint_prefix)
    assert await arq_pool.zcard(settings.queue_name) == 0  # no next slice was queued
    assert stopped_in < 5.0


async def test_failed_kit_training_deletes_photos_and_says_how_to_retry(arq_pool, store, start_worker,
                                                                       worker_settings):
    guild = 77
    pkeys = [keys.guild_photo_key(guild, 5, i) for i in range(2)]
    store.put_bytes(pkeys[0], photos(1)[0])
    store.put_bytes(pkeys[1], b"this is not a PNG")  # damaged in the store
    p = contract.TrainPayload(
        job_id=61, user_id=9, concept_id=5, kind="kit", method="lora", name="Arsenal home", photo_keys=pkeys,
        artifact_key=keys.guild_concept_key(guild, 5), checkpoint_prefix=keys.guild_checkpoint_prefix(guild, 5),
        target=contract.DiscordTarget(channel_id=1, user_id=9), steps=4, resolution=64,
    )
    await start_worker(worker_settings)
    await arq_pool.enqueue_job(contract.TRAIN_JOB, p.to_dict(), _job_id=contract.arq_job_id(61, 0))
    evs = await wait_events(arq_pool, worker_settings.events_stream, lambda e: any(x.type == "job.failed" for x in e))
    reason = next(e for e in evs if e.type == "job.failed").data["reason"]
    assert "damaged" in reason and "/kit train" in reason and "/train again" not in reason.replace("/kit train", "")
    assert store.list(f"guilds/{guild}/") == []  # photos gone, no artifact, no checkpoint
