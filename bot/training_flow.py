"""The one training path behind ``/train`` (modal or attachments), ``/kit train`` and ``/style train``.

Callers acknowledge the interaction first (``defer``), then call ``start_training``: size checks, the photo
checks in a thread (``training.faces``, torch-free), an ephemeral per-photo checklist, the crops (PNG, and
nothing else of the uploads) stored, the concept and job rows written, the ``TrainPayload`` enqueued, and an
answer with the queue position and ETA. One training per user at a time.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import discord

from bot import jobs, lookalike, photo_reasons, training_methods
from bot.translator import locale_of
from gpu_worker import contract
from kitbooth import limits
from kitbooth.errors import Busy, InvalidInput, NotAllowed
from kitbooth.i18n import keyed, translate
from storage import keys
from training import faces

if TYPE_CHECKING:
    from bot.services import Services
    from storage.database import Concept, Job

log = logging.getLogger(__name__)

TrainKind = Literal["face", "kit", "style"]
MIN_PHOTOS = {"face": 4, "kit": 1, "style": 1}
MAX_PHOTOS = {"face": 10, "kit": 10, "style": 10}
METHODS = training_methods.DEFAULTS  # per kind; the advanced option's choices: bot.training_methods
RESOLUTION = 512

CONSENT_REQUIRED = (  # refusal.consent_required in English
    "KitBooth learns a face only with its owner's consent. Run /train again and confirm that the photos are "
    "of you and that you consent."
)


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its name and bytes (``data`` is None when it was too big to download)."""

    filename: str
    data: bytes | None
    size: int


@dataclass(frozen=True)
class Verdict:
    index: int
    filename: str
    accepted: bool
    reason: str


@dataclass(frozen=True)
class TrainingStarted:
    job: Job
    concept: Concept
    verdicts: list[Verdict]
    queue: jobs.QueueInfo
    message: str


# --- uploads --------------------------------------------------------------------------------------
async def read_attachments(attachments: Sequence[discord.Attachment], max_bytes: int) -> list[Upload]:
    """Download attachments, skipping (not downloading) any over ``max_bytes``."""
    out = []
    for a in attachments:
        if a is None:
            continue
        data = await a.read() if a.size <= max_bytes else None
        out.append(Upload(a.filename, data, a.size))
    return out


def _normalise(photos: Sequence[Upload | tuple[str, bytes]]) -> list[Upload]:
    out = []
    for p in photos:
        if isinstance(p, Upload):
            out.append(p)
        else:
            name, data = p
            out.append(Upload(name, data, len(data)))
    return out


# --- the photo checks (a seam: ``Services.photo_checker`` replaces it) -----------------------------
def default_photo_checker(kind: TrainKind, photos: list[tuple[str, bytes]]) -> Any:
    if kind == "face":
        return faces.check_selfies(photos, resolution=RESOLUTION)
    return faces.prepare_reference_photos(photos, kind=kind, resolution=RESOLUTION)


def _run_checks(
    checker: Callable[..., Any], kind: TrainKind, uploads: list[Upload], max_bytes: int
) -> tuple[list[Verdict], list[tuple[int, bytes, bytes | None]], bytes | None]:
    """(verdict per upload, [(upload index, crop PNG, face-mask PNG or None)], the encoded mean descriptor of
    the accepted faces or None) — runs in a worker thread."""
    too_big = {i for i, u in enumerate(uploads, start=1) if u.data is None or u.size > max_bytes}
    # Oversized files are replaced by empty bytes so the checker's numbering stays the upload's numbering.
    report = checker(kind, [(u.filename, b"" if i in too_big else u.data)
                            for i, u in enumerate(uploads, start=1)])
    verdicts = []
    for v in report.verdicts:
        if v.index in too_big:
            mb = uploads[v.index - 1].size / 1e6
            reason = (f"photo {v.index}: too big ({mb:.1f} MB) — send a photo under "  # checklist.upload_too_big
                      f"{max_bytes / 1e6:.0f} MB")
            verdicts.append(Verdict(v.index, v.filename, False, reason))
        else:
            verdicts.append(Verdict(v.index, v.filename, bool(v.accepted), v.reason))
    crops = []
    for p in report.photos:
        if p.index in too_big:
            continue
        mask = getattr(p, "mask", None)
        crops.append((p.index, _png(p.image), _png(mask) if mask is not None else None))
    kept = {i for i, _png_, _m in crops}
    descriptors = getattr(report, "descriptors", None) or {}
    reference = lookalike.reference_bytes(d for i, d in descriptors.items() if i in kept) \
        if kind == "face" else None
    return verdicts, crops, reference


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def checklist(verdicts: Sequence[Verdict], locale: str = "en-US") -> str:
    return photo_reasons.checklist(verdicts, locale)


