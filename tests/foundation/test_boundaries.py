"""DESIGN.md's process boundaries, each checked in a fresh interpreter by scripts/import_all.py.

The worker's install (``.[worker]``) has no aiosqlite and needs no bot; the bot's (``.[bot]``) has no torch.
scripts/test also installs each process in its own venv; these tests catch a wrong import sooner, in one venv.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMPORT_ALL = ROOT / "scripts" / "import_all.py"
HEAVY = "torch,diffusers,transformers,peft,accelerate"
BOT_ONLY = "aiosqlite,discord.ext.commands"
DATABASE = "storage.database,storage.db,storage.repo*"  # the bot-only database modules


def import_all(*args: str) -> dict:
    res = subprocess.run([sys.executable, str(IMPORT_ALL), "--json", *args], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert res.stdout.strip(), res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert not report["errors"], "\n".join(f"{m}:\n{tb}" for m, tb in report["errors"].items())
    assert res.returncode == 0 or report["forbidden_loaded"], res.stderr
    return report


def modules_after(code: str, argv: list[str] = ()) -> set[str]:
    """``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))"
    res = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return set(json.loads(res.stdout.strip().splitlines()[-1]))


def test_every_worker_and_training_module_loads_no_bot_only_package():
    report = import_all("gpu_worker", "training", "--forbid", BOT_ONLY)
    assert {"gpu_worker.worker", "gpu_worker.jobs", "training.pivotal", "training.compose"} <= set(report["imported"])
    assert report["forbidden_loaded"] == []


def test_every_bot_and_storage_module_loads_no_torch():
    report = import_all("bot", "storage", "--forbid", HEAVY)
    assert {"bot.app", "bot.cogs", "storage.database", "storage.repository"} <= set(report["imported"])
    assert report["forbidden_loaded"] == []


def test_the_selfie_checks_the_bot_imports_load_no_torch():
    loaded = modules_after("import training, training.faces, training.images")
    assert not {m.split(".")[0] for m in loaded} & set(HEAVY.split(","))


def test_storage_without_its_database_loads_no_aiosqlite():
    """What the worker imports of storage: everything but the database modules."""
    report = import_all("storage", "--skip", DATABASE, "--forbid", "aiosqlite")
    assert {"storage.artifacts", "storage.keys", "storage.errors"} <= set(report["imported"])
    assert report["forbidden_loaded"] == []


def test_import_storage_loads_no_aiosqlite():
    assert "aiosqlite" not in modules_after("import storage")


@pytest.mark.parametrize("module", ["gpu_worker.contract", "kitbooth.errors", "kitbooth.limits"])
def test_stdlib_only(module):
    """The contract is imported by the bot; errors and limits by everything, pydantic-free consumers included."""
    report = import_all(module, "--stdlib-only", "kitbooth,gpu_worker")
    assert report["forbidden_loaded"] == [], f"{module} loads {report['forbidden_loaded']}"


@pytest.mark.parametrize("argv", [[], ["bot", "--help"], ["migrate", "--help"], ["doctor", "--help"]])
def test_cli_parser_for_bot_commands_loads_no_torch(argv):
    loaded = modules_after("import sys, kitbooth.cli; kitbooth.cli.build_parser(sys.argv[1:])", argv)
    assert not {m.split(".")[0] for m in loaded} & set(HEAVY.split(","))


@pytest.mark.parametrize("argv", [["worker", "--help"], ["make-tiny-model", "--help"], ["train", "--help"]])
def test_cli_parser_for_worker_commands_loads_no_bot_code(argv):
    loaded = modules_after("import sys, kitbooth.cli; kitbooth.cli.build_parser(sys.argv[1:])", argv)
    assert not {m for m in loaded if m.split(".")[0] in ("bot", "aiosqlite")}


def test_cli_table_matches_what_each_module_registers():
    """``kitbooth --help`` lists subcommands from kitbooth.cli.COMMANDS without importing their modules."""
    import argparse

    from kitbooth import cli

    parser = cli.build_parser(load=sorted({c.module for c in cli.COMMANDS.values()}))
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    registered = {a.dest: a.help for a in sub._choices_actions}
    assert registered == {name: c.help for name, c in cli.COMMANDS.items()}


def test_create_bot_is_exported_by_the_bot_package():
    res = subprocess.run([sys.executable, "-c", "from bot import create_bot; import bot.app as a; "
                                                "assert create_bot is a.create_bot"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 0, res.stderr


def test_the_probe_sees_a_forbidden_module_and_a_non_stdlib_one():
    """So the boundary tests above can fail: torch is seen under training.loop, pydantic under settings."""
    assert import_all("training.loop", "--forbid", "torch,aiosqlite")["forbidden_loaded"] == ["torch"]
    assert "pydantic" in import_all("kitbooth.settings", "--stdlib-only", "kitbooth")["forbidden_loaded"]
