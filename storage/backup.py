"""Online backup and restore: the SQLite database plus a manifest of the artifact store. Standard library only.

``backup`` copies the database with sqlite3's backup API, which reads one consistent snapshot while the bot keeps
writing (WAL mode: readers do not block the writer), and writes ``manifest.json`` (key, size, sha256 of every
object in the store; optionally a copy of each object under ``objects/``). The manifest is written last, so a
folder without one is an unfinished backup and ``restore`` refuses it.

``restore`` checks the database copy against the manifest and SQLite's integrity check, refuses to replace a
database that holds data unless forced (stop the bot first), removes the old WAL files (they would be replayed
onto the restored file), puts copied objects back and verifies the store against the manifest. The schema is
upgraded by the normal start-up migrations.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from storage.artifacts import ArtifactStore, LocalArtifactStore, validate_key
from storage.errors import ArtifactNotFound, StorageError

MANIFEST = "manifest.json"
DB_FILE = "kitbooth.db"
OBJECTS_DIR = "objects"
FORMAT = 1
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BackupReport:
    dest: Path
    db_bytes: int
    schema_version: int
    objects: int
    object_bytes: int
    copied_objects: bool


@dataclass(frozen=True)
class RestoreReport:
    db_path: Path
    schema_version: int
    objects_restored: int = 0
    objects_verified: int = 0
    missing: list[str] = field(default_factory=list)  # listed in the manifest but absent or different in the store


def backup(db_path: str | os.PathLike[str], store: ArtifactStore | None, dest_dir: str | os.PathLike[str], *,
           copy_objects: bool = False) -> BackupReport:
    """Back up the database at ``db_path`` (it may be open and written meanwhile) and list ``store``'s objects."""
    src_path, dest = Path(db_path), Path(dest_dir)
    if not src_path.is_file():
        raise StorageError(f"no database at {src_path}: check KITBOOTH_DATABASE_PATH / KITBOOTH_DATA_DIR.")
    if (dest / MANIFEST).exists():
        raise StorageError(f"{dest} already holds a backup: choose an empty folder.")
    dest.mkdir(parents=True, exist_ok=True)
    db_copy = dest / DB_FILE
    version = _snapshot(src_path, db_copy)
    objects = []
    if store is not None:
        mirror = LocalArtifactStore(dest / OBJECTS_DIR) if copy_objects else None
        for key in store.list(""):
            size, digest = _hash_object(store, key, mirror)
            objects.append({"key": key, "size": size, "sha256": digest})
    manifest = {
        "format": FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "database": {"file": DB_FILE, "size": db_copy.stat().st_size, "sha256": _sha256_file(db_copy),
                     "schema_version": version},
        "store": repr(store) if store is not None else None,
        "objects_copied": bool(copy_objects and store is not None),
        "objects": objects,
    }
    _write_atomic(dest / MANIFEST, json.dumps(manifest, indent=1).encode())
    return BackupReport(dest, manifest["database"]["size"], version, len(objects),
                        sum(o["size"] for o in objects), manifest["objects_copied"])


def restore(src_dir: str | os.PathLike[str], db_path: str | os.PathLike[str], *, store: ArtifactStore | None = None,
            force: bool = False, verify: Literal["none", "size", "sha256"] = "size") -> RestoreReport:
    """Restore the backup in ``src_dir`` to ``db_path``; with ``store``, put copied objects back and check that
    every object in the manifest is there (``verify``: by size, by sha256, or not at all)."""
    src, target = Path(src_dir), Path(db_path)
    manifest = read_manifest(src)
    db_copy = src / manifest["database"]["file"]
    if not db_copy.is_file() or _sha256_file(db_copy) != manifest["database"]["sha256"]:
        raise StorageError(f"the database copy in {src} does not match its manifest: the backup is damaged.")
    version = _integrity(db_copy)
    if _holds_data(target) and not force:
        raise StorageError(f"{target} already holds a database: stop the bot and pass force=True "
                           "(`--force`) to replace it, or restore to another path.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _copy_beside(db_copy, target)
    try:
        for stale in (Path(f"{target}-wal"), Path(f"{target}-shm"), Path(f"{target}-journal")):
            stale.unlink(missing_ok=True)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    if store is None:
        return RestoreReport(target, version)
    restored = 0
    mirror = LocalArtifactStore(src / OBJECTS_DIR) if manifest.get("objects_copied") else None
    if mirror is not None:
        for entry in manifest["objects"]:
            if not _matches(store, entry, "size"):
                store.put_file(entry["key"], mirror.root / validate_key(entry["key"]))
                restored += 1
    missing = [] if verify == "none" else [e["key"] for e in manifest["objects"] if not _matches(store, e, verify)]
    checked = 0 if verify == "none" else len(manifest["objects"]) - len(missing)
    return RestoreReport(target, version, restored, checked, missing)


def read_manifest(src_dir: str | os.PathLike[str]) -> dict:
    path = Path(src_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise StorageError(f"no {MANIFEST} in {src_dir}: not a KitBooth backup, or an unfinished one.") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise StorageError(f"{path} is not valid JSON: the backup is damaged.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StorageError(f"{path} has format {manifest.get('format') if isinstance(manifest, dict) else '?'}; "
                           f"this KitBooth reads format {FORMAT}.")
    return manifest


# --- helpers -------------------------------------------------------------------------------------------
def _snapshot(src_path: Path, dest: Path) -> int:
    """Copy one consistent snapshot of the live database into a self-contained file (no WAL beside it)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{src_path}?mode=ro", uri=True, timeout=30)
    try:
        out = sqlite3.connect(tmp)
        try:
            src.backup(out)  # one step: a read snapshot, so concurrent writers neither block nor tear it
            out.execute("PRAGMA journal_mode = DELETE")
            (version,) = out.execute("PRAGMA user_version").fetchone()
            out.commit()
        finally:
            out.close()
    finally:
        src.close()
    _integrity(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dest)
    return int(version)


def _integrity(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (result,) = conn.execute("PRAGMA integrity_check").fetchone()
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"{path} is not a readable SQLite database ({exc}): the backup is damaged.") from None
    finally:
        conn.close()
    if result != "ok":
        raise StorageError(f"{path} fails SQLite's integrity check ({result}): the backup is damaged.")
    return int(version)


def _holds_data(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _hash_object(store: ArtifactStore, key: str, mirror: LocalArtifactStore | None) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    chunks = _read_chunks(store, key)
    if mirror is None:
        for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
    else:
        def tee() -> Iterator[bytes]:
            nonlocal size
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                yield chunk

        mirror.write_stream(key, tee())
    return size, digest.hexdigest()


def _read_chunks(store: ArtifactStore, key: str) -> Iterator[bytes]:
    with store.open(key) as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _matches(store: ArtifactStore, entry: dict, verify: str) -> bool:
    try:
        if store.size(entry["key"]) != entry["size"]:
            return False
        if verify == "sha256":
            digest = hashlib.sha256()
            for chunk in _read_chunks(store, entry["key"]):
                digest.update(chunk)
            return digest.hexdigest() == entry["sha256"]
    except ArtifactNotFound:
        return False
    return True


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_beside(src: Path, target: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
        shutil.copyfileobj(f, out, _CHUNK)
        out.flush()
        os.fsync(out.fileno())
    return Path(name)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
