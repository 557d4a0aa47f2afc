"""The ``kitbooth`` command. Each package contributes subcommands from a torch-free ``cli`` module.

A contributing module defines ``register(subparsers)`` that adds its subcommands and sets
``func=<callable(args, settings) -> int>`` on each parser. Only the module of the subcommand being run is
imported (``COMMANDS`` lists the rest by name), so each process runs from its own install: ``kitbooth worker``
never imports ``bot/`` (no aiosqlite in ``.[worker]``), ``kitbooth bot`` never imports the trainers (no torch
in ``.[bot]``). A subcommand whose extra is not installed says which one to install.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NamedTuple

from kitbooth import __version__
from kitbooth.errors import UserFacingError
from kitbooth.log_redaction import install_log_redaction
from kitbooth.settings import load_settings


class Command(NamedTuple):
    module: str  # registers the subcommand
    extra: str  # the install extra it needs
    help: str  # shown by `kitbooth --help` without importing the module (a test keeps it equal to the module's)


COMMANDS: dict[str, Command] = {
    "migrate": Command("storage.cli", "bot", "create or upgrade the SQLite database"),
    "make-tiny-model": Command("training.cli", "worker", "build the tiny offline SD-1.5-shaped test model into DIR"),
    "train": Command("training.cli_train", "worker",
                     "learn a face, kit or style from a folder of photos into one concept file"),
    "generate": Command("training.cli_tools", "worker", "generate images with one or more concept files"),
    "inspect": Command("training.cli_tools", "worker", "show a concept file's metadata, size and compatibility"),
    "convert": Command("training.cli_tools", "worker", "export a concept file as diffusers, A1111 or kohya files"),
    "import": Command("training.cli_import", "worker",
                      "turn a community LoRA or embedding into a KitBooth kit or style concept file"),
    "hypernetwork": Command("training.hypernetwork_cli", "worker",
                            "inspect, convert or train AUTOMATIC1111-compatible hypernetworks (.pt / .safetensors)"),
    "eval": Command("training.cli_tools", "worker",
                    "measure a concept: identity vs held-out photos, CLIP-T, size, time"),
    "compare": Command("training.compare_cli", "worker",
                       "train every method on the same photos; compare size, time, memory, identity with and "
                       "without a kit, CLIP-T"),
    "worker": Command("gpu_worker.cli", "worker", "run the GPU worker (training and generation jobs from Redis)"),
    "bot": Command("bot.cli", "bot", "run the Discord bot"),
    "up": Command("bot.cli", "bot,worker", "run the bot and one worker per GPU, with a private Redis when needed (no Docker)"),
    "doctor": Command("bot.doctor_cli", "bot",
                      "check the set-up, then scan the database, store and Redis for orphans (--fix repairs them)"),
    "backup": Command("kitbooth.backup_cli", "bot",
                      "back up the database (online) and a manifest of the store into DIR"),
    "restore": Command("kitbooth.backup_cli", "bot",
                       "restore the database (and copied objects) from a backup in DIR"),
    "health": Command("kitbooth.health_cli", "bot,worker",
                      "check Redis, the store, the database and the workers' heartbeats (exit 0/1)"),
    "bench": Command("benchmarks.cli", "worker,dev",
                     "speed figures: ratios against baselines measured in the same run, sizes, GPU figures"),
}
OWN_PACKAGES = {"kitbooth", "bot", "gpu_worker", "training", "storage", "benchmarks"}


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not an option), if it is one of ours."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def build_parser(argv: Sequence[str] = (), *, load: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: the chosen subcommand's module is imported and registers its full parser;
    every other subcommand is a placeholder that carries its help. ``load`` names modules to register anyway
    (the tests load them all)."""
    parser = argparse.ArgumentParser(
        prog="kitbooth",
        description="KitBooth: teach Stable Diffusion 1.5 a fan's face, then draw them in their club's kit.",
    )
    parser.add_argument("--version", action="version", version=f"kitbooth {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _chosen(argv)
    modules = list(dict.fromkeys([*(load or ()), *([COMMANDS[chosen].module] if chosen else [])]))
    for name in modules:
        importlib.import_module(name).register(sub)
    for name, cmd in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=cmd.help, description=cmd.help)
    return parser


def _missing_extra(command: str, exc: ModuleNotFoundError) -> str | None:
    """One line for a subcommand whose extra is not installed (None: the error is a bug, not the install)."""
    top = (exc.name or "").split(".")[0]
    if not top or top in OWN_PACKAGES:
        return None
    extra = COMMANDS[command].extra
    return (f"kitbooth {command}: this install lacks {top!r}; install the {extra} extra: "
            f"pip install 'kitbooth[{extra}]'")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _chosen(argv)
    try:
        parser = build_parser(argv)
    except ModuleNotFoundError as exc:
        if command is None or (line := _missing_extra(command, exc)) is None:
            raise
        print(line, file=sys.stderr)
        return 1
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
    except ModuleNotFoundError as exc:  # a heavy import inside the command, from an extra not installed
        if (line := _missing_extra(args.command, exc)) is None:
            raise
        print(line, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