# --- guards ---------------------------------------------------------------------------------------
async def check_may_train(services: Services, interaction: discord.Interaction) -> None:
    """Guild setting ``train_role_ids``: empty = everyone may train."""
    if interaction.guild_id is None:
        return
    gs = await services.db.guild_settings(interaction.guild_id)
    allowed = {int(r) for r in gs.train_role_ids}
    if not allowed:
        return
    roles = {r.id for r in getattr(interaction.user, "roles", [])}
    if not roles & allowed:
        raise keyed(NotAllowed, "refusal.train_role_only")


async def check_not_training(services: Services, user_id: int) -> None:
    active = await services.db.list_jobs(user_id=user_id, statuses=("queued", "running"), kind="train")
    if active:
        raise keyed(Busy, "refusal.training_in_progress")


# --- the flow -------------------------------------------------------------------------------------
async def start_training(
    services: Services,
    interaction: discord.Interaction,
    photos: Sequence[Upload | tuple[str, bytes]],
    *,
    kind: TrainKind = "face",
    name: str | None = None,
    consent: bool | None = None,
    guild_id: int | None = None,
    method: str | None = None,
) -> TrainingStarted:
    """Validate, check, store crops, write rows, enqueue, answer. The interaction must already be deferred."""
    settings, db = services.settings, services.db
    user_id = interaction.user.id
    guild_id = guild_id if guild_id is not None else interaction.guild_id
    if kind not in METHODS:
        raise ValueError(f"unknown training kind {kind!r}")
    if kind == "face":
        if not consent:
            raise keyed(NotAllowed, "refusal.consent_required")
        await check_may_train(services, interaction)
    elif guild_id is None:
        raise keyed(NotAllowed, "refusal.kits_need_server")
    method = await training_methods.method_for(services, guild_id, kind, method)

    uploads = _normalise(photos)
    lo, hi = MIN_PHOTOS[kind], MAX_PHOTOS[kind]
    locale = locale_of(interaction)
    what = translate(f"train.what.{kind}", locale)
    if not uploads:
        raise keyed(InvalidInput, "refusal.no_photos", lo=lo, hi=hi, what=what)
    if len(uploads) < lo:
        raise keyed(InvalidInput, "refusal.too_few_photos", count=len(uploads), lo=lo, hi=hi, what=what)
    if len(uploads) > hi:
        raise keyed(InvalidInput, "refusal.too_many_photos", count=len(uploads), hi=hi, what=what)

    starting = services.training_starting
    if user_id in starting:
        raise keyed(Busy, "refusal.training_starting")
    starting.add(user_id)
    try:
        await check_not_training(services, user_id)
        if kind == "face":
            await db.record_consent(user_id)
        checker = services.photo_checker or default_photo_checker
        verdicts, crops, reference = await asyncio.to_thread(_run_checks, checker, kind, uploads,
                                                             settings.max_upload_bytes)
        if len(crops) < lo:  # the checklist is rendered in the member's language by the error handler
            raise keyed(InvalidInput, "refusal.too_few_usable_selfies" if kind == "face" else
                        "refusal.too_few_usable_photos", listing=checklist(verdicts, locale), count=len(crops),
                        lo=lo, what=what)
        await lookalike.refuse_other_persons_face(services, user_id, guild_id, reference)
        started = await _create_and_enqueue(services, interaction, kind=kind, name=name, guild_id=guild_id,
                                            crops=crops, verdicts=verdicts, reference=reference, method=method)
    finally:
        starting.discard(user_id)
    await interaction.followup.send(started.message, ephemeral=True)
    return started


