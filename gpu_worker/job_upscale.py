"""The ``upscale`` job (the U1-U4 buttons): one stored image, upscaled on the GPU lane, stored and posted."""

from __future__ import annotations

import asyncio

from gpu_worker import contract
from gpu_worker.context import JobInfo, WorkerContext
from gpu_worker.gpu import PRIO_LIGHT
from gpu_worker.job_generate import png_to_image
from gpu_worker.runner import JobKind, JobRun
from gpu_worker.validation import validate_upscale
from kitbooth.errors import NotFound
from kitbooth.i18n import keyed
from kitbooth.render import upscale_result
from storage import ArtifactNotFound


async def _body(w: WorkerContext, info: JobInfo, run: JobRun, p: contract.UpscalePayload) -> dict:
    validate_upscale(p)
    try:
        src = png_to_image(await asyncio.to_thread(w.store.get_bytes, p.source_key))
    except ArtifactNotFound:
        raise keyed(NotFound, "failure.image_gone") from None
    out = await w.lane.call(lambda: w.engine.upscale(src, p.prompt, p.seed), priority=PRIO_LIGHT)
    data = out.png  # a GeneratedImage: PNG with its parameters and AI-generated marks
    await asyncio.to_thread(w.store.put_bytes, p.output_key, data)
    await run.deliver(w, upscale_result(job_id=p.job_id, png=data, locale=p.target.locale), "job.done",
                      output_keys=[p.output_key], seeds=[p.seed], nsfw=[bool(getattr(out, "nsfw", False))])
    return {"ok": True, "output_keys": [p.output_key]}


# Seconds of work; two tries (the output is overwritten).
UPSCALE = JobKind(contract.UPSCALE_JOB, _body, max_tries=2, timeout_s=lambda s: min(s.job_timeout_s, 180.0))
