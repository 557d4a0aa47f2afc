"""The arq job functions: ``train_slice``, ``generate``, ``upscale``, ``export`` and ``cancel``.

Each job takes ONE argument, the payload dict of ``gpu_worker.contract`` (a JSON string is accepted too), and
returns a small dict (ids and keys, never image bytes). Torch work goes through ``ctx["lane"]`` (the GPU thread);
store I/O through ``asyncio.to_thread``; Discord through ``ctx["poster"]``; events through ``ctx["events"]``.

Failures: a ``UserFacingError``'s message is shown to the user; anything else is logged with the job id and the
user gets a generic reason. Either way a ``job.failed`` event goes out and the function returns normally, so arq
does not retry a job that would fail again. Only a killed worker or a timeout makes arq retry (train slices
resume from their checkpoint).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import tempfile
import time
import unicodedata
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from gpu_worker import contract
from gpu_worker.cancel import CancelWatch, drop_queued, is_cancelled, set_flags
from gpu_worker.engine import GenItem, SliceWork
from gpu_worker.gpu import PRIO_GENERATE, PRIO_LIGHT, PRIO_TRAIN
from gpu_worker.metrics import job_line
from gpu_worker.progress import ProgressPump, preview_png
from kitbooth.render import Outgoing, failure_text, generate_result, progress_text
from kitbooth.errors import (
    IncompatibleArtifact,
    InvalidInput,
    JobCancelled,
    NotAllowed,
    NotFound,
    UserFacingError,
)
from storage import ArtifactNotFound, InvalidKey, keys
from storage.artifacts import validate_key
from training.prompts import find_reserved

log = logging.getLogger(__name__)
jlog = logging.getLogger("gpu_worker.jobs")

GENERIC_REASON = "Something went wrong on our side (job {job_id}). Please try again later."
MAX_SIDE = 1024
MIN_SIDE = 64
MAX_STEPS = 100


class _Failed(Exception):
    """Internal: the job failed with ``reason`` (already user-facing)."""


@dataclasses.dataclass
class JobRun:
    """Bookkeeping of one job run (for the log line and the metrics)."""

    kind: str
    job_id: int | str = "-"
    user_id: int | None = None
    started: float = dataclasses.field(default_factory=time.time)
    wait: float | None = None
    steps: int = 0
    extra: str = ""
    outcome: str = "ok"


def _parse(kind: str, raw: Any) -> Any:
    cls = contract.PAYLOAD_TYPES[kind]
    if isinstance(raw, str | bytes):
        return cls.from_json(raw)
    return cls.from_dict(raw)


def _salvage(raw: Any) -> tuple[int | None, int | None, contract.DiscordTarget | None]:
    """job id, user id and target of a payload that does not parse (to report the failure anyway)."""
    with contextlib.suppress(Exception):
        if isinstance(raw, str | bytes):
            raw = json.loads(raw)
    if not isinstance(raw, dict):
        return None, None, None
    job_id = raw.get("job_id") if isinstance(raw.get("job_id"), int) else None
    user_id = raw.get("user_id") if isinstance(raw.get("user_id"), int) else None
    target = None
    with contextlib.suppress(Exception):
        target = contract.DiscordTarget.from_dict(raw.get("target"))
    return job_id, user_id, target


def _enqueued_at(ctx: dict) -> float | None:
    t = ctx.get("enqueue_time")
    return t.timestamp() if isinstance(t, datetime) else None


async def _report_failure(ctx: dict, kind: str, job_id: int | None, user_id: int | None,
                          target: contract.DiscordTarget | None, reason: str) -> None:
    posted = False
    if target is not None and ctx.get("poster") is not None:
        res = await ctx["poster"].final(target, Outgoing(failure_text(reason)))
        posted = res.posted
    if job_id is not None and user_id is not None:
        await ctx["events"].send("job.failed", job_id=job_id, user_id=user_id, kind=kind, target=target,
                                 posted=posted, reason=reason, retryable=False)


def _with_retry_hint(reason: str, payload: Any) -> str:
    """A failed training has deleted its photos (biometric data): say how to try again."""
    if not isinstance(payload, contract.TrainPayload) or "/train" in reason:
        return reason
    command = "/train" if payload.kind == "face" else f"/{payload.kind} train"
    return f"{reason} The photos were deleted for privacy: run {command} again to retry."


async def _run(ctx: dict, kind: str, raw: Any, handler: Callable[[dict, Any, JobRun], Awaitable[dict]],
               **kwargs: Any) -> dict:
    """Parse, run, classify failures, log one line and record metrics."""
    run = JobRun(kind=kind)
    enq = _enqueued_at(ctx)
    run.wait = (run.started - enq) if enq is not None else None
    t0 = time.perf_counter()
    payload = None
    try:
        try:
            payload = _parse(kind, raw)
        except contract.PayloadError as exc:
            run.job_id, run.user_id, target = _salvage(raw)
            log.warning("job %s (%s): bad payload: %s", run.job_id, kind, exc)
            raise _Failed("This request could not be read (bad payload). Please run the command again.") from None
        run.job_id = getattr(payload, "job_id", "-")
        run.user_id = getattr(payload, "user_id", None)
        return await handler(ctx, payload, run, **kwargs)
    except _Failed as exc:
        run.outcome = "failed"
        target = getattr(payload, "target", None) if payload is not None else _salvage(raw)[2]
        await _report_failure(ctx, kind, run.job_id if isinstance(run.job_id, int) else None, run.user_id,
                              target, str(exc))
        return {"ok": False, "reason": str(exc)}
    except JobCancelled:
        run.outcome = "cancelled"
        if isinstance(run.job_id, int) and run.user_id is not None:
            target = getattr(payload, "target", None)
            posted = False
            if target is not None and ctx.get("poster") is not None:
                posted = (await ctx["poster"].final(target, Outgoing("Cancelled."))).posted
            await ctx["events"].send("job.cancelled", job_id=run.job_id, user_id=run.user_id, kind=kind,
                                     target=target, posted=posted)
        return {"ok": False, "cancelled": True}
    except UserFacingError as exc:
        run.outcome = "failed"
        reason = exc.message
        if isinstance(exc, IncompatibleArtifact) and not reason[:1].isupper():
            reason = f"A concept in this request cannot be used: {reason}."  # training/'s messages are fragments
        reason = _with_retry_hint(reason, payload)
        await _report_failure(ctx, kind, run.job_id if isinstance(run.job_id, int) else None, run.user_id,
                              getattr(payload, "target", None), reason)
        return {"ok": False, "reason": reason}
    except asyncio.CancelledError:
        run.outcome = "interrupted"  # arq timeout or shutdown: arq retries the job
        raise
    except Exception:
        run.outcome = "error"
        log.exception("job %s (%s) failed", run.job_id, kind)
        reason = _with_retry_hint(GENERIC_REASON.format(job_id=run.job_id), payload)
        await _report_failure(ctx, kind, run.job_id if isinstance(run.job_id, int) else None, run.user_id,
                              getattr(payload, "target", None), reason)
        return {"ok": False, "reason": reason}
    finally:
        dt = time.perf_counter() - t0
        jlog.info(job_line(job_id=run.job_id, kind=kind, user_id=run.user_id, outcome=run.outcome,
                           wait=run.wait, seconds=dt, steps=run.steps, extra=run.extra))
        if ctx.get("metrics") is not None:
            ctx["metrics"].observe_job(kind=kind, outcome=run.outcome, seconds=dt, wait=run.wait)


def _png_to_image(data: bytes) -> Any:
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    return im.convert("RGB")


# --- generate ---------------------------------------------------------------------------------------
def validate_generate(p: contract.GeneratePayload, max_prompt_chars: int) -> None:
    if not p.prompt or not p.prompt.strip():
        raise InvalidInput("Your prompt is empty. Describe the scene you want.")
    if len(p.prompt) > max_prompt_chars:
        raise InvalidInput(f"Your prompt is too long ({len(p.prompt)} characters; the most is {max_prompt_chars}).")
    for words in (p.negative_prompt, p.kit_words, p.style_words):
        if words is not None and len(words) > max_prompt_chars:
            raise InvalidInput(f"A prompt part is too long (the most is {max_prompt_chars} characters).")
    if not 1 <= p.count <= 4:
        raise InvalidInput("You can ask for 1 to 4 images.")
    for side in (p.width, p.height):
        if not MIN_SIDE <= side <= MAX_SIDE or side % 8:
            raise InvalidInput(f"Image sides must be multiples of 8 between {MIN_SIDE} and {MAX_SIDE}.")
    if not 1 <= p.steps <= MAX_STEPS:
        raise InvalidInput(f"Steps must be between 1 and {MAX_STEPS}.")
    if not 0.0 <= p.guidance <= 30.0:
        raise InvalidInput("Guidance must be between 0 and 30.")
    for part in (p.prompt, p.kit_words, p.style_words, p.negative_prompt):
        if part and (find_reserved(part) or find_reserved(unicodedata.normalize("NFKC", part))):
            # Slot tokens (<kb-slot-N>) would reach another request's concept vectors in a shared batch.
            raise InvalidInput("Your prompt contains reserved tokens (`<...>`, `<|...|>`): remove them.")
    mine = keys.user_prefix(p.user_id)
    if p.face is not None and (p.face.kind != "face" or not _key_under(p.face.key, mine)):
        raise NotAllowed("You can only use your own face.")
    guild = keys.guild_prefix(p.guild_id) if p.guild_id is not None else None
    for ref, kind in ((p.kit, "kit"), (p.style, "style")):
        # Kits and styles are the server's own catalogue concepts: never a key under users/ (someone's face).
        if ref is not None and (ref.kind != kind or guild is None or not _key_under(ref.key, guild)):
            raise NotAllowed(f"That {kind} does not belong to this server.")
    if p.variation_of is not None and not _key_under(p.variation_of, mine):
        raise NotAllowed("You can only vary your own images.")


def _key_under(key: str, prefix: str) -> bool:
    """``key`` is a valid store key inside ``prefix`` (no ``..`` or other tricks)."""
    try:
        validate_key(key)
    except InvalidKey:
        return False
    return key.startswith(prefix)


def check_concept_tokens(art: Any) -> None:
    """Refuse a concept whose trigger tokens name the composer's slot tokens or CLIP's special tokens: such a
    token would pass through unrewritten and read another request's vectors in a shared batch."""
    for tok in getattr(art, "tokens", None) or []:
        t = unicodedata.normalize("NFKC", str(tok)).lower()
        if "kb-slot" in t or "<|" in t:
            raise IncompatibleArtifact("A concept in this request uses a reserved trigger token and cannot be "
                                       "used. Re-import or retrain it.")


