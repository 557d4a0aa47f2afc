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
from kitbooth.errors import IncompatibleArtifact, NotFound
from storage import ArtifactNotFound, ArtifactStore
from training.base_layers import BaseModel
from training.formats import load_concept

log = logging.getLogger(__name__)

GONE = "A concept used by this request no longer exists. Pick another one."


class ConceptCache:
    """``await get(key, sha256, kind)`` -> ``ConceptArtifact``. A stale entry (other sha256) is re-read.

    Files are KitBooth concepts (trained here) or kits/styles an admin imported as they came (A1111, kohya or
    diffusers safetensors), checked against ``base``: the resident pipeline's ``training.base_layers.from_pipeline``.
    """

    def __init__(self, store: ArtifactStore, *, base: BaseModel, max_items: int = 64,
                 max_file_bytes: int = limits.CONCEPT_FILE_BYTES):
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
                raise NotFound(GONE)
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
                raise IncompatibleArtifact(f"A concept file is over {self.max_file_bytes / 1e6:.1f} MB, too large "
                                           "for a concept — retrain or re-import it.")
            data = self.store.get_bytes(key)
        except ArtifactNotFound:
            raise NotFound(GONE) from None
        digest = hashlib.sha256(data).hexdigest()
        if sha256 and digest != sha256:
            raise IncompatibleArtifact("A concept file changed or is damaged (checksum mismatch) — retrain or "
                                       "re-import it.")
        # The file name only seeds an imported file's trigger word (e.g. "<kit-0>"), never a path. A refusal is
        # the validator's own sentence (a UserFacingError), the same the bot gives at import.
        art = load_concept(data, base=self.base, kind=kind, filename=f"{kind}.safetensors",
                           max_bytes=self.max_file_bytes)
        log.debug("concept %s loaded (%s)", key, art.extra.get("source_format", art.method))
        return digest, art
