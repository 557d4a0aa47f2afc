"""Upscale and export jobs end to end (no Discord client: the events carry posted=False)."""

from __future__ import annotations

from PIL import Image

from gpu_worker import contract
from kitbooth.render import png_bytes
from storage import keys
from tests.worker.conftest import put_face, wait_events


async def test_upscale_and_export_jobs(arq_pool, store, start_worker, worker_settings):
    uid = 5
    target = contract.DiscordTarget(channel_id=1, user_id=uid)
    src = keys.output_key(uid, 1, 0)
    store.put_bytes(src, png_bytes(Image.new("RGB", (64, 64), (10, 120, 200))))
    up = contract.UpscalePayload(job_id=2, user_id=uid, source_key=src, output_key=keys.output_key(uid, 2, 0),
                                 target=target, prompt="x", seed=1)
    face = put_face(store, uid, 1, seed=1)
    ex = contract.ExportPayload(job_id=3, user_id=uid, concept_key=face.key,
                                output_prefix=f"users/{uid}/exports/3/", target=target, formats=["a1111"],
                                name="Zoë")
    await arq_pool.enqueue_job(contract.UPSCALE_JOB, up.to_dict(), _job_id=contract.arq_job_id(2))
    await arq_pool.enqueue_job(contract.EXPORT_JOB, ex.to_dict(), _job_id=contract.arq_job_id(3))
    await start_worker()
    evs = await wait_events(arq_pool, worker_settings.events_stream, lambda e: len(e) >= 2)
    by = {e.job_id: e for e in evs}
    assert by[2].type == "job.done", by[2]
    assert Image.open(store.open(up.output_key)).size == (128, 128)
    assert by[3].type == "job.done", by[3]
    assert by[3].data["file_keys"] and all(store.exists(k) for k in by[3].data["file_keys"])
    assert all(k.rsplit("/", 1)[-1].startswith("zoe-kb-face") for k in by[3].data["file_keys"])  # the owner's