async def generate(ctx: dict, payload: Any, **kwargs: Any) -> dict:
    with ctx["lane"].preparing() as prep:  # from the first moment: requests started together share a batch
        return await _run(ctx, contract.GENERATE_JOB, payload, _generate, preparing=prep, **kwargs)


async def _generate(ctx: dict, p: contract.GeneratePayload, run: JobRun, preparing: Any = None) -> dict:
    from training.compose import ConceptUse
    from training.generate import GenerationRequest, vary

    settings, store, lane, engine = ctx["settings"], ctx["store"], ctx["lane"], ctx["engine"]
    validate_generate(p, settings.max_prompt_chars)
    created = _enqueued_at(ctx) or run.started
    async with CancelWatch(ctx["redis"], user_id=p.user_id, job_id=p.job_id, created_at=created) as watch:
        if await watch.check():
            raise JobCancelled()
        uses = []
        for ref in (p.face, p.kit, p.style):
            if ref is not None:
                art = await ctx["concepts"].get(ref.key, ref.sha256, ref.kind)
                check_concept_tokens(art)
                uses.append(ConceptUse(ref.key, art, ref.weight))
        init = None
        if p.variation_of:
            try:
                init = _png_to_image(await asyncio.to_thread(store.get_bytes, p.variation_of))
            except ArtifactNotFound:
                raise NotFound("The image to vary no longer exists.") from None
        what = "Varying" if init is not None else "Drawing"
        request = GenerationRequest(
            prompt=p.prompt, concepts=uses, seed=p.seed, count=p.count, width=p.width, height=p.height,
            steps=p.steps, guidance=p.guidance, negative_prompt=p.negative_prompt, kit_words=p.kit_words,
            style_words=p.style_words,
        )
        if init is not None:
            request = vary(request, init.resize((p.width, p.height)), strength=p.variation_strength, seed=p.seed)

        def render(state: dict) -> Outgoing:
            png = preview_png(state.get("preview"))
            return Outgoing(progress_text(f"🎨 {what}", state["step"], state["total"]),
                            files=[("preview.png", png)] if png else [])

        pump = ProgressPump(ctx.get("poster"), p.target, render, interval=settings_interval(ctx))
        item = GenItem(payload=p, uses=uses, request=request, should_stop=watch.should_stop,
                       on_progress=lambda s, t, prev=None: pump.update(step=s, total=t, preview=prev))
        t_gpu = time.perf_counter()
        async with pump:
            images = await lane.call_batched(request.batch_key(), item, engine.generate_batch,
                                             priority=PRIO_GENERATE, preparing=preparing)
        gpu_wall = time.perf_counter() - t_gpu
    if watch.should_stop():
        await asyncio.to_thread(_delete_prefix, store, p.output_prefix)
        raise JobCancelled()
    run.steps = p.steps
    run.extra = f"pipeline={item.pipeline_seconds:.3f}s gpu_wait={gpu_wall - item.pipeline_seconds:.3f}s"
    _bounded(ctx["timings"]).append({"job_id": p.job_id, "pipeline": item.pipeline_seconds, "gpu_wall": gpu_wall,
                                     "enqueued": created, "gpu_started": item.gpu_started})
    prefix = p.output_prefix if p.output_prefix.endswith("/") else p.output_prefix + "/"
    out_keys = [f"{prefix}{i}.png" for i in range(len(images))]
    for k, g in zip(out_keys, images, strict=True):
        await asyncio.to_thread(store.put_bytes, k, g.png)
    seeds = [int(g.seed) for g in images]
    nsfw = [bool(getattr(g, "nsfw", False)) for g in images]
    msg = generate_result(job_id=p.job_id, user_id=p.user_id, prompt=p.prompt, seeds=seeds,
                          pngs=[g.png for g in images], nsfw=nsfw, seconds=time.time() - run.started)
    res = await _final(ctx, p.target, msg)
    await ctx["events"].send(
        "job.done", job_id=p.job_id, user_id=p.user_id, kind=contract.GENERATE_JOB, target=p.target,
        posted=res.posted, output_keys=out_keys, seeds=seeds, prompt=p.prompt, message_id=res.message_id, nsfw=nsfw,
    )
    return {"ok": True, "output_keys": out_keys, "posted": res.posted}


