"""`kitbooth worker` started wrongly says what to fix in one line, without a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def _worker(tmp_path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "KITBOOTH_DATA_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-m", "kitbooth.cli", "worker"], capture_output=True, text=True,
                          env=full, cwd=tmp_path, timeout=120)


def test_unreachable_base_model(tmp_path, redis_url):
    res = _worker(tmp_path, KITBOOTH_REDIS_URL=redis_url, KITBOOTH_QUEUE_NAME="kb:test:cli:queue",
                  KITBOOTH_BASE_MODEL="stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("kitbooth worker: Base model")
    assert "KITBOOTH_BASE_MODEL" in res.stderr


def test_unreachable_redis(tmp_path, tiny_model_dir):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = _worker(tmp_path, KITBOOTH_REDIS_URL=f"redis://:hunter2@127.0.0.1:{port}/0",
                  KITBOOTH_BASE_MODEL=str(tiny_model_dir))
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("kitbooth worker: Cannot reach Redis at redis://***@127.0.0.1") and "hunter2" not in res.stderr
