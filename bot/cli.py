"""Subcommands contributed to ``kitbooth`` (see kitbooth/cli.py): ``bot``, ``up`` and ``doctor``. Torch-free.

``kitbooth up`` is the no-Docker path: it migrates the database, starts a private redis-server when the
configured local Redis does not answer (kitbooth/local_redis.py), then runs the bot and one worker per visible GPU
(or one CPU worker) as child processes and forwards SIGINT/SIGTERM to them; the private Redis stops last.
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

from kitbooth.errors import StorageError, UserFacingError
from kitbooth.local_redis import PrivateRedis, answers
from kitbooth.settings import redacted_dsn, redis_unreachable
from storage import open_store

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
    except StorageError as exc:  # the store is probed at start: a missing bucket, refused keys, no answer
        raise UserFacingError(str(exc)) from None
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


def _gpu_count(settings) -> int:
    """Visible CUDA devices (CUDA_VISIBLE_DEVICES honoured), asked of torch in a child: this module is torch-free."""
    if settings.device == "cpu":
        return 0
    code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return 0
    return int(out.stdout.strip() or 0) if out.returncode == 0 else 0


def _worker_envs(settings) -> list[dict[str, str]]:
    """One environment per worker: one per visible GPU (pinned with CUDA_VISIBLE_DEVICES), else one CPU worker.
    Health and metrics ports are offset so the processes do not collide (the bot keeps the configured one)."""
    n = _gpu_count(settings)
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    envs = []
    for i in range(max(n, 1)):
        env = os.environ.copy()
        if n:
            env["CUDA_VISIBLE_DEVICES"] = visible[i] if i < len(visible) else str(i)
            env["KITBOOTH_DEVICE"] = "cuda"
        if settings.health_port:
            env["KITBOOTH_HEALTH_PORT"] = str(settings.health_port + 1 + i)
        if settings.metrics_port:
            env["KITBOOTH_METRICS_PORT"] = str(settings.metrics_port + i)
        envs.append(env)
    return envs


def _ensure_redis(settings) -> PrivateRedis | None:
    if answers(settings.redis_url):
        return None
    private = PrivateRedis.start(settings.redis_url, settings.data_dir)
    print(f"started a private redis-server on {redacted_dsn(settings.redis_url)} (append-only, {private.folder})")
    return private


def _up(args: argparse.Namespace, settings) -> int:
    if not args.no_bot and _token(settings) is None:
        print(NO_TOKEN, file=sys.stderr)
        print("(Or run only the workers with `kitbooth up --no-bot`.)", file=sys.stderr)
        return 2
    private = _ensure_redis(settings)
    try:
        return _run_children(args, settings)
    finally:
        if private is not None:
            private.stop()
            print("stopped the private redis-server (queued jobs are kept for the next start)")


def _run_children(args: argparse.Namespace, settings) -> int:
    base = [sys.executable, "-m", "kitbooth.cli"] + (["-v"] if args.verbose else [])
    commands: dict[str, tuple[list[str], dict[str, str]]] = {}
    if not args.no_bot:
        print(f"database {settings.db_path}: schema version {_migrate(settings)}")
        commands["bot"] = (base + ["bot"], os.environ.copy())
    if not args.no_worker:
        envs = _worker_envs(settings)
        for i, env in enumerate(envs):
            commands[f"worker{i if len(envs) > 1 else ''}"] = (base + ["worker"], env)
    if not commands:
        raise UserFacingError("--no-bot and --no-worker leave nothing to run.")
    children: dict[str, subprocess.Popen] = {}
    for name, (cmd, env) in commands.items():
        children[name] = subprocess.Popen(cmd, env=env)
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
        # a worker finishes (checkpoints) its running slice on SIGINT/SIGTERM: give it the job timeout
        deadline = time.monotonic() + max(20.0, settings.job_timeout_s)
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if stopping["signal"] is not None:
            print("stopped: " + ", ".join(f"{n} ({c.returncode})" for n, c in children.items()))
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
        store = open_store(settings)  # local folder or S3, probed
        key = f"doctor/check-{os.getpid()}.txt"
        store.put_bytes(key, b"ok")
        ok = store.get_bytes(key) == b"ok"
        store.delete(key)
        return ok, f"{settings.store_url or settings.artifacts_path} is writable"
    except Exception as exc:
        return False, f"{settings.store_url or settings.artifacts_path}: {type(exc).__name__}: {exc}"


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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bot", help="run the Discord bot")
    p.add_argument("--dev-guild", type=int, help="also sync the commands to this guild (instant)")
    p.set_defaults(func=_bot)

    p = sub.add_parser("up", help="run the bot and one worker per GPU, with a private Redis when needed (no Docker)")
    p.add_argument("--no-worker", action="store_true", help="run only the bot (workers run elsewhere)")
    p.add_argument("--no-bot", action="store_true", help="run only the workers (the bot runs elsewhere)")
    p.set_defaults(func=_up)
    # `kitbooth doctor` is registered by bot.doctor_cli: these set-up checks, then the consistency scan.
