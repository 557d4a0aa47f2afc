"""Backup then restore round-trips a database with rows, taken while the bot's connection is open and writing
(WAL mode), plus the store's manifest; restore refuses damage and a database that holds data unless forced."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3

import pytest

from storage import LocalArtifactStore, StorageError, keys
from storage.backup import MANIFEST, backup, read_manifest, restore
from storage.database import Database


async def _fill(db: Database, store) -> None:
    for uid in (1, 2):
        await db.ensure_user(uid)
        await db.record_consent(uid)
        concept = await db.create_concept(owner_id=uid, guild_id=9, kind="face", name=f"me{uid}", method="pivotal",
                                          trigger_tokens=[f"<kb{uid}>"], status="ready",
                                          artifact_key=keys.concept_key(uid, uid), size_bytes=4)
        store.put_bytes(keys.concept_key(uid, concept.id), b"face" * uid)
        await db.create_job(kind="generate", user_id=uid, guild_id=9, payload={"prompt": "in the kit"})
    await db.add_kit(guild_id=9, name="home", description="home shirt")


async def _rows(path) -> dict:
    db = await Database.open(path)
    try:
        return {"users": [u for u in (1, 2) if await db.get_user(u) is not None],
                "concepts": [c.name for c in await db.list_concepts(owner_id=1)],
                "kit": (await db.get_kit(9, "home")).description,
                "job": (await db.get_job(1)).payload}
    finally:
        await db.close()


async def test_backup_while_open_then_restore_round_trips(tmp_path):
    live, store = tmp_path / "live" / "kitbooth.db", LocalArtifactStore(tmp_path / "artifacts")
    db = await Database.open(live)
    try:
        await _fill(db, store)
        assert (tmp_path / "live" / "kitbooth.db-wal").exists()  # the rows sit in the WAL, not yet in the file

        async def keep_writing():  # the bot keeps writing during the backup
            for uid in range(100, 160):
                await db.ensure_user(uid)

        report, _ = await asyncio.gather(asyncio.to_thread(backup, live, store, tmp_path / "bk"), keep_writing())
    finally:
        await db.close()
    assert report.objects == 2 and report.object_bytes == 4 + 8 and report.schema_version >= 1
    manifest = json.loads((tmp_path / "bk" / MANIFEST).read_text())
    for entry in manifest["objects"]:
        assert entry["sha256"] == hashlib.sha256(store.get_bytes(entry["key"])).hexdigest()
    assert not (tmp_path / "bk" / "kitbooth.db-wal").exists()  # one self-contained file

    result = restore(tmp_path / "bk", tmp_path / "new" / "kitbooth.db", store=store, verify="sha256")
    assert result.missing == [] and result.objects_verified == 2
    rows = await _rows(tmp_path / "new" / "kitbooth.db")
    assert rows == {"users": [1, 2], "concepts": ["me1"], "kit": "home shirt", "job": {"prompt": "in the kit"}}
    # A consistent snapshot: the users written meanwhile are a prefix of the sequence, never a torn write.
    later = [u for u in await _user_ids(tmp_path / "new" / "kitbooth.db") if u >= 100]
    assert later == list(range(100, 100 + len(later)))


async def test_restore_refuses_a_database_with_data_unless_forced(tmp_path):
    src, store = tmp_path / "a.db", LocalArtifactStore(tmp_path / "artifacts")
    db = await Database.open(src)
    await _fill(db, store)
    await db.close()
    backup(src, store, tmp_path / "bk")
    target = tmp_path / "b.db"
    other = await Database.open(target)
    await other.ensure_user(77)
    await other.close()
    with pytest.raises(StorageError, match="already holds a database"):
        restore(tmp_path / "bk", target)
    assert (await _user_ids(target)) == [77]  # untouched
    # A stale WAL beside the target would be replayed onto the restored file: force removes it.
    (tmp_path / "b.db-wal").write_bytes(b"stale")
    restore(tmp_path / "bk", target, force=True)
    assert not (tmp_path / "b.db-wal").exists()
    assert (await _user_ids(target)) == [1, 2]


async def _user_ids(path) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM users ORDER BY id")]
    finally:
        conn.close()


async def test_objects_copied_into_the_backup_come_back(tmp_path):
    src, store = tmp_path / "a.db", LocalArtifactStore(tmp_path / "artifacts")
    db = await Database.open(src)
    await _fill(db, store)
    await db.close()
    report = backup(src, store, tmp_path / "bk", copy_objects=True)
    assert report.copied_objects
    fresh = LocalArtifactStore(tmp_path / "fresh")
    result = restore(tmp_path / "bk", tmp_path / "b.db", store=fresh, verify="sha256")
    assert result.objects_restored == 2 and result.missing == []
    assert fresh.list("") == store.list("")


async def test_restore_reports_objects_the_store_lost(tmp_path):
    src, store = tmp_path / "a.db", LocalArtifactStore(tmp_path / "artifacts")
    db = await Database.open(src)
    await _fill(db, store)
    await db.close()
    backup(src, store, tmp_path / "bk")
    lost = keys.concept_key(2, 2)
    store.delete(lost)
    store.put_bytes(keys.concept_key(1, 1), b"FACE")  # same size, other bytes: only sha256 sees it
    assert restore(tmp_path / "bk", tmp_path / "b.db", store=store).missing == [lost]
    result = restore(tmp_path / "bk", tmp_path / "b.db", store=store, force=True, verify="sha256")
    assert result.missing == sorted([keys.concept_key(1, 1), lost])


async def test_damaged_or_unfinished_backups_are_refused(tmp_path):
    src = tmp_path / "a.db"
    db = await Database.open(src)
    await db.ensure_user(1)
    await db.close()
    backup(src, None, tmp_path / "bk")
    with pytest.raises(StorageError, match="already holds a backup"):
        backup(src, None, tmp_path / "bk")
    copy = tmp_path / "bk" / "kitbooth.db"
    data = copy.read_bytes()  # flip bits (secure_delete leaves free pages zeroed: zeros could change nothing)
    copy.write_bytes(data[:-100] + bytes(b ^ 0xFF for b in data[-100:]))
    with pytest.raises(StorageError, match="does not match its manifest"):
        restore(tmp_path / "bk", tmp_path / "b.db")
    assert not (tmp_path / "b.db").exists()
    (tmp_path / "bk" / MANIFEST).unlink()
    with pytest.raises(StorageError, match="unfinished"):
        read_manifest(tmp_path / "bk")
    with pytest.raises(StorageError, match="no database"):
        backup(tmp_path / "missing.db", None, tmp_path / "bk2")


async def test_backup_lists_an_s3_store(s3_store, tmp_path):
    src = tmp_path / "a.db"
    db = await Database.open(src)
    await _fill(db, s3_store)
    await db.close()
    report = backup(src, s3_store, tmp_path / "bk", copy_objects=True)
    assert report.objects == 2
    again = restore(tmp_path / "bk", tmp_path / "b.db", store=s3_store, verify="sha256")
    assert again.missing == [] and again.objects_restored == 0  # already there: nothing re-uploaded
