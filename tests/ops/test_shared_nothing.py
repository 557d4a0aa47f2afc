"""Two ``kitbooth worker`` processes that share nothing but Redis and an S3 bucket (moto on loopback): each has
its own empty data folder. A face's training starts on worker 1, which is SIGKILLed mid-slice; worker 2 resumes
from the checkpoint in the bucket and produces the artifact an uninterrupted run produces. Both serve
generations. Forgetting the user (the store's ``delete_prefix`` on their prefix, as ``bot/forget.py`` does)
leaves no object of theirs in the bucket."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from arq import create_pool
from arq.connections import RedisSettings
from arq.jobs import Job, JobStatus

from gpu_worker import contract
from storage import keys
from tests.ops.conftest import spawn, stop
from tests.worker.conftest import put_face, wait_events
from tests.worker.test_generate import _payload
from tests.worker.test_train import assert_same_artifact, reference_artifact, train_payload

UID, OTHER = 501, 502


def _bucket_keys(s3_server, bucket: str) -> set[str]:
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


async def _generate(pool, stream: str, job_id: int, face) -> list[contract.Event]:
    g = _payload(job_id, UID, contract.DiscordTarget(channel_id=1, user_id=UID), face, count=1, steps=2)
    assert await pool.enqueue_job(contract.GENERATE_JOB, g.to_dict(), _job_id=contract.arq_job_id(g.job_id))
    evs = await wait_events(pool, stream, lambda e: any(x.type == "job.done" and x.job_id == job_id for x in e),
                            timeout=120)
    # The event goes out just before the job function returns; wait until arq has finished the job too, so stopping the worker
    # next cannot cancel the job in that last moment (arq would then run it again, and its log line never comes).
    job, deadline = Job(contract.arq_job_id(g.job_id), pool), time.monotonic() + 60
    while await job.status() in (JobStatus.deferred, JobStatus.queued, JobStatus.in_progress):
        assert time.monotonic() < deadline, f"job {job_id} never finished"
        await asyncio.sleep(0.05)
    return evs


@pytest.mark.slow
async def test_two_workers_share_only_redis_and_the_bucket(tmp_path, s3_server, worker_env, queue_names,
                                                           ops_redis_url, engine):
    from training.artifact import load_artifact

    bucket = s3_server.new_bucket()
    store = s3_server.store(bucket, "kb")  # what the workers see: s3://bucket/kb
    s3 = {"KITBOOTH_STORE_URL": f"s3://{bucket}/kb", "KITBOOTH_S3_ENDPOINT": s3_server.endpoint,
          "KITBOOTH_S3_ACCESS_KEY_ID": s3_server.access_key_id,
          "KITBOOTH_S3_SECRET_ACCESS_KEY": s3_server.secret_access_key,
          "KITBOOTH_SLICE_STEPS": "8", "KITBOOTH_SLICE_SECONDS": "5", "KITBOOTH_JOB_TIMEOUT_S": "15"}
    stream = queue_names["KITBOOTH_EVENTS_STREAM"]
    folders = [tmp_path / "w1", tmp_path / "w2"]
    for f in folders:
        f.mkdir()
    env1, env2 = (worker_env(f, **s3) for f in folders)
    log1, log2 = tmp_path / "worker1.log", tmp_path / "worker2.log"

    face = put_face(store, UID, 2, seed=7)
    put_face(store, OTHER, 1, seed=8)  # another member's file, which must survive the forget
    p = train_payload(store, UID, 81, steps=24)  # 3 slices of 8 steps
    ckpt = p.checkpoint_prefix + "state.ckpt"
    pool = await create_pool(RedisSettings.from_dsn(ops_redis_url),
                             default_queue_name=queue_names["KITBOOTH_QUEUE_NAME"])
    first = spawn(["worker"], env1, log1)
    second = None
    try:
        await _generate(pool, stream, 91, face)  # served by worker 1 (the only one running)
        await pool.enqueue_job(contract.TRAIN_JOB, p.to_dict(), _job_id=contract.arq_job_id(p.job_id, 0))
        deadline = time.monotonic() + 120
        while not (store.exists(ckpt) and await pool.exists(f"arq:in-progress:kb-{p.job_id}-s1")):
            assert time.monotonic() < deadline and first.poll() is None, log1.read_text()[-3000:]
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.15)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert "slice=1" not in log1.read_text()  # it died inside slice 1
        second = spawn(["worker"], env2, log2)
        evs = await wait_events(pool, stream, lambda e: any(x.type in ("concept.ready", "job.failed") for x in e
                                                            if x.job_id == p.job_id), timeout=180)
        await _generate(pool, stream, 92, face)  # served by worker 2 (worker 1 is dead)
    finally:
        if first.poll() is None:
            first.kill()
        if second is not None:
            assert stop(second) == 0, log2.read_text()[-3000:]
        await pool.aclose()

    train_types = [e.type for e in evs if e.job_id == p.job_id]
    assert train_types[0] == "job.started" and train_types[-1] == "concept.ready", evs
    text1, text2 = log1.read_text(), log2.read_text()
    assert "slice=1 try=2" in text2, text2[-3000:]  # the killed slice was retried by the other worker
    assert "arq=kb-91" in text1 and "arq=kb-92" not in text1, text1[-3000:]
    assert "arq=kb-92" in text2 and "arq=kb-91" not in text2, text2[-3000:]
    # nothing went through the workers' own folders: the bucket holds every artifact
    assert not any(f.joinpath("artifacts").exists() and any(f.joinpath("artifacts").rglob("*.*")) for f in folders)
    ref = await asyncio.to_thread(reference_artifact, engine, store, train_payload(store, 72, 82, steps=24))
    assert_same_artifact(load_artifact(store.get_bytes(p.artifact_key)), ref)
    assert not store.list(p.checkpoint_prefix)

    before = _bucket_keys(s3_server, bucket)
    mine = {k for k in before if k.startswith(f"kb/{keys.user_prefix(UID)}")}
    assert f"kb/{p.artifact_key}" in mine and any(k.startswith(f"kb/{keys.outputs_prefix(UID, 92)}") for k in mine)
    await asyncio.to_thread(store.delete_prefix, keys.user_prefix(UID))
    after = _bucket_keys(s3_server, bucket)
    assert not {k for k in after if k.startswith(f"kb/{keys.user_prefix(UID)}")}, after
    assert f"kb/{keys.concept_key(OTHER, 1)}" in after
