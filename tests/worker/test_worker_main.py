"""``python -m gpu_worker`` keeps tokens out of its logs: the bot token and interaction tokens (which every
payload carries) are redacted by the filter its entry point installs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BOT_TOKEN = "MTA5ODc2NTQzMjEwOTg3NjU0Mw.GabCdE.abcdefghijklmnopqrstuvwxyz0123456789AB"
INTERACTION_TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5OmFiY2RlZg"

# Runs the real main(); only the blocking worker is replaced, by a function that logs both secrets the way
# a failing job would (its payload in the message, the bot token in an exception).
SCRIPT = f"""
import logging, sys
import gpu_worker.__main__ as entry

def fake_run(settings):
    log = logging.getLogger("gpu_worker.jobs")
    log.warning("payload target token=%s", {INTERACTION_TOKEN!r})
    try:
        raise RuntimeError("login failed for " + settings.discord_token.get_secret_value())
    except RuntimeError:
        log.exception("startup failed")
    return 0

entry.run_worker = fake_run
sys.exit(entry.main())
"""


def test_python_m_gpu_worker_installs_log_redaction(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KITBOOTH_")}
    env.update({"PYTHONPATH": str(ROOT), "KITBOOTH_DISCORD_TOKEN": BOT_TOKEN, "KITBOOTH_DATA_DIR": str(tmp_path)})
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "payload target token=[interaction-token]" in res.stderr and "login failed for [token]" in res.stderr
    assert BOT_TOKEN not in res.stderr and INTERACTION_TOKEN not in res.stderr
