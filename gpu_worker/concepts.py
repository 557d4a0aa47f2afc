"""Concept files fetched from the store, parsed once and kept in memory (bounded LRU by key and sha256).

A file is read through the one concept-file validator (``training.concept_file``, via
``training.formats.load_concept``) against the resident pipeline's own layer table, so the worker refuses exactly
what ``/kit import`` refuses, with the same sentence, before any tensor is built."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections import OrderedDict
from typing import Any

from kitbooth import limits
from kitbooth.errors import IncompatibleArtifact, NotFound, UserFacingError
from kitbooth.i18n import keyed
from storage import ArtifactNotFound, ArtifactStore
from training import safetensors_file
from training.base_layers import BaseModel
from training.formats import load_concept

log = logging.getLogger(__name__)

# English texts of failure.concept_gone / failure.face_damaged (kitbooth/locales): the member reads them in
# their language.
GONE = "A concept used by this request no longer exists. Pick another one."
DAMAGED_FACE = "Your trained face file is damaged — run /train to learn your face again."


class ConceptCache:
    """``await get(key, sha256, kind)`` -> ``ConceptArtifact``. A stale entry (other sha256) is re-read.

    Files are KitBooth concepts (trained here) or kits/styles an admin imported as they came (A1111, kohya or
    diffusers safetensors), checked against ``base``: the resident pipeline's ``training.base_layers.from_pipeline``.
    """

    def __init__(self, store: ArtifactStore, *, base: BaseModel, max_items: int = 64,
                 max_file_bytes: int = limits.DELTA_FILE_BYTES):  # a trained DreamBooth delta (uploads: 10 MB)
        self.store = store
        self.base = base
        self.max_items = max_items
        self.max_file_bytes = max_file_bytes
        self._items: OrderedDict[str, tuple[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    async def get(self, key: str, sha256: str = "", kind: str = "face") -> Any:
        with self._lock:
            hit = self._items.get(key)
        if hit is not None and (not sha256 or hit[0] == sha256):
            # The store is the truth: a concept deleted there (/forget, a removed kit) must not live on in
            # this worker's memory. One existence check per use is cheap next to a generation.
            if not await asyncio.to_thread(self.store.exists, key):
                self.invalidate(key)
                raise keyed(NotFound, "failure.concept_gone")
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                self.hits += 1
            return hit[1]
        self.misses += 1
        digest, art = await asyncio.to_thread(self._load, key, sha256, kind)
        with self._lock:
            self._items[key] = (digest, art)
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return art

    def invalidate(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def cached_keys(self) -> list[str]:
        with self._lock:
            return list(self._items)

    def invalidate_prefix(self, prefix: str) -> int:
        """Drop every cached concept under ``prefix`` (e.g. ``users/<id>/`` after /forget)."""
        with self._lock:
            gone = [k for k in self._items if k.startswith(prefix)]
            for k in gone:
                del self._items[k]
        return len(gone)

    def _load(self, key: str, sha256: str, kind: str) -> tuple[str, Any]:
        try:
            if self.store.size(key) > self.max_file_bytes:
                raise keyed(IncompatibleArtifact, "failure.concept_too_large", size=self.max_file_bytes / 1e6)
            data = self.store.get_bytes(key)
        except ArtifactNotFound:
            raise keyed(NotFound, "failure.concept_gone") from None
        digest = hashlib.sha256(data).hexdigest()
        if sha256 and digest != sha256:
            raise keyed(IncompatibleArtifact, "failure.concept_checksum")
        # The file name only seeds an imported file's trigger word (e.g. "<kit-0>"), never a path. A refusal is
        # the validator's own sentence (a UserFacingError), the same the bot gives at import.
        try:
            art = load_concept(data, base=self.base, kind=kind, filename=f"{kind}.safetensors",
                               max_bytes=self.max_file_bytes)
        except UserFacingError as exc:
            if kind != "face" or _readable(data):  # an imported kit/style, or e.g. another base model's face:
                raise  # the validator's own sentence says what to fix
            # A face was trained here, never uploaded: "upload the file itself" would be the wrong advice.
            log.warning("concept %s: stored face file refused: %s", key, exc)
            raise keyed(IncompatibleArtifact, "failure.face_damaged") from None
        log.debug("concept %s loaded (%s)", key, art.extra.get("source_format", art.method))
        return digest, art


def _readable(data: bytes) -> bool:
    """Whether ``data`` is a well-formed safetensors file at all (a truncated or overwritten one is not)."""
    try:
        safetensors_file.read(data)
    except UserFacingError:
        return False
    return True
