"""A subcommand run from an install without its extra says which extra to install, in one line.

The per-process venvs of scripts/test-processes check this on real installs; here a meta-path blocker stands
in for the missing package (the documented seam: nothing else of the interpreter is changed).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

BLOCKED_RUN = """
import sys
class Missing:  # the package is not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == sys.argv[1]:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
from kitbooth.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_without(package: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED_RUN, package, *argv], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={"PATH": "/usr/bin:/bin", "KITBOOTH_DATA_DIR": str(cwd)})


@pytest.mark.parametrize(("package", "argv", "extra"), [
    ("aiosqlite", ["migrate"], "bot"),
    ("aiosqlite", ["bot", "--help"], "bot"),
    ("torch", ["worker"], "worker"),
    ("torch", ["make-tiny-model", "tiny"], "worker"),
])
def test_missing_extra_is_one_line_that_says_what_to_install(tmp_path, package, argv, extra):
    res = run_without(package, *argv, cwd=tmp_path)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert res.stderr.strip() == (f"kitbooth {argv[0]}: this install lacks {package!r}; install the {extra} extra: "
                                  f"pip install 'kitbooth[{extra}]'")


def test_a_missing_module_of_our_own_is_a_bug_not_an_install_problem(tmp_path):
    res = run_without("training", "make-tiny-model", "tiny", cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" in res.stderr and "ModuleNotFoundError" in res.stderr
