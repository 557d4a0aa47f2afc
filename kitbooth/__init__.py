"""KitBooth: shared entry points (settings, CLI, version), the error tree and the limits. Torch-free.

``Settings`` is imported lazily so that ``kitbooth.errors`` and ``kitbooth.limits`` stay standard-library only
(``gpu_worker.contract`` imports them, and the contract must not pull pydantic into a consumer).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Settings", "__version__", "load_settings"]


def __getattr__(name: str) -> Any:
    if name in ("Settings", "load_settings"):
        from kitbooth import settings

        return getattr(settings, name)
    raise AttributeError(f"module 'kitbooth' has no attribute {name!r}")
