"""The ``generate`` job: compose the request's concepts, run it in a shared batch on the GPU lane, store the
images, post them (each stored PNG attached as is) and send ``job.done``."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from typing import Any

from gpu_worker import contract
from gpu_worker.cancel import CancelWatch
from gpu_worker.checkpoints import delete_prefix
from gpu_worker.context import JobInfo, WorkerContext, worker_context
from gpu_worker.engine import GenItem
from gpu_worker.gpu import PRIO_GENERATE
from gpu_worker.progress import ProgressPump, preview_png
from gpu_worker.runner import JobKind, JobRun, Outcome, run_job
from gpu_worker.validation import check_concept_tokens, key_under, validate_generate
from kitbooth.errors import JobCancelled, NotFound
from kitbooth.i18n import keyed, translate
from kitbooth.render import Outgoing, generate_result, progress_text
from storage import ArtifactNotFound, keys
from training.compose import ConceptUse
from training.generate import GenerationRequest, vary
from training.instant_face import decode_embedding
from training.likeness_levers import candidate_requests
from training.rerank import decode_reference

log = logging.getLogger(__name__)


def png_to_image(data: bytes) -> Any:
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    return im.convert("RGB")


async def _concepts(w: WorkerContext, p: contract.GeneratePayload) -> list[ConceptUse]:
    uses = []
    for ref in (p.face, p.kit, p.style):
        if ref is not None:
            art = await w.concepts.get(ref.key, ref.sha256, ref.kind)
            check_concept_tokens(art)
            uses.append(ConceptUse(ref.key, art, ref.weight))
    return uses


async def _request(w: WorkerContext, p: contract.GeneratePayload, uses: list[ConceptUse]) -> GenerationRequest:
    request = GenerationRequest(
        prompt=p.prompt, concepts=uses, seed=p.seed, count=p.count, width=p.width, height=p.height,
        steps=p.steps, guidance=p.guidance, negative_prompt=p.negative_prompt, kit_words=p.kit_words,
        style_words=p.style_words,
    )
    if not p.variation_of:
        return request
    try:
        init = png_to_image(await asyncio.to_thread(w.store.get_bytes, p.variation_of))
    except ArtifactNotFound:
        raise keyed(NotFound, "failure.vary_image_gone") from None
    return vary(request, init.resize((p.width, p.height)), strength=p.variation_strength, seed=p.seed)


async def _reference(w: WorkerContext, p: contract.GeneratePayload) -> Any:
    """The face's reference identity, or None (best-of-N then keeps the first images). Never logged."""
    if p.reference_key is None:
        return None
    try:
        return decode_reference(await asyncio.to_thread(w.store.get_bytes, p.reference_key))
    except (ArtifactNotFound, ValueError) as exc:
        log.warning("job %s: no usable face reference (%s); likeness not ranked", p.job_id, type(exc).__name__)
        return None


async def _instant(w: WorkerContext, p: contract.GeneratePayload) -> Any:
    """The instant face's embedding (written when the face's training started), or None without ``instant_key``."""
    if p.instant_key is None:
        return None
    if not w.settings.instant_face_adapter:
        raise keyed(NotFound, "failure.instant_unavailable")
    try:
        return decode_embedding(await asyncio.to_thread(w.store.get_bytes, p.instant_key))
    except (ArtifactNotFound, ValueError):
        raise keyed(NotFound, "failure.instant_not_ready") from None


def _lever_fields(p: contract.GeneratePayload, request: GenerationRequest, uses: list[ConceptUse],
                  reference: Any) -> dict[str, Any]:
    """GenItem fields for best-of-N (only with a reference to rank by; never for "vary") and the detail pass."""
    n = p.candidates or p.count
    ranked = reference is not None and n > p.count and not p.variation_of
    face_use = uses[0] if p.face is not None else None  # _concepts puts the face first
    return {"candidates": candidate_requests(request, n) if ranked else [], "keep": p.count,
            "reference": reference, "face_detail": p.face_detail if face_use is not None else "off",
            "face_use": face_use}


