"""The job runner: ONE wrapper around every job body — parse → validate → run → classify → log → metrics.

A failure's outcome is decided by the exception's TYPE (``POLICY``, first match wins), never by its text:

    JobCancelled                      → cancelled: cleanup, "Cancelled." posted, job.cancelled event
    PayloadError                      → rejected: failed ("could not be read") when the payload names its job
                                        and user, else dropped (logged only)
    UserFacingError                   → failed with the error's own message
    TransientError (StoreUnavailable) → retried with ``arq.Retry(defer=...)`` up to the kind's ``max_tries``;
    redis ConnectionError/TimeoutError  then failed with ``TRANSIENT_REASON``
    anything else                     → logged with the job id; failed with ``GENERIC_REASON``

The runner enforces each kind's timeout itself (``JobTimedOut``, a ``TransientError``: retried, then failed
with ``TIMEOUT_REASON``), because arq fails a timed-out job for good; arq's own timeout is set
``TIMEOUT_MARGIN_S`` later, as a backstop. arq cancelling the job's task is an abort (``Job.abort()``:
handled as a cancel, then the ``CancelledError`` is re-raised so arq records the abort) or a shutdown
(re-raised: arq runs the job again; on its last try the user is told it failed). A failed or cancelled job
returns normally, so arq never retries what would fail again. Each ``JobKind`` says its timeout, its tries
and what to clean up.

Privacy: arq's result record copies the job's arguments, so the runner blanks the interaction token and the
free text (prompt, names) of that copy in place when the job ends (``scrub``: the result keeps ids and keys;
a retry re-reads arq's untouched job key). Every message a job posts is reported in its events
(``message_id``/``message_ids``) for ``/forget``. A job whose user ran ``/forget`` after it was enqueued
(``contract.forgotten_user_key``, a hashed id) posts nothing more, sends no event, deletes the files and
messages it wrote, and ``after_job_end`` deletes its arq result.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from arq import Retry
from arq.constants import result_key_prefix
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gpu_worker import contract
from gpu_worker.checkpoints import done_key
from gpu_worker.context import JobInfo, WorkerContext, worker_context
from gpu_worker.metrics import job_line
from kitbooth.errors import JobCancelled, PayloadError, TransientError, UserFacingError
from kitbooth.i18n import render_error, translate
from kitbooth.render import Outgoing, cancelled_result, failure_result
from kitbooth.settings import Settings
from storage import keys

log = logging.getLogger(__name__)
jlog = logging.getLogger("gpu_worker.jobs")

GENERIC_REASON = "Something went wrong on our side (job {job_id}). Please try again later."
TRANSIENT_REASON = ("A service KitBooth depends on did not answer for a while (job {job_id}). "
                    "Please try again in a few minutes.")
TIMEOUT_REASON = "This took too long and was stopped (job {job_id}). Please try again later."
UNREADABLE_REASON = "This request could not be read (bad payload). Please run the command again."
MAX_RETRY_DEFER_S = 60.0
TIMEOUT_MARGIN_S = 5.0  # arq's timeout of a job function = the kind's timeout + this (reporting the end)
REPORT_TIMEOUT_S = 10.0  # reporting a cancelled job's end must not hold up a shutdown
FORGOTTEN_CTX = "kitbooth_forgotten"  # set in arq's per-job ctx: ``after_job_end`` deletes the job's result
SECRET_FIELDS = ("prompt", "negative_prompt", "kit_words", "style_words", "name")  # scrubbed from arq's record


class JobTimedOut(TransientError):
    """The job ran past its kind's timeout: retried like a transient failure (a training resumes its slice)."""


class Outcome(enum.Enum):
    OK = "ok"
    CANCELLED = "cancelled"
    REJECTED = "rejected"  # becomes FAILED or DROPPED, see the module docstring
    FAILED = "failed"
    DROPPED = "dropped"
    RETRY = "retry"
    ERROR = "error"
    INTERRUPTED = "interrupted"  # arq timeout or shutdown: arq runs it again


