"""A small typed async repository over the KitBooth schema. No ORM: SQL in plain sight.

One ``Database`` owns one aiosqlite connection. An ``asyncio.Lock`` serialises transactions so that two
coroutines sharing the connection can never interleave statements inside each other's transaction.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiosqlite

from storage.db import connect

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


@dataclass(frozen=True)
class Output:
    id: int
    job_id: int
    user_id: int
    artifact_key: str
    seed: int | None
    created_at: str


@dataclass(frozen=True)
class GuildSettings:
    guild_id: int
    daily_quota: int | None
    train_role_ids: list[int]
    nsfw_policy: dict[str, str]
    catalogue_seeded_at: str | None


T = TypeVar("T")
_JSON_FIELDS = {"trigger_tokens", "payload", "train_role_ids", "nsfw_policy"}


def _row_to(cls: type[T], row: aiosqlite.Row | None) -> T | None:
    if row is None:
        return None
    data = {}
    for f in fields(cls):  # type: ignore[arg-type]
        value = row[f.name]
        if f.name in _JSON_FIELDS:
            value = json.loads(value)
        data[f.name] = value
    return cls(**data)


class Database:
    """The repository. Create with ``await Database.open(path)``; close with ``await db.close()``."""

    def __init__(self, conn: aiosqlite.Connection):
        self.conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | Path) -> Database:
        return cls(await connect(path))

    async def close(self) -> None:
        await self.conn.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rollback on error), exclusive among this object's users."""
        async with self._lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                await self.conn.rollback()
                raise
            else:
                await self.conn.commit()

    # Reads take the lock too: a SELECT left open while another coroutine runs BEGIN IMMEDIATE on the same
    # connection would pin an old WAL snapshot, and SQLite then refuses the write at once (SQLITE_BUSY_SNAPSHOT)
    # instead of waiting.
    async def _one(self, sql: str, params: Sequence[Any] = ()) -> aiosqlite.Row | None:
        async with self._lock, self.conn.execute(sql, params) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        async with self._lock, self.conn.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement in its own transaction; returns lastrowid."""
        async with self.transaction() as conn:
            cur = await conn.execute(sql, params)
            return cur.lastrowid or 0

    # --- users -------------------------------------------------------------------------------
    async def ensure_user(self, user_id: int) -> User:
        await self._write(
            "INSERT INTO users (id, created_at) VALUES (?, ?) ON CONFLICT(id) DO NOTHING", (user_id, utcnow())
        )
        user = await self.get_user(user_id)
        assert user is not None
        return user

    async def get_user(self, user_id: int) -> User | None:
        return _row_to(User, await self._one("SELECT * FROM users WHERE id = ?", (user_id,)))

    async def record_consent(self, user_id: int, when: str | None = None) -> User:
        await self.ensure_user(user_id)
        await self._write("UPDATE users SET consent_at = ? WHERE id = ?", (when or utcnow(), user_id))
        user = await self.get_user(user_id)
        assert user is not None
        return user

    async def set_user_quota(self, user_id: int, quota: int | None) -> None:
        await self.ensure_user(user_id)
        await self._write("UPDATE users SET daily_quota = ? WHERE id = ?", (quota, user_id))

    async def delete_user(self, user_id: int) -> dict[str, int]:
        """Delete a user and (by cascade) their concepts, jobs and outputs; return counts of what went."""
        async with self.transaction() as conn:
            counts = {}
            for table, col in (("concepts", "owner_id"), ("jobs", "user_id"), ("outputs", "user_id")):
                async with conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {col} = ?", (user_id,)) as cur:
                    counts[table] = (await cur.fetchone())[0]
            cur = await conn.execute("DELETE FROM users WHERE id = ?", (user_id,))
            counts["users"] = cur.rowcount
        return counts

    # --- concepts ----------------------------------------------------------------------------
    async def create_concept(
        self,
        *,
        owner_id: int | None,
        guild_id: int | None,
        kind: ConceptKind,
        name: str,
        method: str,
        trigger_tokens: Iterable[str] = (),
        status: ConceptStatus = "pending",
        artifact_key: str | None = None,
        size_bytes: int | None = None,
    ) -> Concept:
        now = utcnow()
        cid = await self._write(
            "INSERT INTO concepts (owner_id, guild_id, kind, name, trigger_tokens, method, status,"
            " artifact_key, size_bytes, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (owner_id, guild_id, kind, name, json.dumps(list(trigger_tokens)), method, status,
             artifact_key, size_bytes, now, now),
        )
        concept = await self.get_concept(cid)
        assert concept is not None
        return concept

    async def get_concept(self, concept_id: int) -> Concept | None:
        return _row_to(Concept, await self._one("SELECT * FROM concepts WHERE id = ?", (concept_id,)))

    async def update_concept(self, concept_id: int, **changes: Any) -> Concept:
        allowed = {"status", "artifact_key", "size_bytes", "error", "trigger_tokens", "name", "method"}
        bad = set(changes) - allowed
        if bad:
            raise ValueError(f"cannot update concept fields {sorted(bad)}")
        if "trigger_tokens" in changes:
            changes["trigger_tokens"] = json.dumps(list(changes["trigger_tokens"]))
        changes["updated_at"] = utcnow()
        cols = ", ".join(f"{k} = ?" for k in changes)
        await self._write(f"UPDATE concepts SET {cols} WHERE id = ?", (*changes.values(), concept_id))
        concept = await self.get_concept(concept_id)
        if concept is None:
            raise KeyError(concept_id)
        return concept

    async def list_concepts(
        self, *, owner_id: int | None = None, kind: ConceptKind | None = None,
        status: ConceptStatus | None = None,
    ) -> list[Concept]:
        where, params = [], []
        for col, value in (("owner_id", owner_id), ("kind", kind), ("status", status)):
            if value is not None:
                where.append(f"{col} = ?")
                params.append(value)
        sql = "SELECT * FROM concepts" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        return [_row_to(Concept, r) for r in await self._all(sql, params)]  # type: ignore[misc]

    async def ready_face(self, owner_id: int) -> Concept | None:
        """The owner's newest ready face concept (the only face they may generate with)."""
        row = await self._one(
            "SELECT * FROM concepts WHERE owner_id = ? AND kind = 'face' AND status = 'ready'"
            " ORDER BY id DESC LIMIT 1", (owner_id,),
        )
        return _row_to(Concept, row)

    async def delete_concept(self, concept_id: int) -> bool:
        async with self.transaction() as conn:
            cur = await conn.execute("DELETE FROM concepts WHERE id = ?", (concept_id,))
            return cur.rowcount > 0

    # --- kits and styles ---------------------------------------------------------------------
    async def add_kit(
        self, *, guild_id: int, name: str, description: str, kind: Literal["kit", "style"] = "kit",
        concept_id: int | None = None, created_by: int | None = None, preview_key: str | None = None,
    ) -> Kit:
        kid = await self._write(
            "INSERT INTO kits (guild_id, kind, name, description, concept_id, preview_key, created_by,"
            " created_at) VALUES (?,?,?,?,?,?,?,?)",
            (guild_id, kind, name, description, concept_id, preview_key, created_by, utcnow()),
        )
        kit = await self._one("SELECT * FROM kits WHERE id = ?", (kid,))
        return _row_to(Kit, kit)  # type: ignore[return-value]

    async def get_kit(self, guild_id: int, name: str, kind: Literal["kit", "style"] = "kit") -> Kit | None:
        row = await self._one(
            "SELECT * FROM kits WHERE guild_id = ? AND kind = ? AND name = ? COLLATE NOCASE",
            (guild_id, kind, name),
        )
        return _row_to(Kit, row)

    async def list_kits(
        self, guild_id: int, kind: Literal["kit", "style"] = "kit", *, search: str = "", limit: int = 1000
    ) -> list[Kit]:
        rows = await self._all(
            "SELECT * FROM kits WHERE guild_id = ? AND kind = ? AND name LIKE ? ESCAPE '\\'"
            " ORDER BY name COLLATE NOCASE LIMIT ?",
            (guild_id, kind, "%" + _escape_like(search) + "%", limit),
        )
        return [_row_to(Kit, r) for r in rows]  # type: ignore[misc]

    async def update_kit(self, kit_id: int, **changes: Any) -> None:
        allowed = {"description", "concept_id", "preview_key", "name"}
        bad = set(changes) - allowed
        if bad:
            raise ValueError(f"cannot update kit fields {sorted(bad)}")
        cols = ", ".join(f"{k} = ?" for k in changes)
        await self._write(f"UPDATE kits SET {cols} WHERE id = ?", (*changes.values(), kit_id))

    async def remove_kit(self, guild_id: int, name: str, kind: Literal["kit", "style"] = "kit") -> Kit | None:
        kit = await self.get_kit(guild_id, name, kind)
        if kit is not None:
            await self._write("DELETE FROM kits WHERE id = ?", (kit.id,))
        return kit

    # --- jobs --------------------------------------------------------------------------------
    async def create_job(
        self, *, kind: str, user_id: int, guild_id: int | None = None, channel_id: int | None = None,
        interaction_id: int | None = None, concept_id: int | None = None,
        payload: dict[str, Any] | None = None,
    ) -> Job:
        now = utcnow()
        jid = await self._write(
            "INSERT INTO jobs (kind, user_id, guild_id, channel_id, interaction_id, concept_id, payload,"
            " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (kind, user_id, guild_id, channel_id, interaction_id, concept_id, json.dumps(payload or {}),
             now, now),
        )
        job = await self.get_job(jid)
        assert job is not None
        return job

    async def get_job(self, job_id: int) -> Job | None:
        return _row_to(Job, await self._one("SELECT * FROM jobs WHERE id = ?", (job_id,)))

    async def update_job(self, job_id: int, **changes: Any) -> Job:
        allowed = {"status", "payload", "attempts", "error", "message_id", "started_at", "finished_at",
                   "concept_id"}
        bad = set(changes) - allowed
        if bad:
            raise ValueError(f"cannot update job fields {sorted(bad)}")
        if "payload" in changes:
            changes["payload"] = json.dumps(changes["payload"])
        now = utcnow()
        status = changes.get("status")
        if status == "running" and "started_at" not in changes:
            changes["started_at"] = now
        if status in ("done", "failed", "cancelled") and "finished_at" not in changes:
            changes["finished_at"] = now
        changes["updated_at"] = now
        cols = ", ".join(f"{k} = ?" for k in changes)
        await self._write(f"UPDATE jobs SET {cols} WHERE id = ?", (*changes.values(), job_id))
        job = await self.get_job(job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    async def list_jobs(
        self, *, user_id: int | None = None, statuses: Iterable[JobStatus] | None = None,
        kind: str | None = None,
    ) -> list[Job]:
        where, params = [], []
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if statuses is not None:
            st = list(statuses)
            where.append(f"status IN ({','.join('?' * len(st))})")
            params.extend(st)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        return [_row_to(Job, r) for r in await self._all(sql, params)]  # type: ignore[misc]

    async def active_jobs(self, user_id: int | None = None) -> list[Job]:
        return await self.list_jobs(user_id=user_id, statuses=ACTIVE_JOB_STATUSES)

    async def count_jobs_since(self, user_id: int, since: str, kinds: Iterable[str]) -> int:
        ks = list(kinds)
        row = await self._one(
            f"SELECT COUNT(*) FROM jobs WHERE user_id = ? AND created_at >= ? AND kind IN ({','.join('?' * len(ks))})"
            " AND status != 'failed'",
            (user_id, since, *ks),
        )
        return row[0] if row else 0

    # --- outputs -----------------------------------------------------------------------------
    async def add_output(self, *, job_id: int, user_id: int, artifact_key: str, seed: int | None) -> Output:
        oid = await self._write(
            "INSERT INTO outputs (job_id, user_id, artifact_key, seed, created_at) VALUES (?,?,?,?,?)",
            (job_id, user_id, artifact_key, seed, utcnow()),
        )
        return _row_to(Output, await self._one("SELECT * FROM outputs WHERE id = ?", (oid,)))  # type: ignore[return-value]

    async def list_outputs(self, *, user_id: int | None = None, job_id: int | None = None,
                           limit: int = 100) -> list[Output]:
        where, params = [], []
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        if job_id is not None:
            where.append("job_id = ?")
            params.append(job_id)
        sql = ("SELECT * FROM outputs" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY id DESC LIMIT ?")
        return [_row_to(Output, r) for r in await self._all(sql, (*params, limit))]  # type: ignore[misc]

    # --- guild settings ----------------------------------------------------------------------
    async def guild_settings(self, guild_id: int) -> GuildSettings:
        await self._write(
            "INSERT INTO guild_settings (guild_id) VALUES (?) ON CONFLICT(guild_id) DO NOTHING", (guild_id,)
        )
        row = await self._one("SELECT * FROM guild_settings WHERE guild_id = ?", (guild_id,))
        return _row_to(GuildSettings, row)  # type: ignore[return-value]

    async def update_guild_settings(self, guild_id: int, **changes: Any) -> GuildSettings:
        allowed = {"daily_quota", "train_role_ids", "nsfw_policy", "catalogue_seeded_at"}
        bad = set(changes) - allowed
        if bad:
            raise ValueError(f"cannot update guild settings {sorted(bad)}")
        await self.guild_settings(guild_id)
        for k in ("train_role_ids", "nsfw_policy"):
            if k in changes:
                changes[k] = json.dumps(changes[k])
        cols = ", ".join(f"{k} = ?" for k in changes)
        await self._write(f"UPDATE guild_settings SET {cols} WHERE guild_id = ?", (*changes.values(), guild_id))
        return await self.guild_settings(guild_id)

    # --- bot additions (B1) ------------------------------------------------------------------------
    async def set_concept_sha256(self, concept_id: int, sha256: str | None) -> None:
        await self._write("UPDATE concepts SET sha256 = ?, updated_at = ? WHERE id = ?",
                          (sha256, utcnow(), concept_id))

    async def concept_sha256(self, concept_id: int) -> str | None:
        row = await self._one("SELECT sha256 FROM concepts WHERE id = ?", (concept_id,))
        return row[0] if row else None

    async def count_images_since(self, user_id: int, since: str, *, guild_id: int | None = None) -> int:
        """Images requested since ``since`` (generate jobs count their ``count``, upscales count 1);
        failed and cancelled jobs do not count. With ``guild_id``: that guild's images, all users."""
        where, params = ["created_at >= ?", "status NOT IN ('failed', 'cancelled')",
                         "kind IN ('generate', 'vary', 'reroll', 'upscale')"], [since]
        if guild_id is None:
            where.append("user_id = ?")
            params.append(user_id)
        else:
            where.append("guild_id = ?")
            params.append(guild_id)
        row = await self._one(
            "SELECT COALESCE(SUM(CASE WHEN kind = 'upscale' THEN 1"
            " ELSE COALESCE(json_extract(payload, '$.count'), 1) END), 0) FROM jobs WHERE " + " AND ".join(where),
            params,
        )
        return int(row[0]) if row else 0

    async def trigger_token_owners(self, tokens: Iterable[str], *, kind: ConceptKind = "face") -> dict[str, int]:
        """{token (lower case): owner id} for concepts of ``kind`` whose trigger tokens include any of
        ``tokens`` (case-insensitive); superseded and failed concepts included (their tokens stay private)."""
        toks = sorted({t.lower() for t in tokens if t})
        if not toks:
            return {}
        rows = await self._all(
            "SELECT lower(j.value) AS tok, c.owner_id FROM concepts c, json_each(c.trigger_tokens) j"
            f" WHERE c.kind = ? AND lower(j.value) IN ({','.join('?' * len(toks))})",
            (kind, *toks),
        )
        return {r[0]: r[1] for r in rows}

    async def delete_outputs(self, job_id: int) -> list[str]:
        """Delete a job's output rows; return their artifact keys (the caller deletes the files)."""
        async with self.transaction() as conn:
            async with conn.execute("SELECT artifact_key FROM outputs WHERE job_id = ?", (job_id,)) as cur:
                found = [r[0] for r in await cur.fetchall()]
            await conn.execute("DELETE FROM outputs WHERE job_id = ?", (job_id,))
        return found

    # --- bot additions (B2) ------------------------------------------------------------------------
    async def detach_user_catalogue(self, user_id: int) -> dict[str, int]:
        """Before ``/forget``: kit/style concepts and catalogue entries the user made stay with their server but
        lose the creator's id; unfinished ones (their training job goes with the user) are marked failed."""
        now = utcnow()
        async with self.transaction() as conn:
            cur = await conn.execute(
                "UPDATE concepts SET status = 'failed', error = 'training cancelled', updated_at = ?"
                " WHERE owner_id = ? AND kind IN ('kit', 'style') AND status IN ('pending', 'training')",
                (now, user_id),
            )
            failed = cur.rowcount
            cur = await conn.execute(
                "UPDATE concepts SET owner_id = NULL, updated_at = ? WHERE owner_id = ? AND kind IN ('kit', 'style')",
                (now, user_id),
            )
            detached = cur.rowcount
            cur = await conn.execute("UPDATE kits SET created_by = NULL WHERE created_by = ?", (user_id,))
            kits = cur.rowcount
        return {"catalogue_concepts": detached, "unfinished": failed, "catalogue_entries": kits}


def _escape_like(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
