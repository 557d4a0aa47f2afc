"""A hypernetwork through the real worker (tiny model, CPU): a sliced, checkpointed training job, then a
generation that composes the trained face-hypernetwork with an imported A1111 hypernetwork kit and posts it."""

from __future__ import annotations

import dataclasses
import hashlib

import torch

from gpu_worker import contract
from storage import keys
from tests.training.test_hypernetwork import DIM, _a1111_file
from tests.worker.conftest import target_of, until_empty, wait_events, wctx
from tests.worker.test_train import _enqueue_train, train_payload


async def test_hypernetwork_trains_in_slices_and_generates(simcord_env, arq_pool, store, start_worker,
                                                           worker_settings, engine):
    from training.artifact import load_artifact

    before = {k: v.clone() for k, v in engine.pipe.unet.state_dict().items()}
    guild = simcord_env.create_guild()
    ch = guild.create_text_channel("booth")
    alice = guild.add_member(simcord_env.create_user("alice"))
    settings = worker_settings.model_copy(update={"slice_steps": 2, "train_samples": 1})
    w = await start_worker(settings, http=simcord_env.bot.http)
    p = dataclasses.replace(train_payload(store, alice.id, 61, steps=4), method="hypernetwork")
    await _enqueue_train(arq_pool, p)
    evs = await wait_events(arq_pool, settings.events_stream, lambda e: any(x.type == "concept.ready" for x in e),
                            timeout=90)
    assert [e.type for e in evs] == ["job.started", "job.progress", "concept.ready"]
    ready = evs[-1]
    assert len(ready.data["sample_keys"]) == 1 and store.exists(ready.data["sample_keys"][0])  # drawn with it
    assert [s[2] for s in wctx(w).slices if s[0] == "start"] == [0, 1]  # resumed from the slice's checkpoint
    data = store.get_bytes(p.artifact_key)
    art = load_artifact(data)
    assert (art.method, art.steps, art.tokens) == ("hypernetwork", 4, ["ohwx"])
    assert art.hyper_structure["layer_structure"] == [1.0, 2.0, 1.0] and art.hypernetwork
    assert await until_empty(store, p.checkpoint_prefix) and not store.list(keys.photos_prefix(alice.id, 1))
    after = engine.pipe.unet.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)

    # The trained face and an A1111 hypernetwork kit, composed in one picture and posted.
    result = await alice.slash(ch, "draw", prompt="me")
    target = target_of(simcord_env.bot.interactions[-1])
    pt, _ = _a1111_file(DIM)
    kit_key = keys.guild_concept_key(guild.id, 1)
    store.put_bytes(kit_key, pt)
    face = contract.ConceptRef(key=p.artifact_key, kind="face", sha256=hashlib.sha256(data).hexdigest())
    kit = contract.ConceptRef(key=kit_key, kind="kit", sha256=hashlib.sha256(pt).hexdigest())
    g = contract.GeneratePayload(
        job_id=62, user_id=alice.id, prompt="on the pitch", output_prefix=keys.outputs_prefix(alice.id, 62),
        target=target, guild_id=guild.id, face=face, kit=kit, kit_words="retro shirt", count=1, seed=2, width=64,
        height=64, steps=3)
    await arq_pool.enqueue_job(contract.GENERATE_JOB, g.to_dict(), _job_id=contract.arq_job_id(62))
    evs = await wait_events(arq_pool, settings.events_stream,
                            lambda e: any(x.job_id == 62 and x.type in ("job.done", "job.failed") for x in e))
    end = next(e for e in evs if e.job_id == 62 and e.type in ("job.done", "job.failed"))
    assert end.type == "job.done", end.data
    resp = result.response
    assert [await a.read() for a in resp.attachments] == [store.get_bytes(k) for k in end.data["output_keys"]]
    after = engine.pipe.unet.state_dict()  # no hook or weight of either hypernetwork stays behind
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m._forward_pre_hooks for m in engine.pipe.unet.modules())
