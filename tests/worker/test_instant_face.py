"""The instant face through the real worker (arq, tiny model on CPU, SimCord): slice 0 of a face training stores
the embedding under the user's prefix, a generation with ``instant_key`` runs before the training is done with
a tiny random IP-Adapter FaceID (loaded from a file by diffusers) and says it is a preview, in the reply and in
the PNG; once the trained face is ready, a generation with it is the normal one. insightface is replaced at the
engine's documented seam (``Engine.embed_face``) by a deterministic stand-in."""

from __future__ import annotations

import asyncio
import hashlib
import io
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image

from gpu_worker import contract
from gpu_worker.validation import validate_generate
from kitbooth.errors import NotAllowed
from kitbooth.render import INSTANT_PREVIEW
from storage import keys
from tests.training.test_instant_face import stand_in_embed, tiny_adapter
from tests.worker.conftest import put_face, target_of, wait_events
from tests.worker.test_generate import _payload
from tests.worker.test_train import train_payload
from training.instant_face import decode_embedding


@pytest.fixture
def instant(engine, worker_settings, tmp_path, monkeypatch):
    """Worker settings with the instant face on, and the stand-in embedder at the engine's seam."""
    adapter = tiny_adapter(engine.pipe.unet, tmp_path / "adapter")
    monkeypatch.setattr(engine, "settings", engine.settings.model_copy(update={"instant_face_adapter": adapter}))
    monkeypatch.setattr(engine, "embed_face", stand_in_embed)
    return worker_settings.model_copy(update={"instant_face_adapter": adapter, "slice_steps": 3})


def _params(store, key) -> str:
    return Image.open(io.BytesIO(store.get_bytes(key))).text["parameters"]


async def _until_stored(store, key, timeout: float = 60.0) -> bytes:
    for _ in range(int(timeout / 0.05)):
        if store.exists(key):
            return store.get_bytes(key)
        await asyncio.sleep(0.05)
    raise AssertionError(f"{key} was never written")


def _first(evs, type_, job_id):
    return next((n for n, e in enumerate(evs) if e.type == type_ and e.job_id == job_id), None)


async def test_instant_face_before_training_is_done_then_the_trained_face(simcord_env, arq_pool, store, start_worker,
                                                                           instant, engine):
    guild = simcord_env.create_guild()
    ch = guild.create_text_channel("booth")
    alice = guild.add_member(simcord_env.create_user("alice"))
    await start_worker(instant, http=simcord_env.bot.http)
    t = train_payload(store, alice.id, 61, steps=12)  # 4 slices of 3 steps
    await arq_pool.enqueue_job(contract.TRAIN_JOB, t.to_dict(), _job_id=contract.arq_job_id(t.job_id, 0))

    data = await _until_stored(store, keys.instant_key(alice.id, t.concept_id))
    assert decode_embedding(data).shape == (512,)  # written at slice 0, under alice's own prefix

    first = await alice.slash(ch, "draw", prompt="me")
    g = _payload(62, alice.id, target_of(simcord_env.bot.interactions[-1]), face=None, count=1,
                 instant_key=keys.instant_key(alice.id, t.concept_id))
    await arq_pool.enqueue_job(contract.GENERATE_JOB, g.to_dict(), _job_id=contract.arq_job_id(g.job_id))
    evs = await wait_events(arq_pool, instant.events_stream,
                            lambda e: _first(e, "job.done", 62) is not None and _first(e, "concept.ready", 61)
                            is not None, timeout=120)
    assert _first(evs, "job.done", 62) < _first(evs, "concept.ready", 61)  # before the training was done
    done = evs[_first(evs, "job.done", 62)]
    assert INSTANT_PREVIEW in first.response.content and "preview — your trained face is on its way" in \
        first.response.content
    assert "Instant face: preview" in _params(store, done.data["output_keys"][0])
    assert engine.pipe.unet.encoder_hid_proj is None  # the adapter went with the job

    ready = evs[_first(evs, "concept.ready", 61)]
    trained = contract.ConceptRef(key=ready.data["artifact_key"], kind="face", sha256=ready.data["sha256"])
    second = await alice.slash(ch, "draw", prompt="me again")
    g2 = _payload(63, alice.id, target_of(simcord_env.bot.interactions[-1]), face=trained, count=1)
    await arq_pool.enqueue_job(contract.GENERATE_JOB, g2.to_dict(), _job_id=contract.arq_job_id(g2.job_id))
    evs = await wait_events(arq_pool, instant.events_stream, lambda e: _first(e, "job.done", 63) is not None,
                            timeout=60)
    done2 = evs[_first(evs, "job.done", 63)]
    assert "preview" not in second.response.content
    assert "Instant face" not in _params(store, done2.data["output_keys"][0])


