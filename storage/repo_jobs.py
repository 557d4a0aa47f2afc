"""Queries on the ``jobs`` and ``outputs`` tables (quotas count images from them)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from storage.repo_core import RepositoryCore
from storage.rows import ACTIVE_JOB_STATUSES, Job, JobStatus, Output, row_to, utcnow


class JobQueries(RepositoryCore):
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
        return row_to(Job, await self._one("SELECT * FROM jobs WHERE id = ?", (job_id,)))

    async def update_job(self, job_id: int, **changes: Any) -> Job:
        allowed = {"status", "payload", "attempts", "error", "message_id", "started_at", "finished_at",
                   "concept_id", "arq_id"}
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
        kind: str | None = None, concept_id: int | None = None,
    ) -> list[Job]:
        where, params = [], []
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        if concept_id is not None:
            where.append("concept_id = ?")
            params.append(concept_id)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if statuses is not None:
            st = list(statuses)
            where.append(f"status IN ({','.join('?' * len(st))})")
            params.extend(st)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        return [row_to(Job, r) for r in await self._all(sql, params)]  # type: ignore[misc]

    async def count_jobs(self, statuses: Iterable[JobStatus]) -> int:
        """How many jobs (of every user) have one of ``statuses`` — e.g. how many are running now."""
        st = list(statuses)
        row = await self._one(f"SELECT COUNT(*) FROM jobs WHERE status IN ({','.join('?' * len(st))})", st)
        return int(row[0]) if row else 0

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
        return row_to(Output, await self._one("SELECT * FROM outputs WHERE id = ?", (oid,)))  # type: ignore[return-value]

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
        return [row_to(Output, r) for r in await self._all(sql, (*params, limit))]  # type: ignore[misc]

    async def count_images_since(self, user_id: int, since: str, *, guild_id: int | None = None) -> int:
        """Images requested since ``since`` (generate jobs count their ``count``, upscales and squads 1);
        failed and cancelled jobs do not count. With ``guild_id``: that guild's images, all users."""
        where, params = ["created_at >= ?", "status NOT IN ('failed', 'cancelled')",
                         "kind IN ('generate', 'vary', 'reroll', 'upscale', 'squad')"], [since]
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

    async def delete_outputs(self, job_id: int) -> list[str]:
        """Delete a job's output rows; return their artifact keys (the caller deletes the files)."""
        async with self.transaction() as conn:
            async with conn.execute("SELECT artifact_key FROM outputs WHERE job_id = ?", (job_id,)) as cur:
                found = [r[0] for r in await cur.fetchall()]
            await conn.execute("DELETE FROM outputs WHERE job_id = ?", (job_id,))
        return found
