"""Storage errors: their place is in the one error tree of ``kitbooth.errors``; re-exported here."""

from kitbooth.errors import ArtifactNotFound, InvalidKey, StorageError, StoreUnavailable

__all__ = ["ArtifactNotFound", "InvalidKey", "StorageError", "StoreUnavailable"]