POLICY: tuple[tuple[type[BaseException], Outcome], ...] = (
    (JobCancelled, Outcome.CANCELLED),
    (PayloadError, Outcome.REJECTED),
    (UserFacingError, Outcome.FAILED),
    (TransientError, Outcome.RETRY),  # JobTimedOut included
    (RedisConnectionError, Outcome.RETRY),
    (RedisTimeoutError, Outcome.RETRY),
)


def classify(exc: BaseException) -> Outcome:
    for cls, outcome in POLICY:
        if isinstance(exc, cls):
            return outcome
    return Outcome.ERROR


def retry_defer(settings: Settings, job_try: int) -> float:
    """Seconds before try ``job_try + 1``: exponential from ``retry_defer_s``."""
    return min(settings.retry_defer_s * 2 ** max(job_try - 1, 0), MAX_RETRY_DEFER_S)


class _NotPosted:
    posted = False
    message_id = None
    via = ""


NOT_POSTED = _NotPosted()


@dataclasses.dataclass
class JobRun:
    """One run of one job: who it is for, where it posts, and the bookkeeping of its log line and metrics."""

    kind: str
    arq_id: str | None = None
    job_try: int = 1
    job_id: int | None = None
    user_id: int | None = None
    target: contract.DiscordTarget | None = None
    started: float = dataclasses.field(default_factory=time.time)
    wait: float | None = None
    steps: int = 0
    extra: str = ""
    outcome: Outcome = Outcome.OK
    enqueued_at: float | None = None
    posted_ids: list[int] = dataclasses.field(default_factory=list)  # every message this run posted
    forgotten: bool = False  # the user ran /forget after this job was enqueued
    in_channel: bool = False  # final messages go to the channel, never into the (private) original reply
    delivered: tuple[str, bool, dict] | None = None  # (event type, posted, data) once the final message is out

    async def check_forgotten(self, w: WorkerContext) -> bool:
        """True (and sticky) once the user's forget marker is newer than this job."""
        if not self.forgotten and isinstance(self.user_id, int):
            raw = await w.redis.get(contract.forgotten_user_key(self.user_id))
            try:
                self.forgotten = raw is not None and float(raw) >= (self.enqueued_at or self.started)
            except (TypeError, ValueError):
                self.forgotten = raw is not None
        return self.forgotten

    def bind(self, payload: Any) -> None:
        self.job_id = getattr(payload, "job_id", None)
        self.user_id = getattr(payload, "user_id", None)
        self.target = getattr(payload, "target", None)

    async def post(self, w: WorkerContext, msg: Outgoing) -> Any:
        """The job's final message (a ``PostResult``; ``posted=False`` when the bot must deliver it)."""
        if w.poster is None or self.target is None or await self.check_forgotten(w):
            return NOT_POSTED
        res = await w.poster.final(self.target, msg, in_channel=self.in_channel)
        if res.posted and res.message_id:
            self.posted_ids.append(res.message_id)
        return res

    async def deliver(self, w: WorkerContext, msg: Outgoing, type_: str = "job.done", **data: Any) -> Any:
        """Post the final message, mark the job delivered, then send its end event: exactly once even when arq
        runs the job again after a shutdown struck between the post and the job's end (``run_job`` finds the
        mark and only re-sends the event; the cancel path writes the mark if the shutdown hit before it)."""
        res = await self.post(w, msg)
        data.setdefault("message_id", res.message_id)
        if self.posted_ids:
            data.setdefault("message_ids", list(self.posted_ids))
        self.delivered = (type_, bool(res.posted), data)  # no await since the post: a cancel sees it
        await self.save_delivered(w)
        await self.emit(w, type_, posted=res.posted, **data)
        return res

    async def save_delivered(self, w: WorkerContext) -> None:
        if self.delivered is not None and isinstance(self.job_id, int):
            type_, posted, data = self.delivered
            await w.redis.set(contract.delivered_key(self.job_id),
                              json.dumps({"type": type_, "posted": posted, "data": data}), ex=contract.DELIVERED_TTL_S)

    async def redeliver(self, w: WorkerContext) -> bool:
        """True (and the end event sent again) when an earlier try of this job already posted its result."""
        if not isinstance(self.job_id, int):
            return False
        raw = await w.redis.get(contract.delivered_key(self.job_id))
        if raw is None:
            return False
        mark = json.loads(raw)
        await self.emit(w, mark["type"], posted=bool(mark["posted"]), **mark["data"])
        self.extra = "already delivered"
        log.info("job %s (%s) try %d: already delivered by an earlier try; its event is sent again", self.job_id,
                 self.kind, self.job_try)
        return True

    async def emit(self, w: WorkerContext, type_: str, *, posted: bool = False, **data: Any) -> None:
        """One event of this job; every event carries ``arq_id`` (the arq job that sent it)."""
        if not (isinstance(self.job_id, int) and isinstance(self.user_id, int)) or await self.check_forgotten(w):
            return
        if self.posted_ids:  # the bot records every posted message id (``/forget`` deletes them)
            data.setdefault("message_id", self.posted_ids[-1])
            data.setdefault("message_ids", list(self.posted_ids))
        await w.events.send(type_, job_id=self.job_id, user_id=self.user_id, kind=self.kind, target=self.target,
                            posted=posted, arq_id=self.arq_id, **data)


