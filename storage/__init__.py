"""Persistence shared by both processes: the artifact store, its key layout and its errors. Torch-free.

The database (aiosqlite) is NOT imported here: only the bot uses it, from ``storage.database``. The worker's
install (``.[worker]``) has no aiosqlite, so importing ``storage`` must never pull it in.
"""

from storage import keys
from storage.artifacts import ArtifactStore, LocalArtifactStore, validate_key
from storage.errors import ArtifactNotFound, InvalidKey, StorageError, StoreUnavailable
from storage.factory import open_store
from storage.s3 import S3ArtifactStore

__all__ = [
    "ArtifactNotFound", "ArtifactStore", "InvalidKey", "LocalArtifactStore", "S3ArtifactStore", "StorageError",
    "StoreUnavailable", "keys", "open_store", "validate_key",
]
