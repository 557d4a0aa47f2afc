"""S3-compatible artifact store (MinIO, AWS S3, Cloudflare R2) through obstore, behind ``ArtifactStore``.

obstore (Rust ``object_store``) does the HTTP, SigV4 signing, retries with backoff, multipart uploads and
streaming; this module maps its errors onto ``kitbooth.errors`` with one line that names the bucket and
endpoint (never the secret). A single PUT is atomic on S3 and so is completing a multipart upload; a failed
multipart upload is aborted, so a reader sees the old object or the new one, never a part.

Keys are validated exactly like the local store's (``validate_key``), and ``list`` keeps the local store's
meaning: every key that starts with the prefix string (``users/1`` matches ``users/10/x``; use ``users/1/``).
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import BinaryIO
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import BaseError as ObstoreError
from obstore.exceptions import PermissionDeniedError, UnauthenticatedError
from obstore.store import S3Store

from storage.artifacts import ArtifactStore, validate_key, validate_prefix
from storage.errors import ArtifactNotFound, InvalidKey, StorageError, StoreUnavailable

log = logging.getLogger(__name__)

PART_BYTES = 8 << 20  # multipart part size; objects up to this size go up in one PUT (S3's minimum part is 5 MiB)
READ_CHUNK = 1 << 20  # streaming reads hold at most about this much per step
DELETE_BATCH = 1000  # S3 DeleteObjects takes at most 1000 keys per request
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([A-Za-z.]+)</Code>")


class S3ArtifactStore(ArtifactStore):
    """Objects under ``s3://bucket/prefix/``. Sync, like every store: async callers use ``asyncio.to_thread``."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        path_style: bool = True,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        retries: int = 3,
    ):
        if not _BUCKET.match(bucket or ""):
            raise StorageError(f"{bucket!r} is not an S3 bucket name (3-63 of a-z 0-9 . -): fix KITBOOTH_STORE_URL.")
        prefix = prefix.strip("/")
        if prefix:
            try:
                validate_key(prefix)
            except InvalidKey:
                raise StorageError(f"bad prefix {prefix!r} in KITBOOTH_STORE_URL s3://{bucket}/{prefix}: "
                                   "use letters, digits, '.', '_', '-' and '/'.") from None
        self.bucket, self.prefix, self.timeout_s = bucket, prefix, timeout_s
        self.endpoint = _check_endpoint(endpoint) if endpoint else None
        self.where = f"s3://{bucket}/{prefix}" + (f" at {self.endpoint}" if self.endpoint else f" (AWS {region})")
        # Shown in errors so the operator knows which key was refused; the secret never leaves this function.
        self._key_hint = f"…{access_key_id[-4:]}" if access_key_id else "from the AWS_* environment / instance role"
        config: dict[str, object] = {"region": region, "virtual_hosted_style_request": not path_style}
        if self.endpoint:
            config["endpoint"] = self.endpoint if path_style else _bucket_host(self.endpoint, bucket)
        if access_key_id:
            config["access_key_id"] = access_key_id
        if secret_access_key:
            config["secret_access_key"] = secret_access_key
        self._store = S3Store(
            bucket,
            prefix=prefix or None,
            config=config,
            client_options={
                "allow_http": bool(self.endpoint and self.endpoint.startswith("http://")),
                "timeout": timedelta(seconds=timeout_s),
                "connect_timeout": timedelta(seconds=connect_timeout_s),
            },
            retry_config={"max_retries": retries, "retry_timeout": timedelta(seconds=timeout_s * (retries + 1))},
        )

    def __repr__(self) -> str:
        return f"S3ArtifactStore({self.where})"

    # --- writes ----------------------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> int:
        validate_key(key)
        with self._calls(key):
            obstore.put(self._store, key, data, chunk_size=PART_BYTES)
        return len(data)

    def put_file(self, key: str, path: str | os.PathLike[str]) -> int:
        validate_key(key)
        with open(path, "rb") as f:  # a missing local file fails here, before any request
            size = os.fstat(f.fileno()).st_size
            with self._calls(key):
                obstore.put(self._store, key, f, chunk_size=PART_BYTES)
        return size

    def write_stream(self, key: str, chunks: Iterable[bytes]) -> int:
        """Store an iterable of chunks: one PUT when small, else a multipart upload that a failing iterator
        aborts (the old object, if any, stays). The iterator's own exception is raised as is."""
        validate_key(key)
        it = iter(chunks)
        head = bytearray()
        for chunk in it:
            head += chunk
            if len(head) >= PART_BYTES:
                break
        else:
            return self.put_bytes(key, bytes(head))
        source = _Counting(bytes(head), it)
        try:
            with self._calls(key):
                obstore.put(self._store, key, source, chunk_size=PART_BYTES)
        except BaseException:
            if source.error is not None:
                raise source.error from None
            raise
        return source.count

    def delete(self, key: str) -> bool:
        validate_key(key)
        with self._calls(key):
            try:
                obstore.head(self._store, key)  # S3 deletes answer 204 either way; we report whether it existed
            except FileNotFoundError:
                return False
            obstore.delete(self._store, key)
        return True

    def delete_prefix(self, prefix: str) -> int:
        validate_prefix(prefix)
        if not prefix.endswith("/"):
            raise InvalidKey("delete_prefix needs a folder prefix ending in '/'")
        found = self.list(prefix)
        for i in range(0, len(found), DELETE_BATCH):
            with self._calls(prefix):
                obstore.delete(self._store, found[i:i + DELETE_BATCH])
        return len(found)

    # --- reads -----------------------------------------------------------------------------------------
    def get_bytes(self, key: str) -> bytes:
        validate_key(key)
        with self._calls(key):
            return bytes(obstore.get(self._store, key).bytes())

    def open(self, key: str) -> BinaryIO:
        """A streaming reader: the GET starts here (a missing key raises now), the body arrives as it is read."""
        validate_key(key)
        with self._calls(key):
            result = obstore.get(self._store, key)
        raw = _StreamReader(result.stream(min_chunk_size=READ_CHUNK), self, key)
        return io.BufferedReader(raw, buffer_size=READ_CHUNK)  # type: ignore[return-value]

    def exists(self, key: str) -> bool:
        validate_key(key)
        with self._calls(key):
            try:
                obstore.head(self._store, key)
            except FileNotFoundError:
                return False
        return True

    def size(self, key: str) -> int:
        validate_key(key)
        with self._calls(key):
            return int(obstore.head(self._store, key)["size"])

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        # S3 prefixes match whole path segments here: list the deepest folder, then filter by the full string.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else None
        with self._calls(prefix):
            paths = [meta["path"] for page in obstore.list(self._store, folder, chunk_size=DELETE_BATCH)
                     for meta in page]
        # Objects written by someone else under names no key may have are not ours to hand out.
        return sorted(p for p in paths if p.startswith(prefix) and _is_key(p))

    def check(self) -> None:
        """One LIST request: the bucket exists, the credentials work and the endpoint answers."""
        with self._calls(""):
            next(iter(obstore.list(self._store, None, chunk_size=1)), None)

    # --- errors ----------------------------------------------------------------------------------------
    @contextmanager
    def _calls(self, key: str) -> Iterator[None]:
        try:
            yield
        except (ObstoreError, FileNotFoundError) as exc:
            raise self._translate(exc, key) from None

    def _translate(self, exc: BaseException, key: str) -> StorageError:
        """One line per failure, naming the bucket, the endpoint and what to check (never the secret)."""
        text = str(exc)
        log.debug("S3 error on %r in %s: %s", key, self.where, text)
        status_m, code_m = _STATUS.search(text), _CODE.search(text)
        status = int(status_m.group(1)) if status_m else None
        code = code_m.group(1) if code_m else ""
        endpoint = self.endpoint or "AWS"
        if code == "NoSuchBucket":
            return StorageError(f"S3 bucket {self.bucket!r} does not exist at {endpoint}: create it, or fix "
                                "KITBOOTH_STORE_URL / KITBOOTH_S3_ENDPOINT.")
        if isinstance(exc, FileNotFoundError):
            return ArtifactNotFound(key)
        if isinstance(exc, PermissionDeniedError | UnauthenticatedError) or status in (401, 403):
            why = code or (f"HTTP {status}" if status else "access denied")
            return StorageError(f"{self.where} refused access key {self._key_hint} ({why}): check "
                                "KITBOOTH_S3_ACCESS_KEY_ID, KITBOOTH_S3_SECRET_ACCESS_KEY and the bucket's policy.")
        if status is None or status >= 500 or status in (408, 429):
            hint = "check KITBOOTH_S3_ENDPOINT and that the server is up"
            if "kind: Timeout" in text or "TimedOut" in text:
                what, hint = f"did not answer within {self.timeout_s:g}s", f"{hint}, or raise KITBOOTH_S3_TIMEOUT_S"
            elif "kind: Connect" in text:
                what = "refused the connection"
            else:
                what = f"failed ({code or status or 'no response'})"
            return StoreUnavailable(f"S3 endpoint {endpoint} {what} (bucket {self.bucket!r}): {hint}.")
        return StorageError(f"{self.where} refused the request for {key!r} (HTTP {status} {code}): check "
                            "KITBOOTH_STORE_URL, KITBOOTH_S3_REGION and KITBOOTH_S3_PATH_STYLE.")