Body = Callable[..., Awaitable[dict]]  # (w, info, run, payload, **kwargs) -> result dict


@dataclasses.dataclass(frozen=True)
class JobKind:
    """One arq job function: its body and the deliberate arq settings of its kind."""

    name: str
    body: Body
    max_tries: int
    timeout_s: Callable[[Settings], float]
    keep_result_s: int = 600
    # Called once when the job ends for good or is cancelled (not on a retry): delete what it leaves behind.
    on_end: Callable[[WorkerContext, Any, Outcome], Awaitable[None]] | None = None
    # Appended to every failure reason (a training says its photos were deleted and how to try again).
    failure_hint: Callable[[Any], str] | None = None
    final_in_channel: bool = False  # see ``JobRun.in_channel``


def parse(kind: str, raw: Any) -> Any:
    cls = contract.PAYLOAD_TYPES[kind]
    return cls.from_json(raw) if isinstance(raw, str | bytes) else cls.from_dict(raw)


def salvage(raw: Any) -> tuple[int | None, int | None, contract.DiscordTarget | None]:
    """job id, user id and target of a payload that does not parse (to report the failure anyway)."""
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None, None, None
    if not isinstance(raw, dict):
        return None, None, None
    job_id = raw.get("job_id") if isinstance(raw.get("job_id"), int) else None
    user_id = raw.get("user_id") if isinstance(raw.get("user_id"), int) else None
    target = None
    with contextlib.suppress(PayloadError):
        target = contract.DiscordTarget.from_dict(raw.get("target"))
    return job_id, user_id, target


