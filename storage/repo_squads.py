"""Queries on the squad tables (migration 0007): squad requests, their members' answers, invitation settings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from storage.repo_core import RepositoryCore
from storage.rows import row_to, utcnow

SquadStatus = Literal["pending", "queued", "declined", "expired", "cancelled"]
Answer = Literal["pending", "approved", "declined"]


@dataclass(frozen=True)
class Squad:
    id: int
    requester_id: int
    guild_id: int
    channel_id: int
    prompt: str
    kit: str
    style: str | None
    status: SquadStatus
    job_id: int | None
    created_at: str
    expires_at: float


@dataclass(frozen=True)
class SquadMember:
    squad_id: int
    user_id: int
    position: int  # 0 = the requester; then the order named (= the faces' reading order)
    answer: Answer
    token: str
    concept_id: int | None
    answered_at: str | None


class SquadQueries(RepositoryCore):
    async def create_squad(self, *, requester_id: int, guild_id: int, channel_id: int, prompt: str, kit: str,
                           style: str | None, expires_at: float, members: Sequence[tuple[int, str]],
                           requester_concept_id: int) -> Squad:
        """One squad with its members (``(user id, button token)`` in order, the requester first, approved)."""
        now = utcnow()
        async with self.transaction() as conn:
            cur = await conn.execute(
                "INSERT INTO squads (requester_id, guild_id, channel_id, prompt, kit, style, created_at, expires_at)"
                " VALUES (?,?,?,?,?,?,?,?)", (requester_id, guild_id, channel_id, prompt, kit, style, now, expires_at))
            sid = cur.lastrowid
            for pos, (uid, token) in enumerate(members):
                first = pos == 0
                await conn.execute(
                    "INSERT INTO squad_members (squad_id, user_id, position, answer, token, concept_id, answered_at)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (sid, uid, pos, "approved" if first else "pending", token,
                     requester_concept_id if first else None, now if first else None))
        squad = await self.get_squad(int(sid or 0))
        assert squad is not None
        return squad

    async def get_squad(self, squad_id: int) -> Squad | None:
        return row_to(Squad, await self._one("SELECT * FROM squads WHERE id = ?", (squad_id,)))

    async def squad_of_job(self, job_id: int) -> Squad | None:
        return row_to(Squad, await self._one("SELECT * FROM squads WHERE job_id = ?", (job_id,)))

    async def squad_members(self, squad_id: int) -> list[SquadMember]:
        rows = await self._all("SELECT * FROM squad_members WHERE squad_id = ? ORDER BY position", (squad_id,))
        return [m for m in (row_to(SquadMember, r) for r in rows) if m is not None]

    async def answer_squad(self, squad_id: int, user_id: int, token: str, answer: Answer,
                           concept_id: int | None = None) -> bool:
        """Record a pending member's answer, only with their own token and while the squad is pending; False
        when nothing matched (a forged or stale button)."""
        async with self.transaction() as conn:
            cur = await conn.execute(
                "UPDATE squad_members SET answer = ?, concept_id = ?, answered_at = ? WHERE squad_id = ? AND"
                " user_id = ? AND token = ? AND answer = 'pending' AND squad_id IN"
                " (SELECT id FROM squads WHERE status = 'pending')",
                (answer, concept_id, utcnow(), squad_id, user_id, token))
            return cur.rowcount == 1

    async def set_squad_status(self, squad_id: int, status: SquadStatus, *, job_id: int | None = None,
                               only_from: SquadStatus = "pending") -> bool:
        """Move a squad out of ``only_from`` (one winner when a sweep and a button race); False if it had moved."""
        async with self.transaction() as conn:
            cur = await conn.execute(
                "UPDATE squads SET status = ?, job_id = COALESCE(?, job_id) WHERE id = ? AND status = ?",
                (status, job_id, squad_id, only_from))
            return cur.rowcount == 1

    async def due_squads(self, now: float) -> list[Squad]:
        rows = await self._all("SELECT * FROM squads WHERE status = 'pending' AND expires_at <= ?", (now,))
        return [s for s in (row_to(Squad, r) for r in rows) if s is not None]

    async def squads_with(self, user_id: int) -> list[Squad]:
        """Every squad ``user_id`` is in (as requester or member)."""
        rows = await self._all("SELECT s.* FROM squads s JOIN squad_members m ON m.squad_id = s.id"
                               " WHERE m.user_id = ? ORDER BY s.id", (user_id,))
        return [s for s in (row_to(Squad, r) for r in rows) if s is not None]

    async def record_squad_message(self, squad_id: int, channel_id: int, message_id: int) -> None:
        await self._write("INSERT OR IGNORE INTO squad_messages (squad_id, channel_id, message_id) VALUES (?,?,?)",
                          (squad_id, channel_id, message_id))

    async def squad_messages(self, squad_id: int) -> list[tuple[int, int]]:
        rows = await self._all("SELECT channel_id, message_id FROM squad_messages WHERE squad_id = ?", (squad_id,))
        return [(int(r[0]), int(r[1])) for r in rows]

    async def delete_squad(self, squad_id: int) -> None:
        await self._write("DELETE FROM squads WHERE id = ?", (squad_id,))

    # --- invitation settings ------------------------------------------------------------------------
    async def squad_invitations_on(self, user_id: int) -> bool:
        row = await self._one("SELECT invitations FROM squad_prefs WHERE user_id = ?", (user_id,))
        return row is None or bool(row[0])

    async def set_squad_invitations(self, user_id: int, on: bool) -> None:
        await self._write("INSERT INTO squad_prefs (user_id, invitations) VALUES (?, ?) ON CONFLICT (user_id)"
                          " DO UPDATE SET invitations = excluded.invitations", (user_id, int(on)))

    async def set_squad_block(self, user_id: int, blocked_id: int, blocked: bool) -> None:
        if blocked:
            await self._write("INSERT OR IGNORE INTO squad_blocks (user_id, blocked_id) VALUES (?, ?)",
                              (user_id, blocked_id))
        else:
            await self._write("DELETE FROM squad_blocks WHERE user_id = ? AND blocked_id = ?", (user_id, blocked_id))

    async def squad_blocked_ids(self, user_id: int) -> list[int]:
        rows = await self._all("SELECT blocked_id FROM squad_blocks WHERE user_id = ? ORDER BY blocked_id",
                               (user_id,))
        return [int(r[0]) for r in rows]

    async def blocks_squad(self, user_id: int, requester_id: int) -> bool:
        return await self._one("SELECT 1 FROM squad_blocks WHERE user_id = ? AND blocked_id = ?",
                               (user_id, requester_id)) is not None

    async def forget_squad_settings(self, user_id: int) -> int:
        """A member's invitation settings and every block naming them, either way; rows deleted."""
        async with self.transaction() as conn:
            n = 0
            for sql in ("DELETE FROM squad_prefs WHERE user_id = ?",
                        "DELETE FROM squad_blocks WHERE user_id = ? OR blocked_id = ?"):
                cur = await conn.execute(sql, (user_id,) * sql.count("?"))
                n += cur.rowcount
            return n

    async def delete_job_records(self, job_id: int) -> list[tuple[int, int]]:
        """Delete a job row (its outputs by cascade) and its message records; the (channel, message) ids of
        those records (a squad image a member asked to forget: the job belongs to the requester)."""
        async with self.transaction() as conn:
            async with conn.execute("SELECT channel_id, message_id FROM messages WHERE job_id = ?", (job_id,)) as c:
                found = [(int(r[0]), int(r[1])) for r in await c.fetchall()]
            await conn.execute("DELETE FROM messages WHERE job_id = ?", (job_id,))
            await conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return found