class _StreamReader(io.RawIOBase):
    """A raw file over an obstore byte stream, with the store's error translation on every read."""

    def __init__(self, stream: Iterable[bytes], store: S3ArtifactStore, key: str):
        self._chunks = iter(stream)
        self._buf = memoryview(b"")
        self._store, self._key = store, key

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self._buf:
            with self._store._calls(self._key):
                chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buf = memoryview(chunk)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class _Counting:
    """Iterator over ``head`` then ``rest`` that counts bytes and keeps the source's own exception."""

    def __init__(self, head: bytes, rest: Iterator[bytes]):
        self._head: bytes | None = head
        self._rest = rest
        self.count = 0
        self.error: BaseException | None = None

    def __iter__(self) -> _Counting:
        return self

    def __next__(self) -> bytes:
        if self._head is not None:
            chunk, self._head = self._head, None
        else:
            try:
                chunk = next(self._rest)
            except StopIteration:
                raise
            except BaseException as exc:
                self.error = exc
                raise
        self.count += len(chunk)
        return chunk


def _is_key(path: str) -> bool:
    try:
        validate_key(path)
    except InvalidKey:
        return False
    return True


def _check_endpoint(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise StorageError(f"KITBOOTH_S3_ENDPOINT {endpoint!r} is not a URL: use e.g. http://127.0.0.1:9000 "
                           "(MinIO) or https://<account>.r2.cloudflarestorage.com (R2).")
    return endpoint.rstrip("/")


def _bucket_host(endpoint: str, bucket: str) -> str:
    """Virtual-hosted style with a custom endpoint: obstore wants the bucket in the host."""
    parts = urlsplit(endpoint)
    if parts.netloc.startswith(f"{bucket}."):
        return endpoint
    return parts._replace(netloc=f"{bucket}.{parts.netloc}").geturl()
