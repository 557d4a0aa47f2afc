"""Queries on the ``messages`` table: the Discord messages that show a user's face, images or prompt."""

from __future__ import annotations

from storage.repo_core import RepositoryCore
from storage.rows import Message, row_to, utcnow


class MessageQueries(RepositoryCore):
    async def record_message(self, *, user_id: int, channel_id: int, message_id: int, kind: str,
                             job_id: int | None = None, guild_id: int | None = None) -> None:
        """Remember a posted message (idempotent: an event re-read after a crash records it once)."""
        if not (channel_id and message_id):
            return
        await self._write(
            "INSERT OR IGNORE INTO messages (channel_id, message_id, user_id, job_id, kind, guild_id, created_at)"
            " VALUES (?,?,?,?,?,?,?)",
            (int(channel_id), int(message_id), int(user_id), job_id, kind, guild_id, utcnow()),
        )

    async def list_messages(self, user_id: int) -> list[Message]:
        rows = await self._all("SELECT * FROM messages WHERE user_id = ? ORDER BY created_at", (user_id,))
        return [m for m in (row_to(Message, r) for r in rows) if m is not None]

    async def forget_message(self, channel_id: int, message_id: int) -> None:
        await self._write("DELETE FROM messages WHERE channel_id = ? AND message_id = ?", (channel_id, message_id))
