"""The worker's Prometheus endpoint serves queue depth and per-job figures."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

from gpu_worker import contract
from tests.worker.conftest import put_face, wait_events
from tests.worker.test_generate import _payload


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_metrics_endpoint_after_a_generate_job(arq_pool, store, start_worker, worker_settings):
    port = _free_port()
    await start_worker(worker_settings.model_copy(update={"metrics_port": port}))
    face = put_face(store, 41, 1, seed=1)
    p = _payload(401, 41, contract.DiscordTarget(channel_id=1, user_id=41), face, count=1)
    await arq_pool.enqueue_job(contract.GENERATE_JOB, p.to_dict(), _job_id=contract.arq_job_id(401))
    await wait_events(arq_pool, worker_settings.events_stream, lambda e: any(x.type == "job.done" for x in e))
    await asyncio.sleep(0.1)  # the job's metrics are recorded as it returns

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    text = await asyncio.to_thread(scrape)
    assert "kitbooth_queue_depth" in text and "kitbooth_gpu_lane_depth" in text
    done = [ln for ln in text.splitlines() if ln.startswith("kitbooth_jobs_total{")]
    assert any('kind="generate"' in ln and ln.endswith(" 1.0") for ln in done), done
    assert 'kitbooth_job_seconds_count{kind="generate"' in text
    # the generation's pipeline call fed the batch-size histogram (one request in one call)
    assert "kitbooth_generate_batch_size_count 1.0" in text and "kitbooth_generate_batch_size_sum 1.0" in text
