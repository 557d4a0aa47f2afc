"""End-to-end smoke test of the worker's own install (run by scripts/test with .venv-worker's python).

1. ``kitbooth make-tiny-model DIR`` (the worker venv's entry point); with ``--tiny-model DIR`` the model is
   kept there and rebuilt only when the installed ``training/tiny.py`` changes.
2. ``kitbooth worker`` started as its own process on that model, against REDIS_URL (a test database), with a
   queue and an events stream of its own, no Discord token (results are then announced on the stream only).
3. One generate job enqueued with arq, exactly as the bot enqueues it (payload from ``gpu_worker.contract``).
4. Wait for its arq result and its ``job.done`` event; the PNG it names must be in the local artifact store.
5. SIGTERM: the worker must stop cleanly (exit status 0) within a few seconds.

    .venv-worker/bin/python scripts/smoke_worker.py redis://127.0.0.1:6379/15 [--tiny-model DIR]

Exits 0 on success; otherwise prints what failed and the worker's log tail, and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from arq import create_pool
from arq.connections import RedisSettings

from gpu_worker import contract
from kitbooth.health import heartbeat_key, worker_heartbeats
from storage import keys

BIN = Path(sys.executable).parent  # the venv's bin/: its own `kitbooth` entry point
START_TIMEOUT_S = 120  # load the tiny pipeline and connect
JOB_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class SmokeFailure(Exception):
    pass


def step(msg: str, t0: float) -> None:
    print(f"  [{time.monotonic() - t0:5.1f} s] {msg}", flush=True)


def worker_env(data: Path, redis_url: str, queue: str, stream: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KITBOOTH_")}  # nothing of the developer's
    env.update(
        KITBOOTH_DATA_DIR=str(data), KITBOOTH_REDIS_URL=redis_url, KITBOOTH_QUEUE_NAME=queue,
        KITBOOTH_EVENTS_STREAM=stream, KITBOOTH_DEVICE="cpu", KITBOOTH_DTYPE="float32", KITBOOTH_OFFLINE="1",
        KITBOOTH_SAFETY_CHECKER="false",  # the tiny model has no safety checker
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
    )
    return env


async def wait_started(pool, worker: subprocess.Popen, queue: str, t0: float) -> None:
    """arq writes the worker's health-check key (kitbooth.health) once its startup (pipeline load) is done."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SmokeFailure(f"`kitbooth worker` exited with status {worker.returncode} while starting")
        if await worker_heartbeats(pool, queue):
            step("worker started (health check written)", t0)
            return
        await asyncio.sleep(0.2)
    raise SmokeFailure(f"`kitbooth worker` did not start within {START_TIMEOUT_S} s")


async def run_job(pool, worker: subprocess.Popen, stream: str, store_root: Path, job_id: int, t0: float) -> None:
    user_id = 4242
    payload = contract.GeneratePayload(
        job_id=job_id, user_id=user_id, prompt="a fan at the stadium, cheering",
        output_prefix=keys.outputs_prefix(user_id, job_id), target=contract.DiscordTarget(channel_id=1, user_id=user_id),
        count=1, seed=7, width=64, height=64, steps=2, guidance=5.0,
    )
    job = await pool.enqueue_job(contract.GENERATE_JOB, payload.to_dict(), _job_id=contract.arq_job_id(job_id))
    if job is None:
        raise SmokeFailure("arq refused the job (a job with that id exists: the queue was not fresh)")
    step(f"enqueued {contract.GENERATE_JOB} {job.job_id}", t0)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    done = None
    while done is None:
        if worker.poll() is not None:
            raise SmokeFailure(f"`kitbooth worker` exited with status {worker.returncode} during the job")
        if time.monotonic() > deadline:
            raise SmokeFailure(f"no job.done event within {JOB_TIMEOUT_S} s")
        events = [contract.Event.from_fields(f) for _id, f in await pool.xrange(stream)]
        failed = [e for e in events if e.type == "job.failed" and e.job_id == job_id]
        if failed:
            raise SmokeFailure(f"the job failed: {failed[0].data}")
        done = next((e for e in events if e.type == "job.done" and e.job_id == job_id), None)
        await asyncio.sleep(0.1)
    result = await job.result(timeout=10)
    step(f"job.done event and arq result {result!r}", t0)
    out_keys = done.data.get("output_keys") or []
    if len(out_keys) != 1:
        raise SmokeFailure(f"job.done names {len(out_keys)} outputs, expected 1: {done.data}")
    png = store_root / out_keys[0]
    if not png.is_file() or png.read_bytes()[:8] != PNG_MAGIC:
        raise SmokeFailure(f"{png} is not a PNG in the local artifact store")
    step(f"output {out_keys[0]} is a PNG of {png.stat().st_size} bytes", t0)


