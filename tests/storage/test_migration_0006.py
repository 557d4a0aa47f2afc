"""Migration 0006 rebuilds ``concepts`` (a wider method CHECK) on a database with data: every row, id, reference
and the AUTOINCREMENT sequence survive, the cascades still work, and ``allow_dreambooth`` defaults to off."""

from __future__ import annotations

import sqlite3

import aiosqlite
import pytest

from storage import db as dbmod

NOW = "2026-12-01T00:00:00Z"


async def _rows(conn, sql: str) -> list[tuple]:
    async with conn.execute(sql) as cur:
        return [tuple(r) for r in await cur.fetchall()]


async def test_concepts_rebuilt_with_data_kept(tmp_path, monkeypatch):
    every = dbmod.load_migrations()
    assert every[5].name == "0006_allow_dreambooth.sql"
    monkeypatch.setattr(dbmod, "load_migrations", lambda: every[:5])
    conn = await dbmod.connect(tmp_path / "k.db")  # at version 5, with data
    w = conn.execute
    await w("INSERT INTO users (id, created_at) VALUES (1, ?)", (NOW,))
    for cid, kind, method in ((1, "face", "pivotal"), (2, "kit", "lora"), (3, "kit", "imported")):
        await w("INSERT INTO concepts (id, owner_id, guild_id, kind, name, method, status, created_at, updated_at,"
                " sha256) VALUES (?, 1, 5, ?, 'c', ?, 'ready', ?, ?, 'ab')", (cid, kind, method, NOW, NOW))
    await w("INSERT INTO face_references VALUES (1, 1, x'00', 4, ?)", (NOW,))
    await w("INSERT INTO kits (guild_id, kind, name, description, concept_id, created_at) VALUES (5, 'kit', 'k', 'd',"
            " 2, ?)", (NOW,))
    await w("INSERT INTO jobs (kind, user_id, concept_id, created_at, updated_at) VALUES ('train', 1, 2, ?, ?)",
            (NOW, NOW))
    await w("DELETE FROM concepts WHERE id = 3")  # the sequence is at 3 now: a new concept must not reuse 3
    before = await _rows(conn, "SELECT * FROM concepts ORDER BY id")
    await conn.close()

    monkeypatch.setattr(dbmod, "load_migrations", lambda: every)
    conn = await dbmod.connect(tmp_path / "k.db")
    assert await _rows(conn, "PRAGMA user_version") == [(len(every),)]
    assert await _rows(conn, "SELECT * FROM concepts ORDER BY id") == before
    assert await _rows(conn, "PRAGMA foreign_keys") == [(1,)] and await _rows(conn, "PRAGMA foreign_key_check") == []
    assert await _rows(conn, "SELECT allow_dreambooth FROM guild_settings") == []
    await conn.execute("INSERT INTO concepts (owner_id, kind, name, method, created_at, updated_at) VALUES "
                       "(1, 'face', 'h', 'hypernetwork', ?, ?)", (NOW, NOW))
    assert (await _rows(conn, "SELECT max(id) FROM concepts"))[0][0] == 4
    with pytest.raises(sqlite3.IntegrityError):
        await conn.execute("INSERT INTO concepts (kind, name, method, created_at, updated_at) VALUES "
                           "('kit', 'x', 'wizardry', ?, ?)", (NOW, NOW))
    # The children still point at concepts: cascades and SET NULL as before.
    await conn.execute("DELETE FROM concepts WHERE id IN (1, 2)")
    assert await _rows(conn, "SELECT count(*) FROM face_references") == [(0,)]
    assert await _rows(conn, "SELECT concept_id FROM kits") == [(None,)]
    assert await _rows(conn, "SELECT concept_id FROM jobs") == [(None,)]
    await conn.execute("INSERT INTO guild_settings (guild_id) VALUES (5)")
    assert await _rows(conn, "SELECT allow_dreambooth FROM guild_settings") == [(0,)]
    await conn.close()


async def test_a_rebuild_that_breaks_references_is_rolled_back(tmp_path, monkeypatch):
    every = dbmod.load_migrations()
    bad = dbmod.Migration(len(every) + 1, "9999_bad.sql", dbmod.FOREIGN_KEYS_OFF + "\nDROP TABLE users;")
    conn = await aiosqlite.connect(str(tmp_path / "k.db"), isolation_level=None)
    await dbmod.migrate(conn)
    await conn.execute("PRAGMA foreign_keys = ON")
    await conn.execute("INSERT INTO users (id, created_at) VALUES (1, ?)", (NOW,))
    await conn.execute("INSERT INTO concepts (owner_id, kind, name, method, created_at, updated_at) VALUES "
                       "(1, 'face', 'h', 'ti', ?, ?)", (NOW, NOW))
    monkeypatch.setattr(dbmod, "load_migrations", lambda: [*every, bad])
    with pytest.raises(RuntimeError, match="pointing at nothing"):
        await dbmod.migrate(conn)
    assert await _rows(conn, "PRAGMA user_version") == [(len(every),)]
    assert await _rows(conn, "SELECT id FROM users") == [(1,)] and await _rows(conn, "PRAGMA foreign_keys") == [(1,)]
    await conn.close()
