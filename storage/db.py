"""SQLite access: one aiosqlite connection in WAL mode with foreign keys on, and numbered migrations.

Migrations are ``storage/migrations/NNNN_name.sql``; ``PRAGMA user_version`` records the last one applied.
Each migration runs in its own transaction together with the version bump, so a failing migration leaves
the database at the previous version. A migration that rebuilds a table (SQLite cannot alter a CHECK constraint)
starts with ``-- kitbooth: foreign_keys off``: it then runs with foreign keys off — else dropping the old table
would cascade to its children — and ``PRAGMA foreign_key_check`` must find nothing before it commits (SQLite's
documented procedure, https://sqlite.org/lang_altertable.html#otheralter).
"""

from __future__ import annotations

import logging
import re
import sqlite3
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import aiosqlite

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
FOREIGN_KEYS_OFF = "-- kitbooth: foreign_keys off"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("storage.migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..N without gaps, found {versions}")
    return found


def _statements(sql: str) -> list[str]:
    """Split a script into statements with SQLite's own tokenizer (comments and strings may hold ';')."""
    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()):
        raise ValueError(f"incomplete SQL statement at the end of a migration: {buf.strip()[:80]!r}")
    return out


async def migrate(conn: aiosqlite.Connection) -> int:
    """Apply pending migrations; return the resulting schema version. Idempotent."""
    migrations = load_migrations()
    async with conn.execute("PRAGMA user_version") as cur:
        (current,) = await cur.fetchone()
    for mig in migrations:
        if mig.version <= current:
            continue
        log.info("applying migration %s", mig.name)
        fk_off = mig.sql.startswith(FOREIGN_KEYS_OFF)
        if fk_off:  # only outside a transaction does this pragma take effect
            await conn.execute("PRAGMA foreign_keys = OFF")
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _statements(mig.sql):
                await conn.execute(stmt)
            if fk_off:
                async with conn.execute("PRAGMA foreign_key_check") as cur:
                    if await cur.fetchall():
                        raise RuntimeError(f"migration {mig.name} left rows pointing at nothing")
            await conn.execute(f"PRAGMA user_version = {mig.version}")
            await conn.commit()
        except Exception:
            await conn.rollback()
            raise
        finally:
            if fk_off:
                await conn.execute("PRAGMA foreign_keys = ON")
        current = mig.version
    return current


async def checkpoint(conn: aiosqlite.Connection) -> tuple[int, int, int]:
    """``PRAGMA wal_checkpoint(TRUNCATE)``: copy the WAL into the database and truncate the -wal file to zero
    bytes (it holds page images from before a delete). Returns SQLite's (busy, log pages, checkpointed)."""
    async with conn.execute("PRAGMA wal_checkpoint(TRUNCATE)") as cur:
        row = await cur.fetchone()
    return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)


async def connect(path: str | Path, *, apply_migrations: bool = True) -> aiosqlite.Connection:
    """Open the database with the project's pragmas (and migrate it)."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: we manage transactions explicitly (BEGIN ... COMMIT).
    conn = await aiosqlite.connect(str(path), isolation_level=None, timeout=30)
    conn.row_factory = aiosqlite.Row
    # Each pragma's cursor is consumed and closed: journal_mode returns a row, and a cursor left open keeps a
    # statement "in progress", which made the first migration's BEGIN fail on a fresh database.
    # secure_delete: deleted rows are overwritten with zeros, so a forgotten user's data is not readable in the
    # file's free pages (``checkpoint`` then empties the WAL, which holds the old page images).
    for pragma in ("journal_mode = WAL", "foreign_keys = ON", "busy_timeout = 30000", "synchronous = NORMAL",
                   "secure_delete = ON"):
        async with conn.execute(f"PRAGMA {pragma}") as cur:
            await cur.fetchall()
    if apply_migrations:
        try:
            await migrate(conn)
        except BaseException:
            await conn.close()  # aiosqlite's thread would otherwise keep the process alive
            raise
    return conn
