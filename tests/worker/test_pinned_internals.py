"""Undocumented parts of arq and peft that the worker and training/ rely on. When an upgrade changes one of
them, this file fails (instead of a cancel silently becoming a retry, or a LoRA leaking into the next job).

arq (gpu_worker/): ``Worker.aborting_tasks`` (abort vs timeout/shutdown: ``WorkerContext.aborted``),
``Worker.in_progress_timeout_s`` (set by ``build_worker``), ``Worker.start_jobs`` (``_BatchingWorker``),
``Worker.ctx`` and the per-job ctx keys ``job_id``/``job_try``/``enqueue_time`` (``JobInfo``), the job-key
prefixes and ``deserialize_job`` (``cancel.drop_queued``).
peft (training/lora.py, training/compose.py): a tuner layer's ``_active_adapter``, ``_disable_adapters`` and
``_all_available_adapter_names()``, set directly to switch adapters without peft's requires_grad sweep.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect

import torch
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import deserialize_job, serialize_job
from arq.worker import Worker
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from gpu_worker import contract
from gpu_worker.context import CTX_KEY, JobInfo


def test_arq_worker_members_the_worker_uses():
    src = inspect.getsource(Worker)
    # The abort path adds the id to aborting_tasks, then cancels the job's task; run_job tells it from a
    # timeout or a shutdown by that set.
    assert "self.aborting_tasks.update(aborted)" in src and "job_id in self.aborting_tasks" in src
    assert "self.in_progress_timeout_s" in src and "async def start_jobs(self, job_ids" in src
    for key in ("'job_id': job_id", "'job_try': job_try", "'enqueue_time': ms_to_datetime(enqueue_time_ms)"):
        assert key in src, key
    assert job_key_prefix == "arq:job:" and in_progress_key_prefix == "arq:in-progress:"
    raw = serialize_job("generate", ({"job_id": 1, "user_id": 2},), {}, 1, 0)
    job = deserialize_job(raw)
    assert job.function == "generate" and job.args == ({"job_id": 1, "user_id": 2},)


async def test_a_running_job_sees_its_arq_facts(arq_pool, start_worker):
    """What ``JobInfo.of(ctx)`` reads, from a real job run (the cancel job: no GPU needed)."""
    w = await start_worker()
    seen: list[JobInfo] = []
    original = w.functions[contract.CANCEL_JOB].coroutine

    async def spy(ctx, payload, **kw):
        seen.append(JobInfo.of(ctx))
        assert CTX_KEY in ctx and isinstance(w.aborting_tasks, set)
        return await original(ctx, payload, **kw)

    w.functions[contract.CANCEL_JOB] = dataclasses.replace(w.functions[contract.CANCEL_JOB], coroutine=spy)
    await arq_pool.enqueue_job(contract.CANCEL_JOB, contract.CancelPayload(user_id=3).to_dict(), _job_id="kb-c1")
    for _ in range(500):
        if seen:
            break
        await asyncio.sleep(0.01)
    assert seen and seen[0].arq_id == "kb-c1" and seen[0].job_try == 1 and seen[0].enqueued_at is not None


def _tuner_layer() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4))
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=["0"], init_lora_weights=False),
                            model, adapter_name="a")
    return model, model[0]


def test_peft_tuner_layer_switches_the_code_sets_directly():
    model, layer = _tuner_layer()
    x = torch.randn(2, 4)
    assert "a" in layer._all_available_adapter_names()
    layer._active_adapter, layer._disable_adapters = ["a"], False
    with_lora = model(x)
    layer._disable_adapters = True
    base = model(x)
    assert torch.allclose(base, layer.base_layer(x)) and not torch.allclose(with_lora, base)
    layer._disable_adapters, layer._active_adapter = False, []
    assert torch.allclose(model(x), base)  # no active adapter: the base layer alone
    assert layer.active_adapters == []
