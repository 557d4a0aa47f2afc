"""Subcommands contributed to ``kitbooth`` (see kitbooth/cli.py): ``bot``, ``up`` and ``doctor``. Torch-free.

``kitbooth up`` is the no-Docker path: it migrates the database, then runs the bot and one worker as two child
processes and forwards SIGINT/SIGTERM to them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from kitbooth.errors import UserFacingError
from kitbooth.settings import redacted_dsn, redis_unreachable
from storage import LocalArtifactStore

log = logging.getLogger(__name__)

NO_TOKEN = """\
No Discord bot token is set.

To get one:
  1. Open https://discord.com/developers/applications and click "New Application".
  2. In "Bot", click "Reset Token" and copy the token (it is shown once).
  3. Put it in a file named .env next to where you run kitbooth:
       KITBOOTH_DISCORD_TOKEN=<your token>
     (or export KITBOOTH_DISCORD_TOKEN in the environment).
  4. Invite the bot: "OAuth2" → "URL Generator", scopes "bot" and "applications.commands",
     permissions "Send Messages", "Attach Files", "Embed Links"; open the URL.
Then run `kitbooth bot` again.
"""


def _token(settings) -> str | None:
    tok = settings.discord_token
    value = tok.get_secret_value().strip() if tok is not None else ""
    return value or None


# --- kitbooth bot ------------------------------------------------------------------------------------
def _bot(args: argparse.Namespace, settings) -> int:
    token = _token(settings)
    if token is None:
        print(NO_TOKEN, file=sys.stderr)
        return 2
    if args.dev_guild:
        settings = settings.model_copy(update={"dev_guild_id": args.dev_guild})
    # discord.py and the bot: the bot's install only — ``kitbooth`` loads this module in the worker's too.
    import aiohttp
    import discord

    from bot.app import create_bot

    bot = create_bot(settings)
    log.info("starting KitBooth bot (db %s, redis %s)", settings.db_path, redacted_dsn(settings.redis_url))
    try:
        bot.run(token, log_handler=None)  # logging is configured by kitbooth.cli.main
    except discord.LoginFailure:
        raise UserFacingError("Discord refused the bot token: reset it in the developer portal (Bot → Reset Token) "
                              "and update KITBOOTH_DISCORD_TOKEN.") from None
    except RedisConnectionError:
        raise UserFacingError(redis_unreachable(settings.redis_url)) from None
    except aiohttp.ClientConnectorError as exc:
        raise UserFacingError(f"Cannot reach Discord ({exc.host}): check this machine's network.") from None
    return 0


# --- kitbooth up -------------------------------------------------------------------------------------
def _migrate(settings) -> int:
    # aiosqlite: the bot's install only (``kitbooth`` loads this module in the worker's install too).
    from storage.db import connect

    async def run() -> int:
        conn = await connect(settings.db_path)
        try:
            async with conn.execute("PRAGMA user_version") as cur:
                return (await cur.fetchone())[0]
        finally:
            await conn.close()

    return asyncio.run(run())


def _up(args: argparse.Namespace, settings) -> int:
    if _token(settings) is None:
        print(NO_TOKEN, file=sys.stderr)
        return 2
    version = _migrate(settings)
    print(f"database {settings.db_path}: schema version {version}")
    base = [sys.executable, "-m", "kitbooth.cli"] + (["-v"] if args.verbose else [])
    commands = {"bot": base + ["bot"], "worker": base + ["worker"]}
    if args.no_worker:
        commands.pop("worker")
    children: dict[str, subprocess.Popen] = {}
    for name, cmd in commands.items():
        children[name] = subprocess.Popen(cmd, env=os.environ.copy())
        print(f"started {name} (pid {children[name].pid})")

    stopping = {"signal": None}  # set only when the operator stops us (Ctrl-C, SIGTERM)

    def on_signal(signum, _frame):
        stopping["signal"] = signum
        forward(signum)

    def forward(signum):
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = 0
        while True:
            for name, child in children.items():
                rc = child.poll()
                if rc is not None:
                    if stopping["signal"] is None:
                        print(f"{name} exited with status {rc}; stopping the rest", file=sys.stderr)
                        code = rc or 1
                        forward(signal.SIGTERM)
                    break
            else:
                time.sleep(0.2)
                continue
            break
        deadline = time.monotonic() + 20
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        return code if stopping["signal"] is None else 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# --- kitbooth doctor ---------------------------------------------------------------------------------
def _check_redis(settings) -> tuple[bool, str]:
    r = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        r.ping()
        return True, f"{redacted_dsn(settings.redis_url)} answers PING"
    except Exception as exc:  # any connection failure is the answer
        return False, f"{redacted_dsn(settings.redis_url)}: {type(exc).__name__}: {exc}"
    finally:
        r.close()


def _check_db(settings) -> tuple[bool, str]:
    try:
        return True, f"{settings.db_path}: schema version {_migrate(settings)}"
    except Exception as exc:
        return False, f"{settings.db_path}: {type(exc).__name__}: {exc}"


def _check_store(settings) -> tuple[bool, str]:
    try:
        store = LocalArtifactStore(settings.artifacts_path)
        key = f"doctor/check-{os.getpid()}.txt"
        store.put_bytes(key, b"ok")
        ok = store.get_bytes(key) == b"ok"
        store.delete(key)
        return ok, f"{settings.artifacts_path} is writable"
    except Exception as exc:
        return False, f"{settings.artifacts_path}: {type(exc).__name__}: {exc}"


def _check_token(settings) -> tuple[bool, str]:
    return (True, "KITBOOTH_DISCORD_TOKEN is set") if _token(settings) else (
        False, "KITBOOTH_DISCORD_TOKEN is not set — run `kitbooth bot` for how to get one")


def _check_torch(settings) -> tuple[bool, str]:
    code = ("import torch; c = torch.cuda.is_available(); "
            "print(torch.__version__, 'CUDA ' + torch.cuda.get_device_name(0) if c else 'CPU only')")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return False, "importing torch timed out"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return False, f"torch not importable (install the worker extra): {last}"
    return True, "torch " + out.stdout.strip()


def _check_model(settings) -> tuple[bool, str]:
    model = settings.base_model
    path = Path(model).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "model_index.json").exists():
            return False, f"{path} has no model_index.json (not a diffusers folder)"
        return True, f"local: {path}"
    code = ("import sys; from huggingface_hub import snapshot_download; "
            "print(snapshot_download(sys.argv[1], local_files_only=True, allow_patterns=['model_index.json']))")
    try:
        out = subprocess.run([sys.executable, "-c", code, model], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        out = None
    if out is not None and out.returncode == 0:
        return True, f"{model}: in the local Hugging Face cache"
    if settings.offline:
        return False, f"{model}: not cached and KITBOOTH_OFFLINE is set"
    return False, f"{model}: not cached yet — the worker downloads it on first start (~4 GB)"


CHECKS = [
    ("Redis reachable", _check_redis),
    ("Database migrates", _check_db),
    ("Artifact store writable", _check_store),
    ("Discord token set", _check_token),
    ("torch / CUDA", _check_torch),
    ("Base model", _check_model),
]


def run_doctor(settings, *, skip: set[str] = frozenset(), out=None) -> int:
    out = out or sys.stdout
    rows = []
    for name, check in CHECKS:
        if name in skip:
            continue
        try:
            ok, detail = check(settings)
        except Exception as exc:  # a check that crashes is a failed check
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        rows.append((ok, name, detail))
    width = max(len(n) for _, n, _ in rows)
    for ok, name, detail in rows:
        print(f"{'✅' if ok else '❌'} {name.ljust(width)}  {detail}", file=out)
    failed = sum(1 for ok, _, _ in rows if not ok)
    print(f"\n{len(rows) - failed}/{len(rows)} checks passed.", file=out)
    return 0 if failed == 0 else 1


def _doctor(args: argparse.Namespace, settings) -> int:
    skip = set()
    if args.no_torch:
        skip |= {"torch / CUDA", "Base model"}
    return run_doctor(settings, skip=skip)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bot", help="run the Discord bot")
    p.add_argument("--dev-guild", type=int, help="also sync the commands to this guild (instant)")
    p.set_defaults(func=_bot)

    p = sub.add_parser("up", help="migrate, then run the bot and one GPU worker (no Docker)")
    p.add_argument("--no-worker", action="store_true", help="run only the bot (workers run elsewhere)")
    p.set_defaults(func=_up)

    p = sub.add_parser("doctor", help="check Redis, the database, the store, the token, torch and the model")
    p.add_argument("--no-torch", action="store_true", help="skip the torch and base model checks")
    p.set_defaults(func=_doctor)