async def run_job(ctx: dict, kind: JobKind, raw: Any, **kwargs: Any) -> dict:
    """Run ``kind.body`` on the payload ``raw`` under the failure policy; see the module docstring."""
    w, info = worker_context(ctx), JobInfo.of(ctx)
    run = JobRun(kind=kind.name, arq_id=info.arq_id, job_try=info.job_try, enqueued_at=info.enqueued_at,
                 in_channel=kind.final_in_channel)
    run.wait = (run.started - info.enqueued_at) if info.enqueued_at is not None else None
    t0 = time.perf_counter()
    payload = None
    try:
        try:
            payload = parse(kind.name, raw)
        except PayloadError:
            run.job_id, run.user_id, run.target = salvage(raw)
            raise
        run.bind(payload)
        if await run.redeliver(w):
            return {"ok": True, "redelivered": True}
        deadline = asyncio.timeout(kind.timeout_s(w.settings))
        try:
            async with deadline:  # cancels the body at the limit (its CancelWatch stops the GPU thread too)
                return await kind.body(w, info, run, payload, **kwargs)
        except TimeoutError:
            if deadline.expired():
                raise JobTimedOut(f"ran past {kind.timeout_s(w.settings):.0f}s") from None
            raise
    except asyncio.CancelledError:
        if run.delivered is not None:  # posted already: a rerun must find the mark (see JobRun.deliver)
            await _shielded(run.save_delivered(w))
        if w.aborted(info.arq_id):  # Job.abort(): a cancel; arq records the abort from the re-raised error
            await _shielded(_end(w, kind, run, payload, Outcome.CANCELLED, ""))
        elif info.job_try >= kind.max_tries:  # a shutdown on the last try: arq will not run it again, say so
            await _shielded(_end(w, kind, run, payload, Outcome.FAILED, GENERIC_REASON.format(job_id=run.job_id)))
        else:
            run.outcome = Outcome.INTERRUPTED
        raise
    except Exception as exc:
        outcome = classify(exc)
        if outcome is Outcome.RETRY and info.job_try < kind.max_tries:
            run.outcome = Outcome.RETRY
            defer = retry_defer(w.settings, info.job_try)
            log.warning("job %s (%s) try %d/%d: %s: %s; retrying in %.1fs", run.job_id, kind.name, info.job_try,
                        kind.max_tries, type(exc).__name__, exc, defer)
            raise Retry(defer=defer) from exc
        reason = _reason(exc, outcome, run)
        if outcome is Outcome.REJECTED:
            log.warning("job %s (%s): bad payload: %s", run.job_id, kind.name, exc)
            outcome = Outcome.FAILED if run.job_id is not None and run.user_id is not None else Outcome.DROPPED
        elif outcome is Outcome.ERROR:
            log.exception("job %s (%s) failed", run.job_id, kind.name)
        elif outcome is Outcome.RETRY:
            log.warning("job %s (%s): giving up after %d tries: %s", run.job_id, kind.name, info.job_try, exc)
            outcome = Outcome.FAILED
        try:
            await _end(w, kind, run, payload, outcome, reason)
        except Exception as end_exc:
            if classify(end_exc) is not Outcome.RETRY or info.job_try >= kind.max_tries:
                raise
            run.outcome = Outcome.RETRY  # e.g. Redis blinked while the failure was reported: report it again
            raise Retry(defer=retry_defer(w.settings, info.job_try)) from end_exc
        if outcome is Outcome.CANCELLED:
            return {"ok": False, "cancelled": True}
        return {"ok": False, "reason": reason}
    finally:
        scrub(raw)
        if await _shielded_bool(run.check_forgotten(w)):
            ctx[FORGOTTEN_CTX] = True
            await _shielded(_erase(w, run))
        dt = time.perf_counter() - t0
        jlog.info(job_line(job_id=run.job_id if run.job_id is not None else "-", kind=kind.name,
                           user_id=run.user_id, outcome=run.outcome.value, wait=run.wait, seconds=dt,
                           steps=run.steps, extra=" ".join(x for x in (run.extra, f"arq={run.arq_id}") if x)))
        w.metrics.observe_job(kind=kind.name, outcome=run.outcome.value, seconds=dt, wait=run.wait)


def _reason(exc: BaseException, outcome: Outcome, run: JobRun) -> str:
    if outcome is Outcome.FAILED:  # a keyed refusal in the member's language (DiscordTarget.locale)
        return render_error(exc, _locale(run)) if isinstance(exc, UserFacingError) else str(exc)
    # The *_REASON constants are these keys' English texts (kitbooth/locales/en).
    locale = _locale(run)
    if outcome is Outcome.REJECTED:
        return translate("failure.unreadable", locale)
    if isinstance(exc, JobTimedOut):
        return translate("failure.timeout", locale, job_id=str(run.job_id))
    if outcome is Outcome.RETRY:
        return translate("failure.transient", locale, job_id=str(run.job_id))
    return translate("failure.generic", locale, job_id=str(run.job_id if run.job_id is not None else run.arq_id))