def _bounded(records: list, keep: int = 1000) -> list:
    if len(records) > keep:
        del records[: len(records) - keep]
    return records


def settings_interval(ctx: dict) -> float:
    return float(ctx.get("progress_interval", 1.0))


async def _final(ctx: dict, target: contract.DiscordTarget, msg: Outgoing) -> Any:
    from gpu_worker.poster import PostResult  # noqa: F401 - typing only; poster is optional

    poster = ctx.get("poster")
    if poster is None:
        return _NotPosted()
    return await poster.final(target, msg)


class _NotPosted:
    posted = False
    message_id = None


def _delete_prefix(store: Any, prefix: str) -> int:
    if not prefix:
        return 0
    return store.delete_prefix(prefix if prefix.endswith("/") else prefix + "/")


# --- training ---------------------------------------------------------------------------------------
CHECKPOINT_NAME = "state.ckpt"
META_NAME = "meta.json"


def _ckpt_key(p: contract.TrainPayload) -> str:
    prefix = p.checkpoint_prefix if p.checkpoint_prefix.endswith("/") else p.checkpoint_prefix + "/"
    return prefix + CHECKPOINT_NAME


def _meta_key(p: contract.TrainPayload) -> str:
    prefix = p.checkpoint_prefix if p.checkpoint_prefix.endswith("/") else p.checkpoint_prefix + "/"
    return prefix + META_NAME


