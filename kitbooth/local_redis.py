"""A private ``redis-server`` for ``kitbooth up`` on one machine (no Docker): started only when
``KITBOOTH_REDIS_URL`` does not answer and points at this machine, with append-only persistence under the data
folder, so queued jobs survive a restart. Standard library + redis-py only.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import redis

from kitbooth.errors import UserFacingError
from kitbooth.settings import redacted_dsn

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}
INSTALL = ("install it (Debian/Ubuntu: `sudo apt install redis-server`; macOS: `brew install redis`; "
           "or `docker run -d -p 6379:6379 redis:7-alpine --appendonly yes`)")


def answers(url: str, timeout: float = 2.0) -> bool:
    r = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(r.ping())
    except redis.RedisError:
        return False
    finally:
        r.close()


def local_port(url: str) -> int | None:
    """The port of a ``redis://`` URL on this machine (None: a remote host, TLS or a socket path)."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or (parts.hostname or "") not in LOCAL_HOSTS:
        return None
    return parts.port or 6379


class PrivateRedis:
    """``PrivateRedis.start(url, data_dir)`` -> a running redis-server on the URL's port; ``stop()`` it."""

    def __init__(self, proc: subprocess.Popen, url: str, folder: Path):
        self.proc, self.url, self.folder = proc, url, folder

    @classmethod
    def start(cls, url: str, data_dir: Path, timeout: float = 20.0) -> PrivateRedis:
        port = local_port(url)
        if port is None:
            raise UserFacingError(f"Cannot reach Redis at {redacted_dsn(url)}, and it is not on this machine: "
                                  "start it there, or set KITBOOTH_REDIS_URL.")
        exe = shutil.which("redis-server")
        if exe is None:
            raise UserFacingError(f"Redis at {redacted_dsn(url)} does not answer and redis-server is not installed: "
                                  f"{INSTALL}, then run `kitbooth up` again.")
        folder = (Path(data_dir) / "redis").resolve()
        folder.mkdir(parents=True, exist_ok=True)
        args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--appendonly", "yes",
                "--appendfsync", "everysec", "--save", "", "--logfile", str(folder / "redis.log")]
        password = urlsplit(url).password
        if password:
            args += ["--requirepass", password]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                start_new_session=True)  # Ctrl-C reaches us, and we stop it last
        deadline = time.monotonic() + timeout
        while not answers(url, 0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log = folder / "redis.log"
                last = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
                raise UserFacingError(f"redis-server did not start on port {port}: {' '.join(last) or 'no log'}")
            time.sleep(0.1)
        return cls(proc, url, folder)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM: redis-server flushes its append-only file, then exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
