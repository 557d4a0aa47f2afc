"""After a concept's file is deleted (/forget, a removed kit), every worker drops it from memory on its own:
the parsed file in the concept cache and the LoRA adapter resident on the pipeline."""

from __future__ import annotations

import hashlib

from gpu_worker import contract
from gpu_worker.worker import forget_deleted
from storage import keys
from tests.worker.conftest import put_face, wait_events, wctx
from tests.worker.test_generate import _payload


async def test_deleted_concepts_leave_worker_memory(arq_pool, store, start_worker, worker_settings, engine):
    from tests.training.concepts import make_artifact
    from training.artifact import save_artifact

    # The session-wide engine starts each test bare (conftest's base_engine), so everything resident below is
    # this test's: ``gone`` can be compared exactly (earlier tests' adapters would be "gone" here too, as their
    # files lived in their own tmp stores).
    assert engine.composer.resident_adapters() == []
    w = await start_worker()
    uid = 51
    face_data = save_artifact(make_artifact(engine.pipe, method="pivotal", seed=9))
    face_key = keys.concept_key(uid, 1)
    store.put_bytes(face_key, face_data)
    face = contract.ConceptRef(key=face_key, kind="face", sha256=hashlib.sha256(face_data).hexdigest())
    other = put_face(store, 52, 1, seed=2)  # someone else's, stays
    for job_id, user, ref in ((501, uid, face), (502, 52, other)):
        p = _payload(job_id, user, contract.DiscordTarget(channel_id=1, user_id=user), ref, count=1)
        await arq_pool.enqueue_job(contract.GENERATE_JOB, p.to_dict(), _job_id=contract.arq_job_id(job_id))
    await wait_events(arq_pool, worker_settings.events_stream,
                      lambda e: sum(x.type == "job.done" for x in e) >= 2)
    cache = wctx(w).concepts
    assert face_key in cache.cached_keys() and face_key in engine.composer.resident_adapters()

    store.delete_prefix(keys.user_prefix(uid))  # what /forget does to the store
    gone = await forget_deleted(wctx(w))

    assert gone == [face_key]
    assert face_key not in cache.cached_keys() and face_key not in engine.composer.resident_adapters()
    assert other.key in cache.cached_keys()
    assert await forget_deleted(wctx(w)) == []
