"""The README's reference tables stay true: every slash command the bot registers (walked from the real command
tree after start-up), every ``kitbooth`` subcommand and every setting is listed, and nothing that does not
exist."""

from __future__ import annotations

import re

from kitbooth.cli import COMMANDS
from kitbooth.settings import Settings
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


async def test_every_registered_slash_command_is_in_the_commands_table(arena):
    table = _section("Discord commands")
    first_column = re.findall(r"^\| (.+?) \|", table, re.M)[1:]  # below the header (the rule has no space)
    commands = list(arena.bot.tree.walk_commands())
    groups = {c.name for c in commands if hasattr(c, "walk_commands")}
    registered = {c.qualified_name for c in commands if not hasattr(c, "walk_commands")}
    named: set[str] = set()
    for cell in first_column:  # `/group sub1/sub2 ...` or `/command param [param]`
        for root, subs in re.findall(r"`/([a-z-]+)(?: ([a-z-]+(?:/[a-z-]+)*))?", cell):
            named |= {f"{root} {sub}" for sub in subs.split("/")} if root in groups else {root}
    assert registered, "the bot registered no commands"
    assert registered - named == set(), "registered but not in the README's commands table"
    assert named - registered == set(), "in the README's commands table but not registered"


def test_every_cli_subcommand_is_in_the_cli_table():
    found = set(re.findall(r"`kitbooth ([a-z-]+)", _section("CLI"))) - {"--help"}
    assert found == set(COMMANDS)


def test_the_configuration_table_is_exactly_the_settings():
    rows = set(re.findall(r"^\| `(KITBOOTH_[A-Z0-9_]+)`", _section("Configuration"), re.M))
    assert rows == {f"KITBOOTH_{name.upper()}" for name in Settings.model_fields}
