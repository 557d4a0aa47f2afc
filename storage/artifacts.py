"""Artifact stores: photos (face crops), concept files, checkpoints and generated images.

Keys are POSIX-style relative paths (``users/123/concepts/7.safetensors``). Every key is validated before it
touches a backend so that no key can escape the store's root. Writes are atomic: a reader sees the old
object or the new one, never a partial file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from storage.errors import ArtifactNotFound, InvalidKey, StoreUnavailable

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*$")
MAX_KEY_LENGTH = 512


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise ``InvalidKey``.

    Refused: empty, absolute, ``..`` or ``.`` segments, backslashes, NUL and other control characters,
    empty segments (``a//b``), a trailing slash, and segments starting with a dot (hidden / temp files).
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey("empty key")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey("key too long")
    if "\\" in key or "\x00" in key or any(ord(c) < 32 for c in key):
        raise InvalidKey(f"forbidden character in key {key!r}")
    if key.startswith("/") or re.match(r"^[A-Za-z]:", key):
        raise InvalidKey(f"absolute key {key!r}")
    for seg in key.split("/"):
        if not _SEGMENT.match(seg):
            raise InvalidKey(f"bad key segment {seg!r} in {key!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """A prefix is a key with an optional trailing slash; the empty prefix means everything."""
    if prefix == "":
        return prefix
    validate_key(prefix.rstrip("/") if prefix.endswith("/") else prefix)
    return prefix


class ArtifactStore(ABC):
    """Blob store interface. Implementations must pass ``tests/storage/test_artifact_conformance.py``."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> int:
        """Store ``data`` atomically under ``key``; return its size."""

    @abstractmethod
    def put_file(self, key: str, path: str | os.PathLike[str]) -> int:
        """Copy a local file into the store atomically; return its size."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """Open for reading; the caller closes it."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Delete one key; True when it existed."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys starting with ``prefix``."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix`` (which must name a folder, e.g. ``users/42/``); return the count."""
        validate_prefix(prefix)
        if not prefix.endswith("/"):
            raise InvalidKey("delete_prefix needs a folder prefix ending in '/'")
        n = 0
        for key in self.list(prefix):
            n += self.delete(key)
        return n

    def check(self) -> None:
        """Raise a ``StorageError`` when the store cannot serve (one cheap probe: for start-up and health)."""
        self.list("kitbooth-check/")

    def get_to_file(self, key: str, path: str | os.PathLike[str]) -> Path:
        """Copy an object to a local file (atomically) and return the path."""
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self.open(key) as src, _atomic_writer(dest) as dst:
            shutil.copyfileobj(src, dst)
        return dest


WRITE_REFUSED = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}  # the disk, not the request


class _atomic_writer:
    """Write to a temp file beside ``dest`` and ``os.replace`` it into place on success only."""

    def __init__(self, dest: Path):
        self.dest = dest
        self._tmp: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".tmp-", dir=self.dest.parent)
        self._name = name
        self._tmp = os.fdopen(fd, "wb")
        return self._tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._tmp is not None
        failed = exc
        try:
            if exc_type is None:
                self._tmp.flush()
                os.fsync(self._tmp.fileno())
            self._tmp.close()
            if exc_type is None:
                os.replace(self._name, self.dest)
        except OSError as err:
            failed = err
            with contextlib.suppress(OSError):
                self._tmp.close()
            if exc_type is not None or err.errno not in WRITE_REFUSED:
                raise
        finally:
            if os.path.exists(self._name):
                os.unlink(self._name)
        if isinstance(failed, OSError) and failed.errno in WRITE_REFUSED:  # a full disk: retried, then a message
            raise StoreUnavailable(f"the artifact store refused a write: {os.strerror(failed.errno)}") from failed


class LocalArtifactStore(ArtifactStore):
    """Filesystem store rooted at ``root``."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalArtifactStore({self.root})"

    def check(self) -> None:
        if not self.root.is_dir() or not os.access(self.root, os.W_OK | os.X_OK):
            raise StoreUnavailable(f"artifact folder {self.root} is missing or not writable: fix its permissions "
                                   "or set KITBOOTH_ARTIFACT_DIR / KITBOOTH_STORE_URL.")

    def _path(self, key: str) -> Path:
        p = (self.root / validate_key(key)).resolve()
        # Belt and braces against symlinks planted inside the root.
        if self.root != p and self.root not in p.parents:
            raise InvalidKey(f"key {key!r} escapes the store")
        return p

    def put_bytes(self, key: str, data: bytes) -> int:
        path = self._path(key)
        with _atomic_writer(path) as f:
            f.write(data)
        return len(data)

    def put_file(self, key: str, path: str | os.PathLike[str]) -> int:
        dest = self._path(key)
        with open(path, "rb") as src, _atomic_writer(dest) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        return dest.stat().st_size

    def write_stream(self, key: str, chunks: Iterable[bytes]) -> int:
        """Atomically store an iterable of chunks (a failing iterator leaves nothing behind)."""
        dest = self._path(key)
        n = 0
        with _atomic_writer(dest) as f:
            for chunk in chunks:
                f.write(chunk)
                n += len(chunk)
        return n

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ArtifactNotFound(key) from None

    def open(self, key: str) -> BinaryIO:
        path = self._path(key)
        if not path.is_file():
            raise ArtifactNotFound(key)
        return open(path, "rb")

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise ArtifactNotFound(key)
        return path.stat().st_size

    def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError):
            return False
        self._prune_empty_dirs(path.parent)
        return True

    def _prune_empty_dirs(self, d: Path) -> None:
        while d != self.root and self.root in d.parents:
            try:
                d.rmdir()
            except OSError:
                return
            d = d.parent

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        # Walk only the deepest folder the prefix names, then filter by the full prefix.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root / folder if folder else self.root
        if not base.is_dir():
            return []
        keys = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith("."):
                    continue  # in-flight temp files are not objects
                rel = Path(dirpath, name).relative_to(self.root).as_posix()
                if rel.startswith(prefix):
                    keys.append(rel)
        return sorted(keys)
