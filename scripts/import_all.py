"""Import every module of the given packages and report what that loaded. Standard library only.

Used by tests/foundation/test_boundaries.py (the import boundaries) and by scripts/test in each process's own
venv (that process's install is complete). Prints a summary (``--json``: one JSON object); exits 1 when a module fails to import, a
forbidden module got loaded, or (``--installed``) a package was imported from outside the venv.

    python scripts/import_all.py bot storage kitbooth --forbid torch,diffusers,transformers
    python scripts/import_all.py storage --skip 'storage.database,storage.db,storage.repo*' --forbid aiosqlite
    python scripts/import_all.py gpu_worker.contract --stdlib-only kitbooth,gpu_worker

A package name imports the package and every module under it (``__main__`` modules excepted: they run
things); a module name imports just it. Run it as a script, not with ``-m``: then the current directory is
not on ``sys.path``, so an installed package is not shadowed by the source tree.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import json
import pkgutil
import sys
import traceback


def module_names(name: str, skip: set[str]) -> list[str]:
    """``name`` and, if it is a package, every module below it (imports the packages on the way)."""
    mod = importlib.import_module(name)
    names = [name]
    if hasattr(mod, "__path__"):
        for info in pkgutil.walk_packages(mod.__path__, prefix=f"{name}."):
            names.append(info.name)
    return [n for n in names if not any(fnmatch.fnmatchcase(n, pat) for pat in skip)
            and n.rsplit(".", 1)[-1] != "__main__"]


def loaded(forbidden: list[str]) -> list[str]:
    """Forbidden modules now in ``sys.modules`` (``torch`` matches ``torch.nn`` too)."""
    return sorted(f for f in forbidden if any(m == f or m.startswith(f + ".") for m in sys.modules))


def non_stdlib(allowed: set[str], before: set[str]) -> list[str]:
    """Top-level packages loaded since ``before`` (what the interpreter's start-up loaded is not counted)."""
    tops = {m.split(".")[0] for m in set(sys.modules) - before}
    return sorted(t for t in tops if t not in sys.stdlib_module_names and t not in allowed and t != "__main__")


def main(argv: list[str] | None = None) -> int:
    before = set(sys.modules)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="+", help="packages or modules to import")
    p.add_argument("--skip", default="", help="comma-separated modules not to import (fnmatch patterns)")
    p.add_argument("--forbid", default="", help="comma-separated modules that must not get loaded")
    p.add_argument("--stdlib-only", metavar="OWN", help="only the standard library and these top-level packages "
                                                        "may get loaded (comma-separated)")
    p.add_argument("--installed", action="store_true", help="every named package must come from site-packages")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = p.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    report: dict = {"imported": [], "errors": {}, "forbidden_loaded": [], "outside_venv": []}
    for name in args.names:
        try:
            names = module_names(name, skip)
        except Exception:
            report["errors"][name] = traceback.format_exc(limit=-3)
            continue
        for mod in names:
            try:
                importlib.import_module(mod)
                report["imported"].append(mod)
            except Exception:
                report["errors"][mod] = traceback.format_exc(limit=-3)
    report["forbidden_loaded"] = loaded([f for f in args.forbid.split(",") if f])
    if args.stdlib_only is not None:
        report["forbidden_loaded"] += non_stdlib({s for s in args.stdlib_only.split(",") if s}, before)
    if args.installed:
        for name in args.names:
            path = getattr(sys.modules.get(name), "__file__", None) or ""
            if "site-packages" not in path or not path.startswith(sys.prefix):
                report["outside_venv"].append(f"{name}: {path or 'not imported'}")
    failed = bool(report["errors"] or report["forbidden_loaded"] or report["outside_venv"])
    if args.json:
        print(json.dumps(report))
    else:
        print(f"imported {len(report['imported'])} modules of {', '.join(args.names)}"
              + (f"; none of {args.forbid} loaded" if args.forbid and not report["forbidden_loaded"] else ""))
        for mod, tb in report["errors"].items():
            print(f"FAILED to import {mod}:\n{tb}")
        for mod in report["forbidden_loaded"]:
            print(f"FORBIDDEN module loaded: {mod}")
        for line in report["outside_venv"]:
            print(f"NOT from this venv: {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