async def _create_and_enqueue(
    services: Services, interaction: discord.Interaction, *, kind: TrainKind, name: str | None,
    guild_id: int | None, crops: list[tuple[int, bytes, bytes | None]], verdicts: list[Verdict],
    reference: bytes | None = None, method: str | None = None,
) -> TrainingStarted:
    method = method or METHODS[kind]
    db, store, settings = services.db, services.store, services.settings
    user_id = interaction.user.id
    await db.ensure_user(user_id)
    concept_name = name or ("face" if kind == "face" else kind)
    concept = await db.create_concept(owner_id=user_id, guild_id=guild_id, kind=kind, name=concept_name,
                                      method=method, status="pending")
    if kind == "face":
        photo_keys = [keys.photo_key(user_id, concept.id, n) for n in range(len(crops))]
        artifact_key = keys.concept_key(user_id, concept.id)
        ckpt = keys.checkpoint_prefix(user_id, concept.id)
    else:
        assert guild_id is not None
        photo_keys = [keys.guild_photo_key(guild_id, concept.id, n) for n in range(len(crops))]
        artifact_key = keys.guild_concept_key(guild_id, concept.id)
        ckpt = keys.guild_checkpoint_prefix(guild_id, concept.id)
    try:
        if kind == "face":  # kept with the face (issue 14.1); the worker reads it by key
            await lookalike.keep_reference(services, user_id, concept.id, reference, len(crops))
        for key, (_index, png, mask) in zip(photo_keys, crops, strict=True):
            await asyncio.to_thread(store.put_bytes, key, png)
            if mask is not None:  # the worker's face-masked loss reads it beside the crop
                await asyncio.to_thread(store.put_bytes, keys.mask_key(key), mask)
        target = jobs.target_from_interaction(interaction)

        def build(job: Job) -> contract.TrainPayload:
            fields: dict[str, Any] = dict(
                job_id=job.id, user_id=user_id, concept_id=concept.id, kind=kind, method=method,
                name=concept_name, photo_keys=photo_keys, artifact_key=artifact_key, checkpoint_prefix=ckpt,
                target=target, guild_id=guild_id, seed=secrets.randbelow(limits.SEED_MAX + 1),
            )
            if settings.train_steps is not None:  # deployment/test defaults (e.g. 4 steps at 64² in tests)
                fields["steps"] = settings.train_steps
            if settings.train_resolution is not None:
                fields["resolution"] = settings.train_resolution
            return contract.TrainPayload(**fields)

        job, _payload = await jobs.create_and_enqueue(
            services, kind="train", user_id=user_id, build_payload=build, guild_id=guild_id,
            channel_id=interaction.channel_id, interaction_id=interaction.id, concept_id=concept.id,
        )
    except BaseException:
        await db.update_concept(concept.id, status="failed", error="could not be queued")
        for key in photo_keys:
            await asyncio.to_thread(store.delete, key)
            await asyncio.to_thread(store.delete, keys.mask_key(key))
        if kind == "face":
            await asyncio.to_thread(store.delete, keys.reference_key(user_id, concept.id))
        raise
    concept = await db.update_concept(concept.id, status="training")
    queue = await jobs.queue_position(services, job)
    n, locale = len(crops), locale_of(interaction)
    what = translate("train.target.face", locale) if kind == "face" else \
        translate(f"train.target.{kind}", locale, name=concept_name)
    message = checklist(verdicts, locale) + "\n\n" + translate(
        "train.started", locale, what=what, count=n, queue=jobs.format_queue(queue, locale))
    log.info("job %s: training %s concept %s for user %s (%d photos)", job.id, kind, concept.id, user_id, n)
    return TrainingStarted(job=job, concept=concept, verdicts=verdicts, queue=queue, message=message)
