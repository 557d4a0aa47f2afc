from __future__ import annotations

import asyncio
import sqlite3

import aiosqlite
import pytest

from storage.database import Database
from storage.db import connect, load_migrations, migrate


async def _version(conn) -> int:
    async with conn.execute("PRAGMA user_version") as cur:
        return (await cur.fetchone())[0]


async def test_migrations_from_empty_and_reapplied(tmp_path):
    path = tmp_path / "k.db"
    conn = await connect(path)
    latest = len(load_migrations())
    assert await _version(conn) == latest
    async with conn.execute("SELECT name FROM sqlite_master WHERE type='table'") as cur:
        tables = {r[0] for r in await cur.fetchall()}
    assert {"users", "concepts", "kits", "jobs", "outputs", "guild_settings"} <= tables
    assert await migrate(conn) == latest  # idempotent
    await conn.close()
    conn = await connect(path)  # and again on a new start
    assert await _version(conn) == latest
    async with conn.execute("PRAGMA journal_mode") as cur:
        assert (await cur.fetchone())[0] == "wal"
    async with conn.execute("PRAGMA foreign_keys") as cur:
        assert (await cur.fetchone())[0] == 1
    await conn.close()


async def test_failed_migration_rolls_back(tmp_path, monkeypatch):
    from storage import db as dbmod

    good = load_migrations()
    bad = dbmod.Migration(len(good) + 1, "9999_bad.sql", "CREATE TABLE half (x INTEGER);\nINSERT INTO nope VALUES (1);")
    monkeypatch.setattr(dbmod, "load_migrations", lambda: [*good, bad])
    conn = await aiosqlite.connect(str(tmp_path / "k.db"), isolation_level=None)
    with pytest.raises(sqlite3.OperationalError):
        await migrate(conn)
    assert await _version(conn) == len(good)
    async with conn.execute("SELECT name FROM sqlite_master WHERE name='half'") as cur:
        assert await cur.fetchone() is None  # the half-applied migration left nothing
    await conn.close()


async def test_foreign_keys_enforced(db):
    with pytest.raises(sqlite3.IntegrityError):
        await db.create_job(kind="generate", user_id=424242)  # no such user
    with pytest.raises(sqlite3.IntegrityError):
        await db.create_concept(owner_id=999, guild_id=1, kind="face", name="me", method="pivotal")


async def test_delete_user_cascades(db):
    await db.ensure_user(1)
    await db.ensure_user(2)
    c = await db.create_concept(owner_id=1, guild_id=5, kind="face", name="me", method="pivotal")
    j = await db.create_job(kind="train", user_id=1, concept_id=c.id, payload={"a": 1})
    await db.add_output(job_id=j.id, user_id=1, artifact_key="users/1/outputs/1/0.png", seed=3)
    other = await db.create_job(kind="generate", user_id=2)
    counts = await db.delete_user(1)
    assert counts == {"concepts": 1, "jobs": 1, "outputs": 1, "users": 1}
    assert await db.get_user(1) is None
    assert await db.get_concept(c.id) is None
    assert await db.get_job(j.id) is None
    assert await db.list_outputs(user_id=1) == []
    assert (await db.get_job(other.id)) is not None


async def test_repository_roundtrip(db):
    user = await db.record_consent(7)
    assert user.consent_at is not None
    c = await db.create_concept(owner_id=7, guild_id=1, kind="face", name="me", method="pivotal",
                                trigger_tokens=["<a>", "<b>"])
    assert c.status == "pending" and c.trigger_tokens == ["<a>", "<b>"]
    assert await db.ready_face(7) is None
    c = await db.update_concept(c.id, status="ready", artifact_key="users/7/concepts/1.safetensors", size_bytes=10)
    assert (await db.ready_face(7)).id == c.id
    job = await db.create_job(kind="generate", user_id=7, guild_id=1, channel_id=2, payload={"prompt": "x"})
    job = await db.update_job(job.id, status="running", attempts=1)
    assert job.started_at is not None and job.payload == {"prompt": "x"}
    job = await db.update_job(job.id, status="done")
    assert job.finished_at is not None
    assert await db.active_jobs(7) == []
    kit = await db.add_kit(guild_id=1, name="Liverpool home", description="red shirt")
    assert (await db.get_kit(1, "liverpool HOME")).id == kit.id  # case-insensitive names
    with pytest.raises(sqlite3.IntegrityError):
        await db.add_kit(guild_id=1, name="LIVERPOOL HOME", description="dup")
    assert [k.name for k in await db.list_kits(1, search="pool")] == ["Liverpool home"]
    assert await db.list_kits(1, search="%") == []  # LIKE wildcards are literal
    gs = await db.update_guild_settings(1, daily_quota=3, train_role_ids=[5], nsfw_policy={"2": "block"})
    assert gs.daily_quota == 3 and gs.train_role_ids == [5] and gs.nsfw_policy == {"2": "block"}
    with pytest.raises(ValueError):
        await db.update_job(job.id, user_id=8)  # not updatable


async def test_concurrent_writers(tmp_path):
    """Two connections (as two processes would have) and many coroutines writing at once."""
    path = tmp_path / "k.db"
    a, b = await Database.open(path), await Database.open(path)
    await a.ensure_user(1)

    async def write(db: Database, n: int) -> None:
        for i in range(n):
            await db.create_job(kind="generate", user_id=1, payload={"i": i})

    await asyncio.gather(*(write(db, 25) for db in (a, b, a, b)))
    assert len(await a.list_jobs(user_id=1)) == 100

    async def txn(db: Database, i: int) -> None:
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO users (id, created_at) VALUES (?, 'now')", (1000 + i,))
            await asyncio.sleep(0)  # yield inside the transaction: others must not interleave
            await conn.execute("UPDATE users SET daily_quota = ? WHERE id = ?", (i, 1000 + i))

    await asyncio.gather(*(txn(a if i % 2 else b, i) for i in range(20)))
    rows = await a._all("SELECT id, daily_quota FROM users WHERE id >= 1000")
    assert sorted((r[0], r[1]) for r in rows) == [(1000 + i, i) for i in range(20)]
    await a.close()
    await b.close()
