"""The ``kitbooth`` command. Each package contributes subcommands from a torch-free ``cli`` module.

A contributing module defines ``register(subparsers)`` that adds its subcommands and sets
``func=<callable(args, settings) -> int>`` on each parser. Heavy imports happen inside those callables, so
``kitbooth --help`` stays fast and torch-free.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from kitbooth import __version__
from kitbooth.errors import UserFacingError
from kitbooth.log_redaction import install_log_redaction
from kitbooth.settings import load_settings

# Modules that contribute subcommands; a later package adds its own line here.
COMMAND_MODULES = [
    "storage.cli",  # migrate
    "training.cli",  # make-tiny-model
    "training.cli_train",  # train
    "training.cli_tools",  # generate, inspect, convert, eval
    "gpu_worker.cli",  # worker
    "bot.cli",  # bot, up, doctor
    "benchmarks.cli",  # bench
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kitbooth",
        description="KitBooth: teach Stable Diffusion 1.5 a fan's face, then draw them in their club's kit.",
    )
    parser.add_argument("--version", action="version", version=f"kitbooth {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    settings = load_settings()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_log_redaction(settings.discord_token)  # every process: bot, worker, CLI tools
    try:
        return int(args.func(args, settings) or 0)
    except UserFacingError as exc:  # a problem the operator can fix: one clear line, no traceback
        logging.getLogger("kitbooth").debug("details", exc_info=True)
        print(f"kitbooth {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