def stop(worker: subprocess.Popen, t0: float) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        rc = worker.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
        raise SmokeFailure(f"`kitbooth worker` did not stop within {STOP_TIMEOUT_S} s of SIGTERM") from None
    if rc != 0:
        raise SmokeFailure(f"`kitbooth worker` exited with status {rc} after SIGTERM")
    step("worker stopped cleanly on SIGTERM (status 0)", t0)


def tiny_model(model: Path, tmp: Path, t0: float) -> None:
    """Build the tiny model with the venv's `kitbooth make-tiny-model`, unless ``model`` holds the one that
    this install's ``training/tiny.py`` builds."""
    source = Path(importlib.util.find_spec("training.tiny").origin).read_bytes()  # imports only `training`
    stamp, digest = model / ".tiny-source-sha256", hashlib.sha256(source).hexdigest()
    if stamp.is_file() and stamp.read_text() == digest:
        step(f"tiny model cached in {model} (built by `kitbooth make-tiny-model` from this tiny.py)", t0)
        return
    shutil.rmtree(model, ignore_errors=True)  # make-tiny-model keeps a folder that is already there
    subprocess.run([str(BIN / "kitbooth"), "make-tiny-model", str(model)], check=True, cwd=tmp,
                   env=worker_env(tmp, "redis://-", "-", "-"), stdout=subprocess.DEVNULL)
    stamp.write_text(digest)
    step(f"tiny model built by `kitbooth make-tiny-model` in {model}", t0)


async def smoke(redis_url: str, tmp: Path, model: Path) -> None:
    t0 = time.monotonic()
    tiny_model(model, tmp, t0)
    tag = uuid.uuid4().hex[:8]
    job_id = int(tag, 16)  # arq's job keys are not per queue: a fresh id each run
    queue, stream = f"kb:smoke:{tag}:queue", f"kb:smoke:{tag}:events"
    pool = await create_pool(RedisSettings.from_dsn(redis_url), default_queue_name=queue)
    log = (tmp / "worker.log").open("w")
    worker = subprocess.Popen([str(BIN / "kitbooth"), "worker", "--model", str(model)], cwd=tmp, stdout=log,
                              stderr=subprocess.STDOUT, env=worker_env(tmp, redis_url, queue, stream))
    try:
        await wait_started(pool, worker, queue, t0)
        await run_job(pool, worker, stream, tmp / "artifacts", job_id, t0)
        stop(worker, t0)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        log.close()
        arq_id = contract.arq_job_id(job_id)
        await pool.delete(queue, stream, *(heartbeat_key(queue, n) for n in await worker_heartbeats(pool, queue)),
                          *(f"arq:{kind}:{arq_id}" for kind in ("job", "result", "in-progress", "retry")))
        await pool.aclose()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("redis_url", help="a test database, e.g. redis://127.0.0.1:6379/15")
    p.add_argument("--tiny-model", type=Path, help="keep the tiny model in this folder between runs")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="kitbooth-smoke-") as tmp:
        try:
            model = (args.tiny_model or Path(tmp) / "tiny-model").resolve()
            asyncio.run(smoke(args.redis_url, Path(tmp), model))
        except (SmokeFailure, subprocess.CalledProcessError, OSError) as exc:
            print(f"worker smoke test FAILED: {exc}", file=sys.stderr)
            log = Path(tmp) / "worker.log"
            if log.exists():
                print("--- worker log (tail) ---\n" + "\n".join(log.read_text().splitlines()[-40:]), file=sys.stderr)
            return 1
    print("worker smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