def _load_photos(store: Any, photo_keys: list[str]) -> tuple[list[Any], list[Any] | None]:
    images, masks, any_mask = [], [], False
    for k in photo_keys:
        try:
            images.append(_png_to_image(store.get_bytes(k)))
        except ArtifactNotFound:
            continue
        except Exception:  # noqa: BLE001
            raise InvalidInput("One of the training photos is damaged.") from None
        mk = keys.mask_key(k)
        if store.exists(mk):
            from PIL import Image

            m = Image.open(io.BytesIO(store.get_bytes(mk)))
            m.load()
            masks.append(m.convert("L"))
            any_mask = True
        else:
            masks.append(None)
    return images, (masks if any_mask else None)


def validate_train(p: contract.TrainPayload) -> None:
    if not p.photo_keys:
        raise InvalidInput("No training photos were found.")
    prefix = keys.user_prefix(p.user_id)
    if p.kind == "face":
        for k in (*p.photo_keys, p.artifact_key, p.checkpoint_prefix):
            if not k.startswith(prefix):
                raise NotAllowed("A face can only be trained from your own photos.")
    if p.steps is not None and not 1 <= p.steps <= 5000:
        raise InvalidInput("Training steps must be between 1 and 5000.")


async def train_slice(ctx: dict, payload: Any, created_at: float | None = None, **kwargs: Any) -> dict:
    return await _run(ctx, contract.TRAIN_JOB, payload, _train_slice, created_at=created_at)


