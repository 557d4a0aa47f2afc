"""Storage errors."""


class StorageError(Exception):
    """Base class of storage errors."""


class InvalidKey(StorageError, ValueError):
    """An artifact key that is unsafe or malformed."""


class ArtifactNotFound(StorageError, KeyError):
    """No object under this key."""

    def __str__(self) -> str:
        return f"no artifact {self.args[0]!r}"
