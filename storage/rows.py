"""The row types of the KitBooth schema (frozen dataclasses) and the helpers that build them from SQLite rows."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    import aiosqlite

ConceptKind = Literal["face", "kit", "style"]
ConceptStatus = Literal["pending", "training", "ready", "failed", "superseded"]
JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
ACTIVE_JOB_STATUSES: tuple[JobStatus, ...] = ("queued", "running")


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class User:
    id: int
    consent_at: str | None
    daily_quota: int | None
    created_at: str


@dataclass(frozen=True)
class Concept:
    id: int
    owner_id: int | None
    guild_id: int | None
    kind: ConceptKind
    name: str
    trigger_tokens: list[str]
    method: str
    status: ConceptStatus
    artifact_key: str | None
    size_bytes: int | None
    error: str | None
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class Kit:
    id: int
    guild_id: int
    kind: Literal["kit", "style"]
    name: str
    description: str
    concept_id: int | None
    preview_key: str | None
    created_by: int | None
    created_at: str


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    user_id: int
    guild_id: int | None
    channel_id: int | None
    interaction_id: int | None
    message_id: int | None
    concept_id: int | None
    status: JobStatus
    payload: dict[str, Any]
    attempts: int
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str
    arq_id: str | None = None  # the newest attempt's arq job id (a training: its latest slice)


@dataclass(frozen=True)
class Output:
    id: int
    job_id: int
    user_id: int
    artifact_key: str
    seed: int | None
    created_at: str


@dataclass(frozen=True)
class Message:
    """A Discord message that shows a user's face, images or prompt (``/forget`` deletes it)."""

    channel_id: int
    message_id: int
    user_id: int
    job_id: int | None
    kind: str  # original | channel | delivery | echo | export
    guild_id: int | None
    created_at: str


@dataclass(frozen=True)
class GuildSettings:
    guild_id: int
    daily_quota: int | None
    train_role_ids: list[int]
    nsfw_policy: dict[str, str]
    catalogue_seeded_at: str | None
    best_of: int | None = None  # best-of-N candidates per image shown (NULL = default 2; 1 = off)
    allow_dreambooth: bool = False  # members may train their face with DreamBooth (0006; kits/styles always may)


T = TypeVar("T")
_JSON_FIELDS = {"trigger_tokens", "payload", "train_role_ids", "nsfw_policy"}


def row_to(cls: type[T], row: aiosqlite.Row | None) -> T | None:
    if row is None:
        return None
    data = {}
    for f in fields(cls):  # type: ignore[arg-type]
        value = row[f.name]
        if f.name in _JSON_FIELDS:
            value = json.loads(value)
        elif f.type == "bool" and value is not None:  # SQLite stores 0/1
            value = bool(value)
        data[f.name] = value
    return cls(**data)


def escape_like(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
