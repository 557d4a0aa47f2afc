"""``kitbooth doctor [--fix]``: the set-up checks (``bot.cli``'s table), then the consistency scan of the database,
the store and Redis (``bot.doctor``): one line per finding, exit 1 when any; ``--fix`` repairs each one
(logged) and exits 0 when every repair worked. ``--scan-only`` skips the set-up table (the reliability suites run
it after each scenario)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from typing import TextIO

from arq import create_pool
from arq.connections import RedisSettings
from redis.exceptions import RedisError

from bot.cli import run_doctor
from bot.doctor import repair, scan
from kitbooth.errors import UserFacingError
from kitbooth.settings import Settings, redis_unreachable
from storage import open_store
from storage.database import Database

HELP = "check the set-up, then scan the database, store and Redis for orphans (--fix repairs them)"


async def consistency(settings: Settings, *, fix: bool = False, grace_s: float | None = None,
                      out: TextIO | None = None) -> int:
    """Scan (and with ``fix`` repair); print one line per finding; 0 when consistent (or all repaired)."""
    out = out or sys.stdout
    if not settings.db_path.exists():
        raise UserFacingError(f"{settings.db_path} does not exist: run `kitbooth migrate` first")
    store = await asyncio.to_thread(open_store, settings)
    try:  # one try: the set-up table above already says whether Redis answers
        redis = await create_pool(dataclasses.replace(RedisSettings.from_dsn(settings.redis_url), conn_retries=0),
                                  default_queue_name=settings.queue_name)
    except (OSError, RedisError) as exc:
        raise UserFacingError(redis_unreachable(settings.redis_url)) from exc
    db = await Database.open(settings.db_path)
    try:
        kw = {} if grace_s is None else {"grace_s": grace_s}
        findings = await scan(db, store, redis, settings, **kw)
        for f in findings:
            print(f"❌ {f.line()}", file=out)
        if not findings:
            print("✅ consistent: no orphaned row, file or queued job", file=out)
            return 0
        if not fix:
            print(f"\n{len(findings)} finding(s); run `kitbooth doctor --fix` to repair them.", file=out)
            return 1
        done, failed = await repair(findings)
        for line in done:
            print(f"🔧 fixed {line}", file=out)
        for line in failed:
            print(f"❌ could not fix {line}", file=out)
        print(f"\n{len(done)}/{len(findings)} finding(s) repaired.", file=out)
        return 0 if not failed else 1
    finally:
        await db.close()
        await redis.aclose()


def _doctor(args: argparse.Namespace, settings: Settings) -> int:
    code = 0
    if not args.scan_only:
        skip = {"torch / CUDA", "Base model"} if args.no_torch else set()
        code = run_doctor(settings, skip=skip)
        print()
    return max(code, asyncio.run(consistency(settings, fix=args.fix, grace_s=args.grace)))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help=HELP, description=HELP)
    p.add_argument("--no-torch", action="store_true", help="skip the torch and base model checks")
    p.add_argument("--fix", action="store_true", help="repair every finding (each repair is logged)")
    p.add_argument("--scan-only", action="store_true", help="skip the set-up checks; only scan for orphans")
    p.add_argument("--grace", type=float, default=None, metavar="SECONDS",
                   help="leave rows and files younger than this alone (default 120: work being set up)")
    p.set_defaults(func=_doctor)
