"""The one place a process turns its settings into an ``ArtifactStore``.

``KITBOOTH_STORE_URL`` unset (or ``file:///path``): the local folder store; ``s3://bucket/prefix``: the
S3-compatible store, configured by the ``KITBOOTH_S3_*`` settings (endpoint, region, keys, path style, timeouts).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from kitbooth.settings import redacted_dsn
from storage.artifacts import ArtifactStore, LocalArtifactStore
from storage.errors import StorageError
from storage.s3 import S3ArtifactStore

if TYPE_CHECKING:
    from kitbooth.settings import Settings


def open_store(settings: Settings, *, check: bool = True) -> ArtifactStore:
    """Build the configured store; with ``check`` (the default) probe it once, so a missing bucket, refused
    credentials or an endpoint that does not answer stop the process at start with one line."""
    store = store_from_url(settings.store_url, settings)
    if check:
        store.check()
    return store


def store_from_url(url: str | None, settings: Settings) -> ArtifactStore:
    url = (url or "").strip()
    if not url:
        return LocalArtifactStore(settings.artifacts_path)
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise StorageError(f"KITBOOTH_STORE_URL {url!r} is not a file URL: use file:///absolute/path.")
        return LocalArtifactStore(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        if "@" in parts.netloc:  # never echo what may be a secret
            raise StorageError("KITBOOTH_STORE_URL must not hold credentials: use s3://bucket/prefix and set "
                               "KITBOOTH_S3_ACCESS_KEY_ID and KITBOOTH_S3_SECRET_ACCESS_KEY.")
        secret = settings.s3_secret_access_key
        return S3ArtifactStore(
            parts.netloc,
            parts.path,
            endpoint=settings.s3_endpoint,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
            path_style=settings.s3_path_style,
            timeout_s=settings.s3_timeout_s,
            connect_timeout_s=settings.s3_connect_timeout_s,
            retries=settings.s3_retries,
        )
    raise StorageError(f"KITBOOTH_STORE_URL {redacted_dsn(url)!r} is not supported: use s3://bucket/prefix "
                       "or file:///path (or leave it unset for the local folder).")
