"""The artifact store as the worker's jobs see it: a failure of the store itself is a ``StoreUnavailable``.

``LocalArtifactStore`` lets ``OSError`` through (a full disk, an NFS hiccup, EIO); the job runner must classify
it by type, so this seam turns it into ``StoreUnavailable`` (a ``TransientError``: the job is retried, a
training resumes the same slice). ``ArtifactNotFound`` and ``InvalidKey`` pass unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

from kitbooth.errors import StorageError, StoreUnavailable


class TransientStore:
    """Proxy of an ``ArtifactStore`` whose methods raise ``StoreUnavailable`` instead of ``OSError``."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except StorageError:
                raise
            except OSError as exc:
                raise StoreUnavailable(f"artifact store {name} failed: {exc}") from exc

        return call


def transient_store(store: Any) -> Any:
    """``store`` wrapped once (idempotent)."""
    return store if isinstance(store, TransientStore) else TransientStore(store)
