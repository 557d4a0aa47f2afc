"""The bot <-> worker contract. Standard library only: the bot imports this module and nothing else of the worker.

- Jobs: arq function names, payload dataclasses (JSON-serialisable dicts on the wire), arq job ids.
- Cancellation: Redis flag keys the worker checks between steps.
- Events: the worker's Redis stream (``Settings.events_stream``), which the bot consumes with a group.
- Result buttons: the ``custom_id`` format (the ids live in it, so buttons survive a bot restart).
- Limits: ``limits`` (``kitbooth.limits``), the one definition of what a request may ask for.

``PayloadError`` is ``kitbooth.errors.PayloadError`` (the one error tree), re-exported here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from kitbooth import limits  # noqa: F401 - part of the contract (re-exported)
from kitbooth.errors import PayloadError  # noqa: F401 - re-exported

# 2: payloads carry the member's locale, DreamBooth's full_delta, squads. A payload from a newer bot is refused
# by version (one clear line for the operator) before its unknown fields are.
CONTRACT_VERSION = 2

# --- job names (arq function names) ---------------------------------------------------------------
TRAIN_JOB = "train_slice"
GENERATE_JOB = "generate"
UPSCALE_JOB = "upscale"
CANCEL_JOB = "cancel"
EXPORT_JOB = "export"
SQUAD_JOB = "squad"

ConceptKind = Literal["face", "kit", "style"]


T = TypeVar("T", bound="_Wire")

_PLAIN: dict[str, Any] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
}


def _plain_ok(annotation: str, value: Any) -> bool:
    """Whether ``value`` fits a plain field annotation (``int``, ``str | None``, ``list[int]``...); others pass."""
    parts = [p.strip() for p in annotation.split("|")]
    if value is None and "None" in parts:
        return True
    for part in parts:
        if part in _PLAIN:
            if _PLAIN[part](value):
                return True
        elif part.startswith("list[") and part[5:-1] in _PLAIN:
            if isinstance(value, list) and all(_PLAIN[part[5:-1]](v) for v in value):
                return True
        elif part != "None":
            return True  # not a plain type (a Literal alias, a nested dataclass): checked where it is used
    return False


@dataclass(frozen=True)
class _Wire:
    """JSON round-trip for (nested) frozen dataclasses; unknown or missing fields are refused."""

    _nested: ClassVar[dict[str, type]] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        if not isinstance(data, dict):
            raise PayloadError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        version = data.get("version")
        if "version" in names and isinstance(version, int) and version > CONTRACT_VERSION:
            raise PayloadError(f"{cls.__name__}: contract version {version} is newer than this process's "
                               f"{CONTRACT_VERSION}: upgrade it to the bot's and workers' release")
        unknown = set(data) - names
        if unknown:
            raise PayloadError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        kwargs = {}
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for key, value in data.items():
            sub = cls._nested.get(key)
            if sub is not None and value is not None:
                value = [sub.from_dict(v) for v in value] if isinstance(value, list) else sub.from_dict(value)
            elif not _plain_ok(str(types[key]), value):  # e.g. "count": "4" would fail deep in a job, as a bug
                raise PayloadError(f"{cls.__name__}: {key} must be {types[key]}, got {type(value).__name__}")
            kwargs[key] = value
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise PayloadError(f"{cls.__name__}: {exc}") from None

    @classmethod
    def from_json(cls: type[T], text: str | bytes) -> T:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise PayloadError(f"{cls.__name__}: not JSON ({exc})") from None


# --- payload parts --------------------------------------------------------------------------------
INTERACTION_TOKEN_TTL_S = 15 * 60  # Discord interaction tokens expire after 15 minutes
INTERACTION_TOKEN_MARGIN_S = 30


@dataclass(frozen=True)
class DiscordTarget(_Wire):
    """Where the worker posts progress and results."""

    channel_id: int
    user_id: int
    guild_id: int | None = None
    application_id: int | None = None
    interaction_token: str | None = None  # lets the worker edit the original response (15 min)
    interaction_created_at: float | None = None  # epoch seconds
    message_id: int | None = None  # a message to edit instead (e.g. the bot's followup)
    # The member's language (a Discord locale code, kitbooth.i18n picks the catalogue): every payload carries its
    # target, so the worker renders progress, results and failures in it; an older payload reads as English.
    locale: str = "en-US"

    def token_valid(self, now: float | None = None) -> bool:
        if not (self.interaction_token and self.application_id and self.interaction_created_at):
            return False
        now = time.time() if now is None else now
        return now < self.interaction_created_at + INTERACTION_TOKEN_TTL_S - INTERACTION_TOKEN_MARGIN_S


@dataclass(frozen=True)
class ConceptRef(_Wire):
    """A concept file in the artifact store. ``sha256`` lets the worker cache it by content."""

    key: str
    kind: ConceptKind
    sha256: str = ""
    weight: float = 1.0


# --- payloads ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainPayload(_Wire):
    """Train one concept. The worker runs one slice per arq job and enqueues the next slice itself."""

    _nested: ClassVar[dict[str, type]] = {"target": DiscordTarget}

    job_id: int
    user_id: int
    concept_id: int
    kind: ConceptKind
    method: str  # training.config.METHODS: pivotal | lora | ti | dreambooth | ...
    name: str
    photo_keys: list[str]
    artifact_key: str  # where the finished .safetensors goes
    checkpoint_prefix: str  # folder for slice checkpoints
    target: DiscordTarget
    guild_id: int | None = None
    steps: int | None = None  # None: the kind's default
    resolution: int | None = None
    seed: int = 0
    full_delta: bool = False  # DreamBooth kits/styles only (an admin's choice): keep the whole delta, no SVD
    slice_index: int = 0
    version: int = CONTRACT_VERSION


@dataclass(frozen=True)
class GeneratePayload(_Wire):
    """Generate 1-4 images. ``face`` must be the requester's own concept: the bot checks ownership."""

    _nested: ClassVar[dict[str, type]] = {
        "target": DiscordTarget, "face": ConceptRef, "kit": ConceptRef, "style": ConceptRef,
    }

    job_id: int
    user_id: int
    prompt: str
    output_prefix: str  # e.g. users/<id>/outputs/<job>/
    target: DiscordTarget
    guild_id: int | None = None
    face: ConceptRef | None = None
    kit: ConceptRef | None = None
    kit_words: str | None = None
    style: ConceptRef | None = None
    style_words: str | None = None
    negative_prompt: str | None = None
    count: int = 4
    seed: int = 0
    width: int = 512
    height: int = 512
    steps: int = 25
    guidance: float = 7.0
    variation_of: str | None = None  # output key of the image to vary (the "vary" button)
    variation_strength: float = 0.35
    allow_nsfw: bool = False
    # Likeness levers (issue 14): the face's reference identity (a store key under the user's prefix, never the
    # descriptor itself), how many candidates to generate for best-of-N (count..CANDIDATES_MAX; None = count),
    # and the face-detail pass ("auto": faces below the threshold, "always", "off").
    reference_key: str | None = None
    candidates: int | None = None
    face_detail: str = "auto"
    # Instant face (optional): the key of the user's face embedding while their face is still training (then
    # ``face`` is None); the worker conditions on it through IP-Adapter FaceID and labels the result a preview.
    instant_key: str | None = None
    version: int = CONTRACT_VERSION


