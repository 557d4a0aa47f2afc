"""Subcommands contributed to ``kitbooth`` (see kitbooth/cli.py). Torch-free at import time."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this package's subcommands (none yet)."""