async def _train_slice(ctx: dict, p: contract.TrainPayload, run: JobRun, created_at: float | None = None) -> dict:
    settings, store, lane, engine = ctx["settings"], ctx["store"], ctx["lane"], ctx["engine"]
    created = created_at or _enqueued_at(ctx) or run.started
    run.extra = f"slice={p.slice_index} try={ctx.get('job_try', 1)}"
    try:
        validate_train(p)
        async with CancelWatch(ctx["redis"], user_id=p.user_id, job_id=p.job_id, created_at=created) as watch:
            if await watch.check():
                raise JobCancelled()
            if p.slice_index == 0 and ctx.get("job_try", 1) == 1:
                await ctx["events"].send("job.started", job_id=p.job_id, user_id=p.user_id,
                                         kind=contract.TRAIN_JOB, target=p.target)
            state = None
            with contextlib.suppress(ArtifactNotFound):
                state = await asyncio.to_thread(store.get_bytes, _ckpt_key(p))
            meta = {"seconds": 0.0, "started": run.started}
            with contextlib.suppress(ArtifactNotFound, ValueError):
                meta.update(json.loads(await asyncio.to_thread(store.get_bytes, _meta_key(p))))
            images, masks = await asyncio.to_thread(_load_photos, store, p.photo_keys)
            if not images:
                raise InvalidInput("The training photos are gone.")

            def render(state_: dict) -> Outgoing:
                return Outgoing(progress_text("🧠 Learning your face" if p.kind == "face" else f"🧠 Learning {p.name}",
                                              state_["step"], state_["total"], state_.get("eta")))

            pump = ProgressPump(ctx.get("poster"), p.target, render, interval=settings_interval(ctx))

            def on_progress(pr: Any) -> None:
                pump.update(step=int(pr.step), total=int(pr.total), eta=getattr(pr, "eta_seconds", None))

            work = SliceWork(payload=p, images=images, masks=masks, state=state, max_steps=settings.slice_steps,
                             max_seconds=settings.slice_seconds, should_stop=watch.should_stop,
                             on_progress=on_progress, samples=settings.train_samples)
            async with ctx["train_lock"], pump:
                slices = _bounded(ctx["slices"])

                def on_gpu() -> Any:
                    slices.append(("start", p.job_id, p.slice_index, time.time()))  # when the GPU takes it
                    return engine.train_slice(work)

                result = await lane.call(on_gpu, priority=PRIO_TRAIN)
                ctx["slices"].append(("end", p.job_id, p.slice_index, time.time()))
            run.steps = result.steps_run
            meta["seconds"] = float(meta.get("seconds", 0.0)) + result.seconds
            if await watch.check():
                raise JobCancelled()
            if not result.done:
                await asyncio.to_thread(store.put_bytes, _ckpt_key(p), result.state)
                await asyncio.to_thread(store.put_bytes, _meta_key(p), json.dumps(meta).encode())
                nxt = dataclasses.replace(p, slice_index=p.slice_index + 1)
                await ctx["redis"].enqueue_job(
                    contract.TRAIN_JOB, nxt.to_dict(), created_at=created,
                    _job_id=contract.arq_job_id(p.job_id, nxt.slice_index), _queue_name=settings.queue_name,
                )
                await ctx["events"].send("job.progress", job_id=p.job_id, user_id=p.user_id,
                                         kind=contract.TRAIN_JOB, target=p.target, step=result.step,
                                         total=result.total, eta_seconds=None)
                await pump.flush()
                return {"ok": True, "done": False, "step": result.step, "total": result.total}
            return await _finish_training(ctx, p, result, meta)
    except JobCancelled:
        await asyncio.to_thread(_cleanup_training, store, p, photos=False)
        raise
    except (UserFacingError, _Failed, Exception) as exc:
        if isinstance(exc, asyncio.CancelledError):
            raise
        # Nothing half-written: no artifact, no checkpoints, and the photos go (biometric data).
        await asyncio.to_thread(_cleanup_training, store, p, photos=True)
        raise


