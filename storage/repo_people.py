"""Queries on the ``users`` and ``concepts`` tables (a concept's trigger tokens and content hash included)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from storage.db import checkpoint
from storage.repo_core import RepositoryCore
from storage.rows import Concept, ConceptKind, ConceptStatus, User, row_to, utcnow


class PeopleQueries(RepositoryCore):
    # --- users -------------------------------------------------------------------------------
    async def ensure_user(self, user_id: int) -> User:
        await self._write(
            "INSERT INTO users (id, created_at) VALUES (?, ?) ON CONFLICT(id) DO NOTHING", (user_id, utcnow())
        )
        user = await self.get_user(user_id)
        assert user is not None
        return user

    async def get_user(self, user_id: int) -> User | None:
        return row_to(User, await self._one("SELECT * FROM users WHERE id = ?", (user_id,)))

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
            await conn.execute("DELETE FROM messages WHERE user_id = ?", (user_id,))
        # secure_delete zeroed the freed pages; the WAL still holds their old images until a checkpoint.
        async with self._lock:
            await checkpoint(self.conn)
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
        return row_to(Concept, await self._one("SELECT * FROM concepts WHERE id = ?", (concept_id,)))

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
        return [row_to(Concept, r) for r in await self._all(sql, params)]  # type: ignore[misc]

    async def ready_face(self, owner_id: int) -> Concept | None:
        """The owner's newest ready face concept (the only face they may generate with)."""
        row = await self._one(
            "SELECT * FROM concepts WHERE owner_id = ? AND kind = 'face' AND status = 'ready'"
            " ORDER BY id DESC LIMIT 1", (owner_id,),
        )
        return row_to(Concept, row)

    async def delete_concept(self, concept_id: int) -> bool:
        async with self.transaction() as conn:
            cur = await conn.execute("DELETE FROM concepts WHERE id = ?", (concept_id,))
            return cur.rowcount > 0

    async def set_concept_sha256(self, concept_id: int, sha256: str | None) -> None:
        await self._write("UPDATE concepts SET sha256 = ?, updated_at = ? WHERE id = ?",
                          (sha256, utcnow(), concept_id))

    async def concept_sha256(self, concept_id: int) -> str | None:
        row = await self._one("SELECT sha256 FROM concepts WHERE id = ?", (concept_id,))
        return row[0] if row else None

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
