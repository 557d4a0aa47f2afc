"""The worker's /readyz checks (see kitbooth/health.py): Redis, model loaded, device, GPU memory, current jobs.

The server starts first thing in start-up, so /healthz answers while the pipeline loads and /readyz says
"loading" until ``ctx[CTX_KEY]`` exists.
"""

from __future__ import annotations

from typing import Any

import torch

from gpu_worker.context import CTX_KEY
from kitbooth.health import Check

MIB = 1024 * 1024


def readiness_checks(ctx: dict, worker: Any = None) -> dict[str, Check]:
    """Checks over arq's ``ctx`` (its ``redis`` and, once start-up is done, the ``WorkerContext``) and the
    arq ``worker`` (its running jobs)."""

    async def redis() -> str:
        pool = ctx.get("redis")
        if pool is None:
            raise RuntimeError("not connected yet")
        await pool.ping()
        return "answers PING"

    async def model() -> str:
        w = ctx.get(CTX_KEY)
        if w is None or w.engine.pipe is None:
            raise RuntimeError("loading the base pipeline")
        return f"{w.settings.base_model} resident"

    async def device() -> str:
        w = ctx.get(CTX_KEY)
        if w is None:
            raise RuntimeError("loading")
        dev = w.engine.device
        if not dev.startswith("cuda"):
            return dev
        free, total = torch.cuda.mem_get_info(torch.device(dev))
        return f"{dev} {torch.cuda.get_device_name(torch.device(dev))}: {free // MIB} MiB free of {total // MIB} MiB"

    async def jobs() -> str:
        running = sorted(getattr(worker, "job_tasks", {}) or {})
        return ", ".join(running) if running else "idle"

    return {"redis": redis, "model": model, "device": device, "jobs": jobs}
