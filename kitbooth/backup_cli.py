"""``kitbooth backup DIR`` / ``kitbooth restore DIR``: the online SQLite backup plus a manifest of the artifact
store (storage/backup.py), from the bot's host. Upgrades need nothing more: migrations run at start.

Every ``StorageError`` (no database, a damaged or unfinished backup, a database that would be overwritten, an
unreachable store) is one line, exit 1.
"""

from __future__ import annotations

import argparse

from kitbooth.errors import StorageError, UserFacingError
from kitbooth.settings import Settings
from storage import open_store
from storage.backup import backup, restore


def _backup(args: argparse.Namespace, settings: Settings) -> int:
    try:
        store = None if args.no_store else open_store(settings)
        r = backup(args.db or settings.db_path, store, args.dir, copy_objects=args.copy_objects)
    except StorageError as exc:
        raise UserFacingError(str(exc)) from None
    copied = ", copied" if r.copied_objects else ""
    print(f"backup {r.dest}: database {r.db_bytes} bytes (schema {r.schema_version}), "
          f"{r.objects} objects listed ({r.object_bytes} bytes{copied})")
    return 0


def _restore(args: argparse.Namespace, settings: Settings) -> int:
    try:
        store = None if args.no_store else open_store(settings)
        r = restore(args.dir, args.db or settings.db_path, store=store, force=args.force, verify=args.verify)
    except StorageError as exc:
        raise UserFacingError(str(exc)) from None
    print(f"restored {r.db_path} (schema {r.schema_version}); objects: {r.objects_restored} put back, "
          f"{r.objects_verified} verified, {len(r.missing)} missing")
    for key in r.missing[:20]:
        print(f"  missing: {key}")
    return 1 if r.missing else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backup", help="back up the database (online) and a manifest of the store into DIR")
    p.add_argument("dir", metavar="DIR", help="an empty or new folder")
    p.add_argument("--db", help="database file (default: KITBOOTH_DATABASE_PATH or <data_dir>/kitbooth.db)")
    p.add_argument("--copy-objects", action="store_true", help="also copy every stored object into DIR/objects")
    p.add_argument("--no-store", action="store_true", help="the database only, no store manifest")
    p.set_defaults(func=_backup)

    p = sub.add_parser("restore", help="restore the database (and copied objects) from a backup in DIR")
    p.add_argument("dir", metavar="DIR", help="a folder written by `kitbooth backup`")
    p.add_argument("--db", help="database file to write (default: KITBOOTH_DATABASE_PATH or <data_dir>/kitbooth.db)")
    p.add_argument("--force", action="store_true", help="replace a database that holds data (stop the bot first)")
    p.add_argument("--verify", choices=["none", "size", "sha256"], default="size",
                   help="check the store against the manifest (default: size)")
    p.add_argument("--no-store", action="store_true", help="the database only, do not touch the store")
    p.set_defaults(func=_restore)
