"""Persistent result buttons (filled in below)."""

from __future__ import annotations


def install(bot) -> None:
    return None
