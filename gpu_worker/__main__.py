"""``python -m gpu_worker``: run the GPU worker with settings from the environment (``KITBOOTH_*``)."""

from __future__ import annotations

import logging
import sys


def main() -> int:
    from kitbooth.settings import load_settings

    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from gpu_worker.worker import run_worker

    return run_worker(settings)


if __name__ == "__main__":
    sys.exit(main())
