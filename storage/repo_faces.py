"""Queries on ``face_references`` (a face concept's mean selfie descriptor) and ``lookalike_allowances``.

The descriptor is biometric data: it is stored as the opaque 1024 bytes of ``training.rerank.encode_reference``,
read only by the bot's own checks, never exported and never logged. Rows go with their concept and their user.
"""

from __future__ import annotations

from storage.repo_core import RepositoryCore
from storage.rows import utcnow


class FaceQueries(RepositoryCore):
    async def save_face_reference(self, concept_id: int, user_id: int, descriptor: bytes, photo_count: int) -> None:
        await self._write(
            "INSERT INTO face_references (concept_id, user_id, descriptor, photo_count, created_at)"
            " VALUES (?,?,?,?,?) ON CONFLICT(concept_id) DO UPDATE SET descriptor = excluded.descriptor,"
            " photo_count = excluded.photo_count",
            (concept_id, user_id, descriptor, photo_count, utcnow()),
        )

    async def face_reference(self, concept_id: int) -> bytes | None:
        row = await self._one("SELECT descriptor FROM face_references WHERE concept_id = ?", (concept_id,))
        return bytes(row[0]) if row else None

    async def other_face_references(self, user_id: int) -> list[tuple[int, bytes]]:
        """(owner id, descriptor) of every other user's face that is not a failed training, on any server."""
        rows = await self._all(
            "SELECT r.user_id, r.descriptor FROM face_references r JOIN concepts c ON c.id = r.concept_id"
            " WHERE r.user_id != ? AND c.status != 'failed'", (user_id,),
        )
        return [(int(r[0]), bytes(r[1])) for r in rows]

    async def allow_lookalike(self, guild_id: int, user_a: int, user_b: int, *, by: int | None = None) -> None:
        a, b = sorted((int(user_a), int(user_b)))
        await self.ensure_user(a)  # type: ignore[attr-defined]
        await self.ensure_user(b)  # type: ignore[attr-defined]
        await self._write(
            "INSERT INTO lookalike_allowances (guild_id, user_a, user_b, created_by, created_at) VALUES (?,?,?,?,?)"
            " ON CONFLICT DO NOTHING", (guild_id, a, b, by, utcnow()),
        )

    async def lookalikes_allowed(self, guild_id: int | None, user_id: int) -> set[int]:
        """The members this user may look like, by an allowance of this server's admins."""
        if guild_id is None:
            return set()
        rows = await self._all(
            "SELECT user_a, user_b FROM lookalike_allowances WHERE guild_id = ? AND (user_a = ? OR user_b = ?)",
            (guild_id, user_id, user_id),
        )
        return {int(b if a == user_id else a) for a, b in rows}