@dataclass(frozen=True)
class UpscalePayload(_Wire):
    """Upscale one generated image (the U1-U4 buttons)."""

    _nested: ClassVar[dict[str, type]] = {"target": DiscordTarget}

    job_id: int
    user_id: int
    source_key: str
    output_key: str
    target: DiscordTarget
    prompt: str = ""
    seed: int = 0
    version: int = CONTRACT_VERSION


@dataclass(frozen=True)
class CancelPayload(_Wire):
    """Cancel a user's jobs (``/forget``, an admin). Empty ``job_ids`` means all of the user's jobs."""

    user_id: int
    job_ids: list[int] = field(default_factory=list)
    reason: str = "cancelled"


@dataclass(frozen=True)
class ExportPayload(_Wire):
    """Convert the user's own concept to other formats (``/export``); files go under ``output_prefix``."""

    _nested: ClassVar[dict[str, type]] = {"target": DiscordTarget}

    job_id: int
    user_id: int
    concept_key: str
    output_prefix: str  # e.g. users/<id>/exports/<job>/
    target: DiscordTarget
    formats: list[str] = field(default_factory=lambda: ["a1111", "kohya"])
    name: str = ""  # the owner's display name: the files are named after it ("alice-kb-face.pt")
    version: int = CONTRACT_VERSION


