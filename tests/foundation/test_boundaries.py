"""DESIGN.md boundaries: the bot and storage never import torch/diffusers; the CLI's help is torch-free."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "transformers", "peft", "accelerate")


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    import json

    mods = json.loads(res.stdout.strip().splitlines()[-1])
    return {m.split(".")[0] for m in mods}


@pytest.mark.parametrize(
    "code",
    [
        "import storage, storage.keys, storage.artifacts, storage.repository",
        "import bot",
        "import gpu_worker.contract",
        "import training, training.faces, training.images",
        "import kitbooth.cli; kitbooth.cli.build_parser()",
    ],
)
def test_torch_free(code):
    loaded = _loaded_after(code)
    assert not loaded & set(HEAVY), f"{code!r} imported {sorted(loaded & set(HEAVY))}"


def test_bot_package_torch_free_after_importing_every_module():
    import pkgutil
    from pathlib import Path

    import bot

    names = [f"bot.{m.name}" for m in pkgutil.walk_packages([str(Path(bot.__file__).parent)], prefix="")
             if not m.name.endswith("__main__")]
    code = "\n".join(f"import {n}" for n in names) or "import bot"
    loaded = _loaded_after(code)
    assert not loaded & set(HEAVY)


def test_contract_is_stdlib_only():
    loaded = _loaded_after("import gpu_worker.contract")
    assert not loaded & {"discord", "redis", "arq", "torch", "numpy", "PIL"}
