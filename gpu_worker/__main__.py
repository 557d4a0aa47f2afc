"""``python -m gpu_worker``: run the GPU worker with settings from the environment (``KITBOOTH_*``)."""

from __future__ import annotations

import logging
import sys

from gpu_worker.worker import run_worker
from kitbooth.log_redaction import install_log_redaction
from kitbooth.settings import load_settings


def main() -> int:
    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_redaction(settings.discord_token)  # payloads carry interaction tokens; errors may print them
    return run_worker(settings)


if __name__ == "__main__":
    sys.exit(main())
