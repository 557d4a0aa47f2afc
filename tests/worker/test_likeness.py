"""The likeness levers through the real worker job (arq, tiny model on CPU, SimCord): best-of-N re-ranks the
candidates against the member's reference by key, the face-detail pass runs with their own concept, and every
stored PNG and the reply say what ran. The descriptor and the face finder are replaced at the engine's
documented seams (``Engine.describe``, ``Engine.find_face``): the tiny model draws no dlib-detectable faces."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from gpu_worker import contract
from storage import keys
from tests.worker.conftest import put_face, target_of, wait_events
from training.faces import FaceBox
from training.rerank import encode_reference, likeness

REF = np.full(128, 0.1)


def _brightness(img: Image.Image) -> float:
    return float(np.asarray(img.convert("L"), dtype=np.float64).mean())


class KnownScores:
    """A descriptor whose distance to REF is 2 × the image's mean brightness / 255 (a known score), or no face
    for images in ``faceless`` (matched by brightness); every image it sees is recorded, in order."""

    def __init__(self, faceless=lambda b: False):
        self.seen: list[float] = []
        self.faceless = faceless

    def __call__(self, img: Image.Image):
        b = _brightness(img)
        self.seen.append(b)
        if self.faceless(b):
            return None
        d = REF.copy()
        d[0] += 2 * b / 255
        return d


async def _run(simcord_env, arq_pool, store, start_worker, worker_settings, *, job_id, **kw):
    guild = simcord_env.create_guild()
    ch = guild.create_text_channel("booth")
    alice = guild.add_member(simcord_env.create_user("alice"))
    result = await alice.slash(ch, "draw", prompt="me")
    target = target_of(simcord_env.bot.interactions[-1])
    face = put_face(store, alice.id, 1, seed=1)
    ref_key = keys.reference_key(alice.id, 1)
    store.put_bytes(ref_key, encode_reference(REF))
    base = dict(prompt="at the stadium, cheering", count=2, seed=21, width=64, height=64, steps=3, guidance=5.0,
                reference_key=ref_key)
    base.update(kw)
    p = contract.GeneratePayload(job_id=job_id, user_id=alice.id, output_prefix=keys.outputs_prefix(alice.id, job_id),
                                 target=target, face=face, **base)
    await start_worker(http=simcord_env.bot.http)
    await arq_pool.enqueue_job(contract.GENERATE_JOB, p.to_dict(), _job_id=contract.arq_job_id(job_id))
    evs = await wait_events(arq_pool, worker_settings.events_stream,
                            lambda e: any(x.type in ("job.done", "job.failed") for x in e), timeout=60)
    done = next(e for e in evs if e.type in ("job.done", "job.failed"))
    return done, result.response


def _params(store, key) -> str:
    return Image.open(io.BytesIO(store.get_bytes(key))).text["parameters"]


async def test_best_of_keeps_the_closest_candidates_in_order(simcord_env, arq_pool, store, start_worker,
                                                             worker_settings, engine, monkeypatch):
    scores = KnownScores()
    monkeypatch.setattr(engine, "describe", scores)
    done, reply = await _run(simcord_env, arq_pool, store, start_worker, worker_settings, job_id=501,
                             candidates=8, face_detail="off")
    assert done.type == "job.done", done.data
    assert len(scores.seen) == 8  # every candidate scored once, in one batch of candidates
    order = sorted(range(8), key=lambda i: scores.seen[i])[:2]  # the two darkest are the closest
    assert done.data["seeds"] == [21 + i for i in order]
    kept = [_brightness(Image.open(store.open(k))) for k in done.data["output_keys"]]
    assert kept == pytest.approx([scores.seen[i] for i in order])
    expected = [likeness(2 * scores.seen[i] / 255) for i in order]
    assert done.data["likeness"] == pytest.approx(expected)
    for k, like in zip(done.data["output_keys"], expected, strict=True):
        params = _params(store, k)
        assert "Best of: 8" in params and f"Likeness: {like:.2f}" in params and "Face detail" not in params
        assert params.rstrip().endswith(params.rsplit("Version: ", 1)[1])  # Version stays last
    assert f"likeness {expected[0]:.2f} {expected[1]:.2f}" in reply.content
    assert len(reply.attachments) == 2


async def test_faceless_candidates_rank_last(simcord_env, arq_pool, store, start_worker, worker_settings, engine,
                                             monkeypatch):
    scores = KnownScores()
    scores.faceless = lambda b: len(scores.seen) != 3  # only the third candidate (seed 23) shows a face
    monkeypatch.setattr(engine, "describe", scores)
    done, reply = await _run(simcord_env, arq_pool, store, start_worker, worker_settings, job_id=502,
                             candidates=4, face_detail="off")
    assert len(scores.seen) == 4
    assert done.data["seeds"] == [23, 21]  # the face first, then the face-less in their own order
    assert done.data["likeness"][0] == pytest.approx(likeness(2 * scores.seen[2] / 255))
    assert done.data["likeness"][1] is None
    assert "Likeness" not in _params(store, done.data["output_keys"][1])
    assert "Best of: 4" in _params(store, done.data["output_keys"][1])
    assert "likeness " in reply.content and "–" in reply.content


async def test_face_detail_runs_with_the_members_concept_and_is_recorded(simcord_env, arq_pool, store,
                                                                        start_worker, worker_settings, engine,
                                                                        monkeypatch):
    monkeypatch.setattr(engine, "describe", KnownScores())
    monkeypatch.setattr(engine, "find_face", lambda img: FaceBox(24.0, 24.0, 36.0, 36.0, 1.0))  # 12 px: small
    done, reply = await _run(simcord_env, arq_pool, store, start_worker, worker_settings, job_id=504,
                             candidates=None, count=1)
    assert done.type == "job.done", done.data
    params = _params(store, done.data["output_keys"][0])
    assert "Face detail: img2img" in params and "Face detail box: 24 24 36 36" in params
    assert "Face detail strength: 0.4" in params and "Likeness: " in params and "Best of" not in params
    assert reply.attachments and "likeness" in reply.content


async def test_a_reference_of_another_user_is_refused(simcord_env, arq_pool, store, start_worker, worker_settings,
                                                      engine):
    done, _ = await _run(simcord_env, arq_pool, store, start_worker, worker_settings, job_id=505,
                         reference_key=keys.reference_key(12345, 1), candidates=4)
    assert done.type == "job.failed" and "own face" in done.data["reason"]


def test_result_text_shows_likeness_only_when_scored_and_metadata_keeps_version_last():
    from kitbooth.render import generate_result
    from training.png_metadata import a1111_parameters, with_extra

    plain = generate_result(job_id=1, user_id=2, prompt="goal", seeds=[3, 4], pngs=[b"a", b"b"])
    assert "likeness" not in plain.content  # the old signature still renders as before
    assert "likeness" not in generate_result(job_id=1, user_id=2, prompt="goal", seeds=[3], pngs=[b"a"],
                                             likeness=[None]).content
    shown = generate_result(job_id=1, user_id=2, prompt="goal", seeds=[3, 4], pngs=[b"a", b"b"],
                            likeness=[0.834, None])
    assert "likeness 0.83 –" in shown.content
    params = a1111_parameters("p", "n", steps=2, cfg=7.0, seed=3, size=(64, 64), model="m",
                              extra={"Denoising strength": 0.35})
    more = with_extra(params, {"Best of": 8, "Likeness": "0.83", "Face detail": "img2img"})
    assert more.startswith("p\nNegative prompt: n\n") and more.count("Version: KitBooth") == 1
    assert more.endswith(params.rsplit(", ", 1)[1])
    assert "Denoising strength: 0.35, Best of: 8, Likeness: 0.83, Face detail: img2img, Version" in more
