"""Queries on the ``kits`` (kit and style catalogue) and ``guild_settings`` tables."""

from __future__ import annotations

import json
from typing import Any, Literal

from storage.repo_core import RepositoryCore
from storage.rows import GuildSettings, Kit, escape_like, row_to, utcnow


class CatalogueQueries(RepositoryCore):
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
        return row_to(Kit, kit)  # type: ignore[return-value]

    async def get_kit(self, guild_id: int, name: str, kind: Literal["kit", "style"] = "kit") -> Kit | None:
        row = await self._one(
            "SELECT * FROM kits WHERE guild_id = ? AND kind = ? AND name = ? COLLATE NOCASE",
            (guild_id, kind, name),
        )
        return row_to(Kit, row)

    async def list_kits(
        self, guild_id: int, kind: Literal["kit", "style"] = "kit", *, search: str = "", limit: int = 1000
    ) -> list[Kit]:
        rows = await self._all(
            "SELECT * FROM kits WHERE guild_id = ? AND kind = ? AND name LIKE ? ESCAPE '\\'"
            " ORDER BY name COLLATE NOCASE LIMIT ?",
            (guild_id, kind, "%" + escape_like(search) + "%", limit),
        )
        return [row_to(Kit, r) for r in rows]  # type: ignore[misc]

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

    # --- guild settings ----------------------------------------------------------------------
    async def guild_settings(self, guild_id: int) -> GuildSettings:
        """The guild's settings (a row with the defaults is created the first time: a read, not a write, after)."""
        row = await self._one("SELECT * FROM guild_settings WHERE guild_id = ?", (guild_id,))
        if row is None:
            await self._write(
                "INSERT INTO guild_settings (guild_id) VALUES (?) ON CONFLICT(guild_id) DO NOTHING", (guild_id,)
            )
            row = await self._one("SELECT * FROM guild_settings WHERE guild_id = ?", (guild_id,))
        return row_to(GuildSettings, row)  # type: ignore[return-value]

    async def update_guild_settings(self, guild_id: int, **changes: Any) -> GuildSettings:
        allowed = {"daily_quota", "train_role_ids", "nsfw_policy", "catalogue_seeded_at", "best_of",
                   "allow_dreambooth"}
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

    # --- /forget: the catalogue stays with the server -------------------------------------------
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
