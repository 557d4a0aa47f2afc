"""The ``squad`` job: one picture of several members who all approved it (``training.squad``).

The payload is checked first (``validate_squad``: every face is an approved member's own). The scene uses the
kit and style only; each face is then redone with its owner's concept alone. Squad jobs that share a size and
steps run their scenes in one pipeline call on the GPU lane (batched like /generate), then each its own faces.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Any

from gpu_worker import contract
from gpu_worker.cancel import CancelWatch
from gpu_worker.checkpoints import delete_prefix
from gpu_worker.context import JobInfo, WorkerContext
from gpu_worker.gpu import PRIO_GENERATE
from gpu_worker.runner import JobKind, JobRun, Outcome
from gpu_worker.validation import check_concept_tokens, key_under, validate_squad
from kitbooth.errors import JobCancelled
from kitbooth.render_squad import squad_result
from storage import ArtifactNotFound, keys
from training.compose import ConceptUse
from training.faces import face_descriptor
from training.generate import generate
from training.rerank import decode_reference
from training.squad import SquadMember, compose_squad, scene_request

log = logging.getLogger(__name__)


@dataclass
class SquadItem:
    payload: contract.SquadPayload
    request: Any  # training.generation_request.GenerationRequest: the scene (kit and style only)
    members: list[Any]  # [training.squad.SquadMember], reading order
    should_stop: Any = lambda: False
    picture: Any = None  # training.squad.SquadPicture, filled on the GPU thread
    pipeline_seconds: float = 0.0


def run_squads(engine: Any, items: list[SquadItem]) -> list[Any]:
    """On the GPU thread: every item's scenes in one pipeline call, then each item's faces; per item its
    ``SquadPicture`` or the exception that failed it."""
    t0 = time.perf_counter()
    results: list[Any] = [None] * len(items)
    live = []
    for i, it in enumerate(items):
        try:
            engine.check([*it.request.concepts, *(m.face for m in it.members)])
            live.append(i)
        except Exception as exc:  # noqa: BLE001 - handed back to that item's job
            results[i] = exc
    if not live:
        return results
    checker = False if not engine.settings.safety_checker else None
    scenes = generate(engine.pipe, engine.composer, [items[i].request for i in live], safety_checker=checker,
                      should_stop=lambda: all(items[i].should_stop() for i in live))
    for i, images in zip(live, scenes, strict=True):
        it = items[i]
        try:
            if it.should_stop():
                raise JobCancelled()
            results[i] = compose_squad(engine.pipe, engine.composer, it.request, images, it.members,
                                       describe=engine.describe or face_descriptor,
                                       safety_checker=False if it.payload.allow_nsfw else checker,
                                       should_stop=it.should_stop)
        except Exception as exc:  # noqa: BLE001
            results[i] = exc
        it.pipeline_seconds = time.perf_counter() - t0
    return results


# One runner object per engine: the lane batches only items whose runner is the same object.
_RUNNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _runner(engine: Any) -> Any:
    fn = _RUNNERS.get(engine)
    if fn is None:
        def fn(items: list[SquadItem], engine: Any = engine) -> list[Any]:
            return run_squads(engine, items)
        _RUNNERS[engine] = fn
    return fn


async def _use(w: WorkerContext, ref: contract.ConceptRef) -> ConceptUse:
    art = await w.concepts.get(ref.key, ref.sha256, ref.kind)
    check_concept_tokens(art)
    return ConceptUse(ref.key, art, ref.weight)


async def _reference(w: WorkerContext, key: str | None) -> Any:
    if key is None:
        return None
    try:
        return decode_reference(await asyncio.to_thread(w.store.get_bytes, key))
    except (ArtifactNotFound, ValueError):
        return None  # that member's likeness is not ranked


async def _item(w: WorkerContext, p: contract.SquadPayload, should_stop: Any) -> SquadItem:
    scene_uses = [await _use(w, ref) for ref in (p.kit, p.style) if ref is not None]
    members = [SquadMember(m.user_id, await _use(w, m.face), await _reference(w, m.reference_key))
               for m in p.members]
    request = scene_request(p.prompt, len(members), concepts=scene_uses, seed=p.seed, width=p.width,
                            height=p.height, steps=p.steps, guidance=p.guidance, kit_words=p.kit_words,
                            style_words=p.style_words, candidates=p.candidates or 1)
    return SquadItem(payload=p, request=request, members=members, should_stop=should_stop)


async def _body(w: WorkerContext, info: JobInfo, run: JobRun, p: contract.SquadPayload) -> dict:
    validate_squad(p)
    created = info.enqueued_at or run.started
    async with CancelWatch(w.redis, user_id=p.user_id, job_id=p.job_id, created_at=created) as watch:
        if await watch.check():
            raise JobCancelled()
        item = await _item(w, p, watch.should_stop)
        picture = await w.lane.call_batched(("squad", item.request.batch_key()), item, _runner(w.engine),
                                            priority=PRIO_GENERATE)
    if watch.should_stop():
        raise JobCancelled()
    run.steps = p.steps
    run.extra = f"squad={len(p.members)} faces={picture.layout} pipeline={item.pipeline_seconds:.3f}s"
    prefix = p.output_prefix if p.output_prefix.endswith("/") else p.output_prefix + "/"
    key = f"{prefix}0.png"
    g = picture.image
    await asyncio.to_thread(w.store.put_bytes, key, g.png)
    member_ids = [m.user_id for m in p.members]
    msg = squad_result(job_id=p.job_id, member_ids=member_ids, prompt=p.prompt, seed=int(g.seed), png=g.png,
                       nsfw=bool(g.nsfw), seconds=time.time() - run.started, locale=p.target.locale)
    res = await run.post(w, msg)
    await run.emit(w, "job.done", posted=res.posted, output_keys=[key], seeds=[int(g.seed)],
                   message_id=res.message_id, nsfw=[bool(g.nsfw)], member_ids=member_ids, faces=picture.layout,
                   likeness=picture.likeness)
    return {"ok": True, "output_keys": [key], "posted": res.posted}


async def _on_end(w: WorkerContext, p: contract.SquadPayload, outcome: Outcome) -> None:
    if outcome is not Outcome.OK and key_under(p.output_prefix.rstrip("/") + "/x", keys.user_prefix(p.user_id)):
        await asyncio.to_thread(delete_prefix, w.store, p.output_prefix)


# Seconds of work per face; two tries (the output is overwritten, the message edit is idempotent).
SQUAD = JobKind(contract.SQUAD_JOB, _body, max_tries=2, timeout_s=lambda s: min(s.job_timeout_s, 240.0),
                keep_result_s=600, on_end=_on_end)