@dataclass(frozen=True)
class SquadFace(_Wire):
    """One member of a squad photo: their own face concept (and reference identity, for best-of-N)."""

    _nested: ClassVar[dict[str, type]] = {"face": ConceptRef}

    user_id: int
    face: ConceptRef
    reference_key: str | None = None


@dataclass(frozen=True)
class SquadPayload(_Wire):
    """A squad photo (``/squad``): the requester and 1-4 members who approved, one image.

    ``members`` is the reading order of the faces (left to right), the requester first. ``approved`` is the
    approval set the bot recorded: the worker refuses a payload in which any face is not ``users/<id>/...`` of
    an approved member (``gpu_worker.validation.validate_squad``)."""

    _nested: ClassVar[dict[str, type]] = {
        "target": DiscordTarget, "members": SquadFace, "kit": ConceptRef, "style": ConceptRef,
    }

    job_id: int
    user_id: int  # the requester (the job, its quota and its output folder are theirs)
    squad_id: int
    prompt: str
    output_prefix: str  # users/<requester>/outputs/<job>/
    target: DiscordTarget
    members: list[SquadFace]
    approved: list[int]
    guild_id: int | None = None
    kit: ConceptRef | None = None
    kit_words: str | None = None
    style: ConceptRef | None = None
    style_words: str | None = None
    seed: int = 0
    width: int = 768
    height: int = 512
    steps: int = 25
    guidance: float = 7.0
    candidates: int | None = None  # best-of-N scenes (None: one)
    allow_nsfw: bool = False
    version: int = CONTRACT_VERSION


PAYLOAD_TYPES: dict[str, type[_Wire]] = {
    TRAIN_JOB: TrainPayload, GENERATE_JOB: GeneratePayload, UPSCALE_JOB: UpscalePayload,
    CANCEL_JOB: CancelPayload, EXPORT_JOB: ExportPayload, SQUAD_JOB: SquadPayload,
}


def arq_job_id(job_id: int, slice_index: int | None = None) -> str:
    """arq ``_job_id``: the DB id, so enqueueing the same job twice is refused by arq."""
    return f"kb-{int(job_id)}" if slice_index is None else f"kb-{int(job_id)}-s{int(slice_index)}"


def parse_arq_job_id(arq_id: str) -> tuple[int, int | None] | None:
    parts = arq_id.split("-")
    try:
        if len(parts) == 2 and parts[0] == "kb":
            return int(parts[1]), None
        if len(parts) == 3 and parts[0] == "kb" and parts[2].startswith("s"):
            return int(parts[1]), int(parts[2][1:])
    except ValueError:
        return None
    return None


# --- cancellation flags --------------------------------------------------------------------------
CANCEL_TTL_S = 24 * 3600


# Keys that outlive a job name a hashed user id (``user_tag``), so a Redis dump names no Discord account.
USER_TAG_SALT = b"kitbooth-user-tag-v1:"


def user_tag(user_id: int) -> str:
    """The hashed id used in Redis keys: sha256(salt + id), 16 hex digits (not reversible by a key listing)."""
    return hashlib.sha256(USER_TAG_SALT + str(int(user_id)).encode()).hexdigest()[:16]


def cancel_user_key(user_id: int) -> str:
    """Set (value: epoch seconds) to cancel every job of the user created before that time."""
    return f"kitbooth:cancel:user:{user_tag(user_id)}"


FORGOTTEN_TTL_S = 24 * 3600


def forgotten_user_key(user_id: int) -> str:
    """Set by ``/forget`` (value: epoch seconds): a job of the user enqueued before then that ends afterwards
    deletes its own arq result and sends no event (the worker checks it before writing either)."""
    return f"kitbooth:forgotten:{user_tag(user_id)}"


def cancel_job_key(job_id: int) -> str:
    return f"kitbooth:cancel:job:{int(job_id)}"


DELIVERED_TTL_S = 3600  # outlives every retry of a job (tries x timeout + defers)


def delivered_key(job_id: int) -> str:
    """Written by the worker right after it posted a job's final message (value: the end event's JSON, ids and
    keys only), so a try that arq runs again (a shutdown between the post and the job's end) re-sends the event
    instead of drawing and posting a second time."""
    return f"kitbooth:delivered:{int(job_id)}"


