"""bot/'s shape, read from the source with ``ast``: the run-time import graph has no cycle, nothing outside
``bot/cogs`` imports a cog (``bot/app.py`` loads them by name), imports sit at module top, and no command path
scans the Redis keyspace."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BOT = Path(__file__).resolve().parents[2] / "bot"
SCANS = {"scan", "scan_iter", "keys", "zrange"}  # Redis commands whose cost grows with all of Redis / the queue


def _module_name(path: Path) -> str:
    rel = path.relative_to(BOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(BOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.Module, module: str) -> set[str]:
    """Modules imported at module level (``if TYPE_CHECKING:`` blocks excluded), resolved to full names."""
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for h in node.handlers:
                    visit(h.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, up ``level - 1`` more
                    pkg = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join([*pkg, *([base] if base else [])])
                subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
                found.update(subs)  # ``from bot import jobs`` is an import of bot.jobs ...
                if len(subs) < len(node.names):  # ... while ``from bot import create_bot`` uses bot/__init__
                    found.add(base)

    visit(tree.body)
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text("utf-8"), filename=str(path))
        graph[name] = {m for m in _runtime_imports(tree, name) if m in MODULES and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def dfs(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            dfs(node)
    return cycles


def test_the_graph_sees_bots_modules():
    graph = _graph()
    assert {"bot.app", "bot.events", "bot.delivery", "bot.buttons", "bot.generate_request", "bot.cancel"} <= set(graph)
    assert "bot.generate_request" in graph["bot.buttons"] and "bot.generate_request" in graph["bot.cogs.generate"]
    assert "bot.delivery" in graph["bot.events"]


def test_cycle_detection_works():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_bot_has_no_runtime_import_cycle():
    assert _cycles(_graph()) == []


def test_no_module_outside_cogs_imports_a_cog():
    offenders = {name: sorted(m for m in deps if m.startswith("bot.cogs."))
                 for name, deps in _graph().items() if not name.startswith("bot.cogs")}
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_at_module_top(name):
    """Every import at module top (type-only imports aside). ``bot/cli.py`` is the one documented exception:
    ``kitbooth``'s CLI imports it in the worker's install too, which has no discord.py or aiosqlite."""
    if name == "bot.cli":
        pytest.skip("CLI registration module: heavy imports live in the subcommand functions (kitbooth/cli.py)")
    tree = ast.parse(MODULES[name].read_text("utf-8"))
    inner = [f"line {n.lineno}" for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
             for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert inner == [], f"{name}: imports inside functions at {inner}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_keyspace_scans(name):
    """No SCAN / KEYS / ZRANGE of the whole queue anywhere in bot/: cost per command stays independent of
    everything else Redis holds (``benchmarks/bot_generate.py`` measures it). ``bot/doctor.py`` is the one
    exception: ``kitbooth doctor``'s consistency scan is an operator command run from the CLI, never per command,
    and scanning everything is its job."""
    if name == "bot.doctor":
        pytest.skip("kitbooth doctor's offline scan (an operator command, never in the bot's command path)")
    tree = ast.parse(MODULES[name].read_text("utf-8"))
    calls = [f"{n.func.attr} (line {n.lineno})" for n in ast.walk(tree)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in SCANS
             and (n.func.attr != "keys" or n.args)]  # dict.keys() has no arguments; Redis KEYS has a pattern
    assert calls == []


def test_no_bot_module_over_400_lines():
    sizes = {name: len(p.read_text("utf-8").splitlines()) for name, p in MODULES.items()}
    assert {k: v for k, v in sizes.items() if v > 400} == {}


def test_create_bot_is_reexported():
    import bot
    from bot.app import create_bot

    assert bot.create_bot is create_bot


STORE_CALLS = {"get_bytes", "put_bytes", "put_file", "delete", "delete_prefix", "list", "exists", "open"}


def _is_store(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id == "store") or (isinstance(node, ast.Attribute)
                                                                   and node.attr == "store")


@pytest.mark.parametrize("name", sorted(set(MODULES) - {"bot.cli"}))  # the CLI's doctor has no event loop
def test_artifact_store_calls_run_off_the_event_loop(name):
    """Every ``ArtifactStore`` call in bot/ goes through ``asyncio.to_thread`` (the store is blocking I/O: a
    local disk, or S3 over the network): either ``to_thread(store.get_bytes, key)`` or inside a function that is
    itself handed to ``to_thread``."""
    tree = ast.parse(MODULES[name].read_text("utf-8"))
    threaded = {a.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                and n.func.attr == "to_thread" for a in n.args[:1] if isinstance(a, ast.Name)}
    inside = {id(n) for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef) and fn.name in threaded
              for n in ast.walk(fn)}
    direct = [f"{n.func.attr} (line {n.lineno})" for n in ast.walk(tree)
              if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in STORE_CALLS
              and _is_store(n.func.value) and id(n) not in inside]
    assert direct == []