async def _body(w: WorkerContext, info: JobInfo, run: JobRun, p: contract.GeneratePayload,
                preparing: Any = None) -> dict:
    validate_generate(p)
    created = info.enqueued_at or run.started
    async with CancelWatch(w.redis, user_id=p.user_id, job_id=p.job_id, created_at=created) as watch:
        if await watch.check():
            raise JobCancelled()
        uses = await _concepts(w, p)
        request = await _request(w, p, uses)
        levers = _lever_fields(p, request, uses, await _reference(w, p))
        levers["instant"] = await _instant(w, p)
        what = translate("progress.varying" if p.variation_of else "progress.drawing", p.target.locale)

        def render(state: dict) -> Outgoing:
            png = preview_png(state.get("preview"))
            return Outgoing(progress_text(f"🎨 {what}", state["step"], state["total"], locale=p.target.locale),
                            files=[("preview.png", png)] if png else [])

        pump = ProgressPump(w.poster, p.target, render, interval=w.progress_interval)
        item = GenItem(payload=p, uses=uses, request=request, should_stop=watch.should_stop,
                       on_progress=lambda s, t, prev=None: pump.update(step=s, total=t, preview=prev), **levers)
        t_gpu = time.perf_counter()
        async with pump:
            images = await w.lane.call_batched(request.batch_key(), item, w.engine.generate_batch,
                                               priority=PRIO_GENERATE, preparing=preparing)
        gpu_wall = time.perf_counter() - t_gpu
    if watch.should_stop():
        raise JobCancelled()
    run.steps = p.steps
    run.extra = f"pipeline={item.pipeline_seconds:.3f}s gpu_wait={gpu_wall - item.pipeline_seconds:.3f}s"
    w.timings.append({"job_id": p.job_id, "pipeline": item.pipeline_seconds, "gpu_wall": gpu_wall,
                      "enqueued": created, "gpu_started": item.gpu_started})
    prefix = p.output_prefix if p.output_prefix.endswith("/") else p.output_prefix + "/"
    out_keys = [f"{prefix}{i}.png" for i in range(len(images))]
    for k, g in zip(out_keys, images, strict=True):
        await asyncio.to_thread(w.store.put_bytes, k, g.png)
    seeds = [int(g.seed) for g in images]
    nsfw = [bool(getattr(g, "nsfw", False)) for g in images]
    likeness = list(item.likeness) or None
    msg = generate_result(job_id=p.job_id, user_id=p.user_id, prompt=p.prompt, seeds=seeds,
                          pngs=[g.png for g in images], nsfw=nsfw, seconds=time.time() - run.started,
                          likeness=likeness, preview=p.instant_key is not None, locale=p.target.locale)
    res = await run.deliver(w, msg, "job.done", output_keys=out_keys, seeds=seeds, nsfw=nsfw, likeness=likeness)
    return {"ok": True, "output_keys": out_keys, "posted": res.posted}


async def _on_end(w: WorkerContext, p: contract.GeneratePayload, outcome: Outcome) -> None:
    # Nothing half-written stays behind; never touch a folder that is not the requester's (a refused payload).
    if outcome is not Outcome.OK and key_under(p.output_prefix.rstrip("/") + "/x", keys.user_prefix(p.user_id)):
        await asyncio.to_thread(delete_prefix, w.store, p.output_prefix)


# Seconds of work; two tries (outputs are overwritten, the message edit is idempotent).
GENERATE = JobKind(contract.GENERATE_JOB, _body, max_tries=2, timeout_s=lambda s: min(s.job_timeout_s, 180.0),
                   keep_result_s=600, on_end=_on_end)


async def generate(ctx: dict, payload: Any, **kwargs: Any) -> dict:
    """arq's ``generate``: marked as preparing from its first moment, so requests started together share a
    batch (see ``GpuLane.preparing``)."""
    with worker_context(ctx).lane.preparing() as prep:
        return await run_job(ctx, GENERATE, payload, preparing=prep, **kwargs)