def _locale(run: JobRun) -> str:
    return run.target.locale if run.target is not None else "en-US"


def scrub(raw: Any) -> None:
    """Blank the interaction token and the free text of arq's copy of the payload, in place.

    arq writes its result record (``arq:result:<id>``, kept ``keep_result_s``) with the very ``args`` objects it
    passed to the job, so this leaves ids and keys only in it. A retry re-reads the untouched job key."""
    if not isinstance(raw, dict):
        return
    for name in SECRET_FIELDS:
        if isinstance(raw.get(name), str):
            raw[name] = ""
    target = raw.get("target")
    if isinstance(target, dict) and target.get("interaction_token"):
        target["interaction_token"] = None


async def _erase(w: WorkerContext, run: JobRun) -> None:
    """A job of a forgotten user ended: remove what it wrote after ``/forget`` ran (files, its messages)."""
    if isinstance(run.user_id, int):
        await asyncio.to_thread(w.store.delete_prefix, keys.user_prefix(run.user_id))
    if isinstance(run.job_id, int):  # a training's bookkeeping (its sample keys name the user)
        await w.redis.delete(done_key(run.job_id), contract.train_slice_key(run.job_id),
                             contract.delivered_key(run.job_id))
    http = getattr(w.poster, "http", None)
    channel_id = run.target.channel_id if run.target is not None else None
    for message_id in run.posted_ids if http is not None and channel_id else ():
        with contextlib.suppress(Exception):
            await http.delete_message(channel_id, message_id, reason="/forget")
    log.info("job %s: its user was forgotten meanwhile; its files, messages and result are removed", run.job_id)


async def after_job_end(ctx: dict) -> None:
    """arq's ``after_job_end`` hook (its result is written by now): a forgotten user's job leaves no result."""
    if ctx.get(FORGOTTEN_CTX) and ctx.get("job_id"):
        await worker_context(ctx).redis.delete(result_key_prefix + str(ctx["job_id"]))


async def _shielded_bool(coro: Awaitable[bool]) -> bool:
    try:
        return bool(await asyncio.wait_for(coro, REPORT_TIMEOUT_S))
    except Exception:  # noqa: BLE001 - Redis away: the bot's /forget deletes the result by name anyway
        return False


async def _shielded(coro: Awaitable[None]) -> None:
    """Report the end of a job whose task arq just cancelled (bounded: a shutdown must not hang on it)."""
    try:
        await asyncio.wait_for(coro, REPORT_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - the job is over either way
        log.exception("reporting the end of an interrupted job failed")


async def _end(w: WorkerContext, kind: JobKind, run: JobRun, payload: Any, outcome: Outcome, reason: str) -> None:
    """Clean up, then tell the user and the bot: a failure or a cancel."""
    run.outcome = outcome
    if payload is not None and kind.on_end is not None:
        await kind.on_end(w, payload, outcome)
    if outcome is Outcome.DROPPED:
        return
    if outcome is Outcome.CANCELLED:
        res = await run.post(w, cancelled_result(_locale(run)))
        await run.emit(w, "job.cancelled", posted=res.posted)
        return
    if payload is not None and kind.failure_hint is not None:
        reason = f"{reason} {kind.failure_hint(payload)}"
    res = await run.post(w, failure_result(reason))
    await run.emit(w, "job.failed", posted=res.posted, reason=reason, retryable=False)


def arq_function(kind: JobKind) -> Callable[..., Awaitable[dict]]:
    """The coroutine arq calls for ``kind`` (one argument: the payload; keyword arguments reach the body)."""

    async def job(ctx: dict, payload: Any, **kwargs: Any) -> dict:
        return await run_job(ctx, kind, payload, **kwargs)

    job.__name__ = job.__qualname__ = kind.name
    return job
