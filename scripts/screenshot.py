"""Regenerate docs/screenshot.png and docs/screenshot-forget.png: what a member sees in Discord.

Runs ``tests/bot/test_screenshot.py`` (a member's /generate, the real worker on the tiny model posting the result
through SimCord, SimCord's channel preview captured by headless chromium, then /forget's confirmation) with its
output pointed at ``docs/``. Needs chromium (``apt-get install chromium``) and SimCord's preview runtime
(``pip install 'simcord[preview]'``), plus Redis as for the tests.

    . .venv/bin/activate && python scripts/screenshot.py [REDIS_URL]     # default: redis://127.0.0.1:6379/15

Exits with pytest's status; a skip (chromium or the preview runtime missing) exits 1 and says which.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        print("chromium is not installed: apt-get install -y chromium", file=sys.stderr)
        return 1
    env = {**os.environ, "KITBOOTH_SCREENSHOT_DIR": str(ROOT / "docs"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    if argv:
        env["KITBOOTH_TEST_REDIS_URL"] = argv[0]
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "tests/bot/test_screenshot.py"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    print(done.stdout[-3000:], done.stderr[-2000:], sep="\n")
    if done.returncode == 0 and "skipped" in done.stdout:
        return 1
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
