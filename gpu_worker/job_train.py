"""The ``train_slice`` job: one checkpointed slice of a training; the slice enqueues the next one itself.

A slice: resume ``state.ckpt`` → train at most ``slice_steps``/``slice_seconds`` on the GPU lane → write the
new checkpoint and ``meta.json`` → enqueue the next slice → ``job.progress``. The last slice writes the concept
and its samples, deletes the photos (biometric data), posts "I learned ..." and sends ``concept.ready``.

Every step after the GPU work is idempotent (``gpu_worker.checkpoints``): when a transient error
(Redis blip, store hiccup) makes the runner retry a slice, the retry resumes from that slice's checkpoint and
only re-does what failed. Only a permanent error (or the last try) ends the training and deletes its photos.
Every event carries ``arq_id``; ``job.progress`` also ``next_arq_id`` (the slice it enqueued).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from typing import Any

from redis.exceptions import RedisError

from gpu_worker import contract
from gpu_worker.cancel import CancelWatch
from gpu_worker.checkpoints import (
    SliceMeta,
    cleanup_training,
    done_key,
    load_meta,
    load_photos,
    load_state,
    meta_key,
    samples_prefix,
    state_key,
)
from gpu_worker.context import JobInfo, WorkerContext
from gpu_worker.engine import SliceWork
from gpu_worker.gpu import PRIO_TRAIN
from gpu_worker.progress import ProgressPump
from gpu_worker.runner import JobKind, JobRun, Outcome
from gpu_worker.validation import key_under, validate_train
from kitbooth.errors import InvalidInput, JobCancelled
from kitbooth.i18n import keyed, translate
from kitbooth.render import Outgoing, concept_ready_result, progress_text
from storage import ArtifactNotFound, keys

log = logging.getLogger(__name__)


async def _body(w: WorkerContext, info: JobInfo, run: JobRun, p: contract.TrainPayload,
                created_at: float | None = None) -> dict:
    created = created_at or info.enqueued_at or run.started  # the training's, carried from slice to slice
    run.extra = f"slice={p.slice_index} try={info.job_try}"
    validate_train(p)
    async with CancelWatch(w.redis, user_id=p.user_id, job_id=p.job_id, created_at=created) as watch:
        if await watch.check():
            raise JobCancelled()
        if p.slice_index == 0 and info.job_try == 1:
            await run.emit(w, "job.started")
        done = await w.redis.get(done_key(p.job_id))
        if done is not None:  # a retry after the concept was written: only the announcement is left
            return await _announce(w, run, p, json.loads(done))
        meta = await asyncio.to_thread(load_meta, w.store, p)
        if meta.slice_index == p.slice_index:  # a retry after this slice's checkpoint was written
            return await _hand_over(w, run, p, meta, created)
        result = await _train(w, run, p, watch)
        meta.seconds += result.seconds
        if await watch.check():
            raise JobCancelled()
    if result.done:
        return await _complete(w, run, p, result, meta)
    await asyncio.to_thread(w.store.put_bytes, state_key(p), result.state)
    meta.slice_index, meta.step, meta.total = p.slice_index, result.step, result.total
    await asyncio.to_thread(w.store.put_bytes, meta_key(p), meta.to_json())
    return await _hand_over(w, run, p, meta, created)


async def _train(w: WorkerContext, run: JobRun, p: contract.TrainPayload, watch: CancelWatch) -> Any:
    """The GPU work of one slice (from the last checkpoint)."""
    state = await asyncio.to_thread(load_state, w.store, p)
    images, masks = await asyncio.to_thread(load_photos, w.store, p.photo_keys)
    if not images:
        raise keyed(InvalidInput, "refusal.training_photos_gone")
    if p.slice_index == 0 and p.kind == "face" and w.settings.instant_face_adapter:
        await _instant_face(w, p, images)
    locale = p.target.locale
    what = translate("progress.learning_face", locale) if p.kind == "face" else \
        translate("progress.learning_named", locale, name=p.name)

    def render(state_: dict) -> Outgoing:
        return Outgoing(progress_text(what, state_["step"], state_["total"], state_.get("eta"), locale=locale))

    pump = ProgressPump(w.poster, p.target, render, interval=w.progress_interval)

    def on_progress(pr: Any) -> None:
        pump.update(step=int(pr.step), total=int(pr.total), eta=getattr(pr, "eta_seconds", None))

    s = w.settings
    work = SliceWork(payload=p, images=images, masks=masks, state=state, max_steps=s.slice_steps,
                     max_seconds=s.slice_seconds, should_stop=watch.should_stop, on_progress=on_progress,
                     samples=s.train_samples, store=w.store)

    def on_gpu() -> Any:
        w.slices.append(("start", p.job_id, p.slice_index, time.time()))  # when the GPU takes it
        return w.engine.train_slice(work)

    async with w.train_lock, pump:
        result = await w.lane.call(on_gpu, priority=PRIO_TRAIN)
        w.slices.append(("end", p.job_id, p.slice_index, time.time()))
        await pump.flush()
    run.steps = result.steps_run
    return result


async def _instant_face(w: WorkerContext, p: contract.TrainPayload, images: list[Any]) -> None:
    """The instant face's embedding, once per face at the start of training, under the user's prefix (so
    /forget deletes it). Best effort: without it /generate waits for the trained face."""
    try:
        data = await w.lane.call(lambda: w.engine.instant_embedding(images), priority=PRIO_TRAIN)
        await asyncio.to_thread(w.store.put_bytes, keys.instant_key(p.user_id, p.concept_id), data)
    except Exception as exc:  # noqa: BLE001 - never fails the training
        log.warning("job %s: no instant face (%s: %s)", p.job_id, type(exc).__name__, exc)


async def _hand_over(w: WorkerContext, run: JobRun, p: contract.TrainPayload, meta: SliceMeta,
                     created: float) -> dict:
    """Enqueue the next slice (arq refuses a duplicate id, so a retry enqueues it once) and report progress."""
    nxt = dataclasses.replace(p, slice_index=p.slice_index + 1)
    next_id = contract.arq_job_id(p.job_id, nxt.slice_index)
    await w.redis.enqueue_job(contract.TRAIN_JOB, nxt.to_dict(), created_at=created, _job_id=next_id,
                              _queue_name=w.settings.queue_name)
    await w.redis.set(contract.train_slice_key(p.job_id), next_id, ex=contract.CANCEL_TTL_S)
    await run.emit(w, "job.progress", step=meta.step, total=meta.total, eta_seconds=None, next_arq_id=next_id)
    return {"ok": True, "done": False, "step": meta.step, "total": meta.total, "next_arq_id": next_id}


async def _complete(w: WorkerContext, run: JobRun, p: contract.TrainPayload, result: Any, meta: SliceMeta) -> dict:
    """The last slice: store the concept and its samples, record what concept.ready says, then announce."""
    await asyncio.to_thread(w.store.put_bytes, p.artifact_key, result.artifact)
    prefix = samples_prefix(p)
    sample_keys = []
    for i, png in enumerate(result.samples):
        await asyncio.to_thread(w.store.put_bytes, f"{prefix}sample-{i}.png", png)
        sample_keys.append(f"{prefix}sample-{i}.png")
    done = {"sha256": hashlib.sha256(result.artifact).hexdigest(), "size_bytes": len(result.artifact),
            "trigger_tokens": list(result.trigger_tokens), "sample_keys": sample_keys, "steps": result.total,
            "seconds": meta.seconds, "message_id": None, "posted": False}
    await _record(w, p, done)
    return await _announce(w, run, p, done)


async def _record(w: WorkerContext, p: contract.TrainPayload, done: dict) -> None:
    await w.redis.set(done_key(p.job_id), json.dumps(done), ex=contract.CANCEL_TTL_S)


async def _announce(w: WorkerContext, run: JobRun, p: contract.TrainPayload, done: dict) -> dict:
    # Photos and checkpoints go before concept.ready, which tells the bot "all done".
    await asyncio.to_thread(cleanup_training, w.store, p, photos=True)
    if not done["posted"]:  # a retry does not post twice
        samples = []
        for k in done["sample_keys"]:
            with contextlib.suppress(ArtifactNotFound):
                samples.append(await asyncio.to_thread(w.store.get_bytes, k))
        msg = concept_ready_result(kind=p.kind, name=p.name, seconds=done["seconds"], steps=done["steps"],
                                   size_bytes=done["size_bytes"], samples=samples,
                                   locale=p.target.locale)
        res = await run.post(w, msg)
        if res.posted:
            done.update(posted=True, message_id=res.message_id)
            await _record(w, p, done)
    await run.emit(w, "concept.ready", posted=done["posted"], concept_id=p.concept_id, artifact_key=p.artifact_key,
                   size_bytes=done["size_bytes"], sha256=done["sha256"], trigger_tokens=done["trigger_tokens"],
                   sample_keys=done["sample_keys"], steps=done["steps"], seconds=done["seconds"],
                   message_id=done["message_id"])
    await w.redis.delete(done_key(p.job_id), contract.train_slice_key(p.job_id))
    return {"ok": True, "done": True, "artifact_key": p.artifact_key, "sha256": done["sha256"]}


def _owned(p: contract.TrainPayload) -> bool:
    """Every key the cleanup would delete is the trainer's: a refused payload must not delete others' files."""
    if p.kind == "face":
        prefix = keys.user_prefix(p.user_id)
    else:
        prefix = keys.guild_prefix(p.guild_id) if p.guild_id is not None else "guilds/"
    return all(key_under(k, prefix) for k in (*p.photo_keys, p.checkpoint_prefix.rstrip("/") + "/x"))


async def _on_end(w: WorkerContext, p: contract.TrainPayload, outcome: Outcome) -> None:
    with contextlib.suppress(RedisError):  # best effort: both expire on their own
        await w.redis.delete(done_key(p.job_id), contract.train_slice_key(p.job_id))
    if not _owned(p):
        return
    # Cancelled: the checkpoints go (the bot's cancel or /forget decides about the photos). Ended for good:
    # nothing half-written stays, and the photos go (biometric data).
    await asyncio.to_thread(cleanup_training, w.store, p, photos=outcome is not Outcome.CANCELLED)
    if p.kind == "face":  # the instant face of a face that will never be ready (a new /train computes a new one)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(w.store.delete, keys.instant_key(p.user_id, p.concept_id))


def _retry_hint(p: contract.TrainPayload) -> str:
    command = "/train" if p.kind == "face" else f"/{p.kind} train"
    return translate("failure.train_retry_hint", p.target.locale, command=command)


# A slice is bounded by slice_seconds/slice_steps but may wait behind generations and the previous slice:
# timeout = job_timeout_s. 4 tries: a retry resumes from the last checkpoint, so a crash costs at most one slice.
TRAIN = JobKind(contract.TRAIN_JOB, _body, max_tries=4, timeout_s=lambda s: s.job_timeout_s, keep_result_s=3600,
                on_end=_on_end, failure_hint=_retry_hint,
                # The /train reply is private and promises "I'll post in this channel": the result and a failure
                # are channel messages that mention the user (progress still edits the private reply).
                final_in_channel=True)
