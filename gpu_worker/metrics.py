"""Prometheus metrics of one worker (queue depth, job durations, GPU memory) and the per-job log line."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("gpu_worker.jobs")

_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


def hash_user(user_id: int) -> str:
    """A short, non-reversible-at-a-glance id for logs (never the raw Discord id)."""
    return hashlib.sha256(f"kitbooth-user:{int(user_id)}".encode()).hexdigest()[:10]


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("kitbooth_queue_depth", "Jobs waiting in the arq queue", registry=r)
        self.gpu_lane_depth = Gauge("kitbooth_gpu_lane_depth", "Work items waiting for the GPU thread", registry=r)
        self.job_seconds = Histogram("kitbooth_job_seconds", "Job run time", ["kind", "outcome"],
                                     buckets=_BUCKETS, registry=r)
        self.queue_wait_seconds = Histogram("kitbooth_queue_wait_seconds", "Enqueue to start", ["kind"],
                                            buckets=_BUCKETS, registry=r)
        self.jobs = Counter("kitbooth_jobs", "Jobs finished", ["kind", "outcome"], registry=r)
        self.batch_size = Histogram("kitbooth_generate_batch_size", "Requests per pipeline call",
                                    buckets=(1, 2, 3, 4, 6, 8, 16), registry=r)
        self.gpu_memory = Gauge("kitbooth_gpu_memory_bytes", "torch.cuda.memory_allocated", registry=r)
        self.gpu_memory_reserved = Gauge("kitbooth_gpu_memory_reserved_bytes", "torch.cuda.memory_reserved",
                                         registry=r)
        self._server = None

    def serve(self, port: int) -> None:
        self._server = start_http_server(port, registry=self.registry)
        log.info("metrics on :%d/metrics", port)

    def close(self) -> None:
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            self._server = None

    def observe_job(self, *, kind: str, outcome: str, seconds: float, wait: float | None) -> None:
        self.job_seconds.labels(kind, outcome).observe(seconds)
        self.jobs.labels(kind, outcome).inc()
        if wait is not None:
            self.queue_wait_seconds.labels(kind).observe(max(0.0, wait))

    def observe_batch(self, size: int) -> None:
        """Requests in one pipeline call (fed by ``GpuLane`` for every batched call)."""
        self.batch_size.observe(size)

    def sample_gpu(self) -> None:
        try:
            import torch

            if torch.cuda.is_available():
                self.gpu_memory.set(torch.cuda.memory_allocated())
                self.gpu_memory_reserved.set(torch.cuda.memory_reserved())
        except Exception:  # noqa: BLE001 - metrics never break the worker
            pass

    async def poll(self, redis: Any, queue_name: str, lane: Any, interval: float = 5.0) -> None:
        """Background task: refresh the gauges."""
        while True:
            with contextlib.suppress(Exception):
                self.queue_depth.set(await redis.zcard(queue_name))
                self.gpu_lane_depth.set(lane.depth)
                self.sample_gpu()
            await asyncio.sleep(interval)


def job_line(
    *, job_id: int | str, kind: str, user_id: int | None, outcome: str, wait: float | None, seconds: float,
    steps: int = 0, extra: str = "",
) -> str:
    its = f"{steps / seconds:.1f}" if steps and seconds > 0 else "-"
    w = f"{wait:.3f}s" if wait is not None else "-"
    user = hash_user(user_id) if user_id is not None else "-"
    return (f"job={job_id} kind={kind} user={user} outcome={outcome} wait={w} run={seconds:.3f}s "
            f"steps={steps} it/s={its}{(' ' + extra) if extra else ''}")