async def test_a_batch_mixing_instant_and_plain_leaves_the_plain_request_unchanged(arq_pool, store, start_worker,
                                                                                   instant, engine):
    bob_face = put_face(store, 72, 1, seed=4)
    store.put_bytes(keys.instant_key(71, 9), stand_in_embed(Image.new("RGB", (8, 8), (1, 2, 3))).tobytes())
    target = contract.DiscordTarget(channel_id=1, user_id=71)
    await start_worker(instant)
    solo = _payload(81, 72, target, face=bob_face, count=1)
    await arq_pool.enqueue_job(contract.GENERATE_JOB, solo.to_dict(), _job_id=contract.arq_job_id(81))
    await wait_events(arq_pool, instant.events_stream, lambda e: _first(e, "job.done", 81) is not None, timeout=60)
    both = [_payload(82, 71, target, count=1, instant_key=keys.instant_key(71, 9)),
            _payload(83, 72, target, face=bob_face, count=1)]
    calls = len(engine.calls)
    # Both become due at the same instant, so one poll of the worker takes both (a loaded machine could otherwise
    # poll between two plain enqueues and run them as two batches).
    due = datetime.now(UTC) + timedelta(seconds=1)
    for p in both:
        await arq_pool.enqueue_job(contract.GENERATE_JOB, p.to_dict(), _job_id=contract.arq_job_id(p.job_id),
                                   _defer_until=due)
    evs = await wait_events(arq_pool, instant.events_stream,
                            lambda e: all(_first(e, "job.done", j) is not None for j in (82, 83)), timeout=60)
    assert list(engine.calls)[calls:] == [2]  # one batch: the instant item got its own pipeline call inside it
    out = {j: evs[_first(evs, "job.done", j)].data["output_keys"][0] for j in (81, 82, 83)}
    pix = {j: Image.open(io.BytesIO(store.get_bytes(k))).tobytes() for j, k in out.items()}
    assert pix[83] == pix[81]  # the instant request's adapter never touched bob's rows
    assert "Instant face: preview" in _params(store, out[82]) and "Instant face" not in _params(store, out[83])


async def test_no_embedding_yet_is_a_short_instruction(arq_pool, store, start_worker, instant):
    await start_worker(instant)
    p = _payload(91, 73, contract.DiscordTarget(channel_id=1, user_id=73), count=1,
                 instant_key=keys.instant_key(73, 2))
    await arq_pool.enqueue_job(contract.GENERATE_JOB, p.to_dict(), _job_id=contract.arq_job_id(91))
    evs = await wait_events(arq_pool, instant.events_stream, lambda e: _first(e, "job.failed", 91) is not None)
    assert "instant face is not ready yet" in evs[_first(evs, "job.failed", 91)].data["reason"]


def test_the_worker_refuses_someone_elses_embedding_or_one_beside_a_trained_face():
    target = contract.DiscordTarget(channel_id=1, user_id=5)
    with pytest.raises(NotAllowed):
        validate_generate(_payload(1, 5, target, instant_key=keys.instant_key(6, 1)))
    face = contract.ConceptRef(key=keys.concept_key(5, 1), kind="face", sha256=hashlib.sha256(b"x").hexdigest())
    with pytest.raises(NotAllowed):
        validate_generate(_payload(1, 5, target, face=face, instant_key=keys.instant_key(5, 1)))
    validate_generate(_payload(1, 5, target, instant_key=keys.instant_key(5, 1)))


async def test_a_cancelled_training_deletes_its_instant_embedding(arq_pool, store, start_worker, instant):
    settings = instant.model_copy(update={"slice_steps": 400})
    t = train_payload(store, 74, 64, steps=2000)  # one long slice
    await start_worker(settings)
    await arq_pool.enqueue_job(contract.TRAIN_JOB, t.to_dict(), _job_id=contract.arq_job_id(t.job_id, 0))
    key = keys.instant_key(74, t.concept_id)
    await _until_stored(store, key)
    await arq_pool.enqueue_job(contract.CANCEL_JOB, contract.CancelPayload(user_id=74).to_dict())
    await wait_events(arq_pool, settings.events_stream, lambda e: _first(e, "job.cancelled", 64) is not None)
    assert not store.exists(key)  # a face that will never be ready keeps no embedding
