"""Start-up reconcile (filled in below)."""

from __future__ import annotations


async def reconcile(services) -> int:
    return 0