async def _finish_training(ctx: dict, p: contract.TrainPayload, result: Any, meta: dict) -> dict:
    import hashlib

    store = ctx["store"]
    await asyncio.to_thread(store.put_bytes, p.artifact_key, result.artifact)
    sample_keys = []
    prefix = keys.outputs_prefix(p.user_id, p.job_id) if p.kind == "face" else (
        p.checkpoint_prefix.rstrip("/") + "-samples/")
    for i, png in enumerate(result.samples):
        k = f"{prefix}sample-{i}.png"
        await asyncio.to_thread(store.put_bytes, k, png)
        sample_keys.append(k)
    sha = hashlib.sha256(result.artifact).hexdigest()
    seconds = float(meta.get("seconds", result.seconds))
    what = "your face" if p.kind == "face" else p.name
    content = (f"✅ I learned {what} in {seconds:.0f}s ({result.total} steps, "
               f"{len(result.artifact) / 1e6:.1f} MB). Try `/generate` now!")
    msg = Outgoing(content, files=[(f"sample-{i}.png", png) for i, png in enumerate(result.samples)])
    await asyncio.to_thread(_cleanup_training, store, p, photos=True)  # before the event: it means "all done"
    res = await _final(ctx, p.target, msg)
    await ctx["events"].send(
        "concept.ready", job_id=p.job_id, user_id=p.user_id, kind=contract.TRAIN_JOB, target=p.target,
        posted=res.posted, concept_id=p.concept_id, artifact_key=p.artifact_key, size_bytes=len(result.artifact),
        sha256=sha, trigger_tokens=result.trigger_tokens, sample_keys=sample_keys, steps=result.total,
        seconds=seconds,
    )
    return {"ok": True, "done": True, "artifact_key": p.artifact_key, "sha256": sha}


def _cleanup_training(store: Any, p: contract.TrainPayload, *, photos: bool) -> None:
    with contextlib.suppress(Exception):
        _delete_prefix(store, p.checkpoint_prefix)
    if photos:
        for k in p.photo_keys:
            with contextlib.suppress(Exception):
                store.delete(k)
                store.delete(keys.mask_key(k))
        if p.kind == "face":
            with contextlib.suppress(Exception):
                store.delete_prefix(keys.photos_prefix(p.user_id, p.concept_id))


# --- upscale ----------------------------------------------------------------------------------------
async def upscale(ctx: dict, payload: Any, **kwargs: Any) -> dict:
    return await _run(ctx, contract.UPSCALE_JOB, payload, _upscale)


async def _upscale(ctx: dict, p: contract.UpscalePayload, run: JobRun) -> dict:
    store, lane, engine = ctx["store"], ctx["lane"], ctx["engine"]
    mine = keys.user_prefix(p.user_id)
    if not (p.source_key.startswith(mine) and p.output_key.startswith(mine)):
        raise NotAllowed("You can only upscale your own images.")
    try:
        src = _png_to_image(await asyncio.to_thread(store.get_bytes, p.source_key))
    except ArtifactNotFound:
        raise NotFound("That image no longer exists.") from None
    out = await lane.call(lambda: engine.upscale(src, p.prompt, p.seed), priority=PRIO_LIGHT)
    data = out.png  # a GeneratedImage: PNG with its parameters and AI-generated marks
    await asyncio.to_thread(store.put_bytes, p.output_key, data)
    res = await _final(ctx, p.target, Outgoing("🔍 Upscaled", files=[(f"upscaled-{p.job_id}.png", data)]))
    await ctx["events"].send("job.done", job_id=p.job_id, user_id=p.user_id, kind=contract.UPSCALE_JOB,
                             target=p.target, posted=res.posted, output_keys=[p.output_key], seeds=[p.seed],
                             prompt=p.prompt, message_id=res.message_id, nsfw=[False])
    return {"ok": True, "output_keys": [p.output_key]}


