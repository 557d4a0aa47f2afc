"""A worker PROCESS is SIGKILLed mid-slice; arq retries the slice on a new worker, which resumes from the last
checkpoint and produces the same artifact as an uninterrupted run."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpu_worker import contract
from tests.worker.conftest import wait_events
from tests.worker.test_train import assert_same_artifact, reference_artifact, train_payload

ROOT = Path(__file__).resolve().parents[2]


def _spawn(env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gpu_worker"], cwd=log.parent, env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


@pytest.mark.slow
async def test_sigkill_mid_slice_resumes_from_checkpoint(tmp_path, arq_pool, store, worker_settings, engine,
                                                          tiny_model_dir):
    from training.artifact import load_artifact

    s = worker_settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("KITBOOTH_")}
    env.update({
        "PYTHONPATH": str(ROOT), "KITBOOTH_REDIS_URL": s.redis_url, "KITBOOTH_QUEUE_NAME": s.queue_name,
        "KITBOOTH_EVENTS_STREAM": s.events_stream, "KITBOOTH_BASE_MODEL": str(tiny_model_dir),
        "KITBOOTH_DEVICE": "cpu", "KITBOOTH_DTYPE": "float32", "KITBOOTH_DATA_DIR": str(tmp_path),
        "KITBOOTH_SLICE_STEPS": "8", "KITBOOTH_SLICE_SECONDS": "5", "KITBOOTH_JOB_TIMEOUT_S": "15", "KITBOOTH_SAFETY_CHECKER": "false",
        "KITBOOTH_OFFLINE": "true", "KITBOOTH_TRAIN_SAMPLES": "0", "KITBOOTH_TI_SLOTS": "8",
        # same intra-op thread count as this process, so float reductions run in the same order
        "OMP_NUM_THREADS": str(__import__("torch").get_num_threads()),
    })
    assert Path(store.root) == tmp_path / "artifacts"
    p = train_payload(store, 71, 81, steps=24)  # 3+ slices (8 steps or 5 s each)
    ckpt = p.checkpoint_prefix + "state.ckpt"
    await arq_pool.enqueue_job(contract.TRAIN_JOB, p.to_dict(), _job_id=contract.arq_job_id(p.job_id, 0))
    log1, log2 = tmp_path / "worker1.log", tmp_path / "worker2.log"
    first = _spawn(env, log1)
    try:
        # wait until slice 1 is running (slice 0's checkpoint is in the store), then kill -9 mid-slice
        deadline = time.monotonic() + 120
        while not (store.exists(ckpt) and await arq_pool.exists(f"arq:in-progress:kb-{p.job_id}-s1")):
            assert time.monotonic() < deadline and first.poll() is None, log1.read_text()[-3000:]
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.15)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        t_kill = time.monotonic()
        assert "slice=1" not in log1.read_text()  # it died inside slice 1
        second = _spawn(env, log2)
        try:
            evs = await wait_events(arq_pool, s.events_stream,
                                    lambda e: any(x.type in ("concept.ready", "job.failed") for x in e), timeout=120)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(20)
    finally:
        if first.poll() is None:
            first.kill()
    recovered = time.monotonic() - t_kill
    types = [e.type for e in evs]
    assert types[0] == "job.started" and types[-1] == "concept.ready" and "job.failed" not in types, evs
    text = log2.read_text()
    assert "slice=1 try=2" in text, text[-3000:]  # the killed slice was retried by the new worker
    print(f"recovered and finished {recovered:.1f}s after the kill")
    ref = await asyncio.to_thread(reference_artifact, engine, store, train_payload(store, 72, 82, steps=24))
    assert_same_artifact(load_artifact(store.get_bytes(p.artifact_key)), ref)
    assert not store.list(p.checkpoint_prefix)
