"""The worker's in-memory concept cache must never outlive the file in the store (/forget, a removed kit)."""

from __future__ import annotations

import pytest

from gpu_worker.concepts import ConceptCache
from kitbooth.errors import NotFound
from storage import keys
from tests.worker.conftest import put_face
from training.base_layers import TINY


async def test_a_deleted_concept_is_not_served_from_the_cache(store):
    cache = ConceptCache(store, base=TINY)
    ref = put_face(store, 42, 1, seed=1)
    art = await cache.get(ref.key, ref.sha256, "face")
    assert art.tokens and await cache.get(ref.key, ref.sha256, "face") is art  # a hit
    store.delete_prefix(keys.user_prefix(42))  # what /forget does
    with pytest.raises(NotFound, match="no longer exists"):
        await cache.get(ref.key, ref.sha256, "face")
    with pytest.raises(NotFound, match="no longer exists"):  # and it stays gone
        await cache.get(ref.key, "", "face")


async def test_invalidate_prefix_drops_only_that_users_concepts(store):
    cache = ConceptCache(store, base=TINY)
    a, b = put_face(store, 42, 1, seed=1), put_face(store, 43, 1, seed=2)
    await cache.get(a.key, a.sha256), await cache.get(b.key, b.sha256)
    assert cache.invalidate_prefix(keys.user_prefix(42)) == 1
    misses = cache.misses
    await cache.get(b.key, b.sha256)
    assert cache.misses == misses  # user 43's entry is still cached