def train_slice_key(job_id: int) -> str:
    """The arq id of a training's latest enqueued slice (set by the worker as it enqueues the next slice), so
    a cancel finds a queued slice with one GET instead of a scan of the queue."""
    return f"kitbooth:train:slice:{int(job_id)}"


# --- events ---------------------------------------------------------------------------------------
EventType = Literal[
    "job.started", "job.progress", "job.done", "job.failed", "job.cancelled", "concept.ready",
]
EVENT_TYPES: tuple[str, ...] = (
    "job.started", "job.progress", "job.done", "job.failed", "job.cancelled", "concept.ready",
)


@dataclass(frozen=True)
class Event(_Wire):
    """One entry of the events stream.

    ``posted`` says whether the worker delivered the user-visible message itself; when False the bot
    delivers it (from ``data``) so no result is lost because Discord was unreachable from the worker.
    ``data`` by type:
      job.done: output_keys [str], seeds [int], message_id, nsfw [bool], likeness [float|None]; never the prompt
        (the bot has it in its DB); no entry carries an interaction token  (export: file_keys [str])
      every type: message_id / message_ids of the messages the worker posted (``/forget`` deletes them)
      concept.ready: concept_id, artifact_key, size_bytes, sha256, trigger_tokens, sample_keys, steps, seconds
      job.failed: reason (short, user-facing), retryable
      job.progress: step, total, eta_seconds; job.started / job.cancelled: (nothing required)
    """

    _nested: ClassVar[dict[str, type]] = {"target": DiscordTarget}

    type: str
    job_id: int
    user_id: int
    kind: str
    target: DiscordTarget | None = None
    posted: bool = False
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise PayloadError(f"unknown event type {self.type!r}")

    def to_fields(self) -> dict[str, str]:
        """Redis stream fields (XADD)."""
        return {"event": self.to_json()}

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> Event:
        raw = fields.get("event", fields.get(b"event"))
        if raw is None:
            raise PayloadError("stream entry without an 'event' field")
        return cls.from_json(raw)


# --- result buttons -------------------------------------------------------------------------------
# kb:<action>:<job id>:<image index>:<owner user id>; persistent across restarts (all state in the id).
ButtonAction = Literal["upscale", "reroll", "vary", "delete"]
_ACTION_CODES = {"upscale": "u", "reroll": "r", "vary": "v", "delete": "d"}
_CODE_ACTIONS = {v: k for k, v in _ACTION_CODES.items()}
CUSTOM_ID_PREFIX = "kb"


@dataclass(frozen=True)
class ButtonId:
    action: ButtonAction
    job_id: int
    index: int  # 0-based image index (0 for whole-message actions)
    owner_id: int

    def encode(self) -> str:
        cid = f"{CUSTOM_ID_PREFIX}:{_ACTION_CODES[self.action]}:{self.job_id}:{self.index}:{self.owner_id}"
        assert len(cid) <= 100  # Discord's custom_id limit
        return cid


def button_id(action: ButtonAction, job_id: int, index: int, owner_id: int) -> str:
    return ButtonId(action, int(job_id), int(index), int(owner_id)).encode()


def parse_button_id(custom_id: str) -> ButtonId | None:
    """Parse a result button's custom_id; None when it is not one of ours or malformed."""
    parts = custom_id.split(":")
    if len(parts) != 5 or parts[0] != CUSTOM_ID_PREFIX or parts[1] not in _CODE_ACTIONS:
        return None
    try:
        job_id, index, owner = int(parts[2]), int(parts[3]), int(parts[4])
    except ValueError:
        return None
    if job_id < 0 or not 0 <= index < 4 or owner < 0:
        return None
    return ButtonId(_CODE_ACTIONS[parts[1]], job_id, index, owner)  # type: ignore[arg-type]


# Regex for a discord.py DynamicItem template matching every result button.
BUTTON_ID_TEMPLATE = r"kb:(?P<action>[urvd]):(?P<job_id>\d+):(?P<index>[0-3]):(?P<owner_id>\d+)"


# Squad photos: the delete button every member of the picture may press (membership is checked in the bot's DB).
SQUAD_DELETE_TEMPLATE = r"kbsq:d:(?P<job_id>\d+)"


def squad_delete_id(job_id: int) -> str:
    return f"kbsq:d:{int(job_id)}"
