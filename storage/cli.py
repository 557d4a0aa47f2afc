"""``kitbooth migrate``. Torch-free."""

from __future__ import annotations

import argparse
import asyncio


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("migrate", help="create or upgrade the SQLite database")
    p.add_argument("--db", help="database file (default: KITBOOTH_DATABASE_PATH or <data_dir>/kitbooth.db)")
    p.set_defaults(func=_migrate)


def _migrate(args: argparse.Namespace, settings) -> int:
    from storage.db import connect

    path = args.db or settings.db_path

    async def run() -> int:
        conn = await connect(path)
        try:
            async with conn.execute("PRAGMA user_version") as cur:
                return (await cur.fetchone())[0]
        finally:
            await conn.close()

    version = asyncio.run(run())
    print(f"{path}: schema version {version}")
    return 0
