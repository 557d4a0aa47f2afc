"""The figures each reliability suite reports: counts and rates, printed as one line per suite at the end of the
run (``tests/conftest.py``: under ``pytest -n 2`` each worker hands its figures to the controller), whatever ``-s`` / ``-q`` say. Never asserted on as timings."""

from __future__ import annotations

from collections import Counter, defaultdict

FIGURES: dict[str, Counter] = defaultdict(Counter)
TABLES: dict[str, dict[str, str]] = defaultdict(dict)  # suite -> {path or case: verdict}


def count(suite: str, **figures: int) -> None:
    """Add to a suite's counters (e.g. ``count("faults", scenarios=1, delivered_once=1)``)."""
    FIGURES[suite].update(figures)


def row(suite: str, name: str, verdict: str) -> None:
    """One row of a suite's table (an isolation path and how it was refused)."""
    TABLES[suite][name] = verdict


def export() -> dict:
    """The figures as plain types (a pytest-xdist worker hands them to the controller, which prints them)."""
    return {"figures": {k: dict(v) for k, v in FIGURES.items()}, "tables": {k: dict(v) for k, v in TABLES.items()}}


def merge(data: dict) -> None:
    for suite, figures in data.get("figures", {}).items():
        FIGURES[suite].update(figures)
    for suite, table in data.get("tables", {}).items():
        TABLES[suite].update(table)


def summary_lines() -> list[str]:
    lines = []
    for suite in sorted(set(FIGURES) | set(TABLES)):
        parts = [f"{k}={v}" for k, v in sorted(FIGURES[suite].items())]
        if TABLES[suite]:
            parts.append("paths: " + "; ".join(f"{k} → {v}" for k, v in TABLES[suite].items()))
        lines.append(f"reliability/{suite}: " + ", ".join(parts))
    return lines