# --- export -----------------------------------------------------------------------------------------
DISCORD_FILE_LIMIT = 10 * 1024 * 1024


async def export(ctx: dict, payload: Any, **kwargs: Any) -> dict:
    return await _run(ctx, contract.EXPORT_JOB, payload, _export)


async def _export(ctx: dict, p: contract.ExportPayload, run: JobRun) -> dict:
    store, lane, engine = ctx["store"], ctx["lane"], ctx["engine"]
    mine = keys.user_prefix(p.user_id)
    if not (p.concept_key.startswith(mine) and p.output_prefix.startswith(mine)):
        raise NotAllowed("You can only export your own concepts.")
    try:
        data = await asyncio.to_thread(store.get_bytes, p.concept_key)
    except ArtifactNotFound:
        raise NotFound("That concept no longer exists.") from None
    prefix = p.output_prefix if p.output_prefix.endswith("/") else p.output_prefix + "/"
    with tempfile.TemporaryDirectory(prefix="kb-export-") as tmp:
        paths = await lane.call(lambda: engine.export(data, list(p.formats), Path(tmp)), priority=PRIO_LIGHT)
        file_keys, files = [], []
        for path in paths:
            rel = path.relative_to(tmp).as_posix()
            k = prefix + rel
            await asyncio.to_thread(store.put_file, k, path)
            file_keys.append(k)
            if path.is_file() and path.stat().st_size <= DISCORD_FILE_LIMIT and len(files) < 10:
                files.append((rel.replace("/", "-"), path.read_bytes()))
    res = await _final(ctx, p.target, Outgoing(f"📦 Your concept in {', '.join(p.formats)} format.", files=files))
    await ctx["events"].send("job.done", job_id=p.job_id, user_id=p.user_id, kind=contract.EXPORT_JOB,
                             target=p.target, posted=res.posted, file_keys=file_keys, message_id=res.message_id)
    return {"ok": True, "file_keys": file_keys}


# --- cancel -----------------------------------------------------------------------------------------
async def cancel(ctx: dict, payload: Any, **kwargs: Any) -> dict:
    t0 = time.perf_counter()
    try:
        p = _parse(contract.CANCEL_JOB, payload)
    except contract.PayloadError as exc:
        log.warning("cancel: bad payload: %s", exc)
        return {"ok": False, "reason": str(exc)}
    await set_flags(ctx["redis"], p, time.time())
    if not p.job_ids and ctx.get("concepts") is not None:  # the whole user (e.g. /forget): drop their concepts
        ctx["concepts"].invalidate_prefix(keys.user_prefix(p.user_id))
    removed = await drop_queued(ctx["redis"], ctx["settings"].queue_name, user_id=p.user_id, job_ids=p.job_ids)
    for arq_id, function, data in removed:
        job_id = data.get("job_id")
        if function == contract.TRAIN_JOB:
            with contextlib.suppress(Exception):
                tp = contract.TrainPayload.from_dict(data)
                await asyncio.to_thread(_cleanup_training, ctx["store"], tp, photos=False)
        if isinstance(job_id, int):
            await ctx["events"].send("job.cancelled", job_id=job_id, user_id=p.user_id, kind=function,
                                     reason=p.reason, dropped=arq_id)
    jlog.info(job_line(job_id="-", kind=contract.CANCEL_JOB, user_id=p.user_id, outcome="ok", wait=None,
                       seconds=time.perf_counter() - t0, extra=f"dropped={len(removed)}"))
    return {"ok": True, "dropped": [r[0] for r in removed]}


__all__ = ["cancel", "export", "generate", "is_cancelled", "train_slice", "upscale"]
