"""Persistence: the SQLite database (aiosqlite) and the artifact store. Torch-free."""

from storage import keys
from storage.artifacts import ArtifactStore, LocalArtifactStore, validate_key
from storage.db import connect, migrate
from storage.errors import ArtifactNotFound, InvalidKey, StorageError
from storage.repository import Concept, Database, GuildSettings, Job, Kit, Output, User, utcnow

__all__ = [
    "ArtifactNotFound", "ArtifactStore", "Concept", "Database", "GuildSettings", "InvalidKey", "Job", "Kit",
    "LocalArtifactStore", "Output", "StorageError", "User", "connect", "keys", "migrate", "utcnow",
    "validate_key",
]
