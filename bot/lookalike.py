"""A face is only its owner's: the reference identity kept with a face (issue 14.1) and the refusal of a /train
whose selfies match another member's face (issue 11.5).

When a face's selfies pass, the mean dlib descriptor of the accepted ones (``training.rerank.mean_descriptor``)
is kept with the face concept: a row of ``face_references`` (the bot's own checks) and one 1024-byte file under
the user's store prefix (``keys.reference_key``) that the worker's best-of-N reads by key. Both go with the user
on ``/forget`` (prefix delete, row cascade); neither is ever exported, logged or put into a payload.

A new face whose mean descriptor lies within dlib's same-person threshold of another user's kept reference (any
server) is refused, unless this server's admins allowed the pair (``/kitbooth allow-lookalike``; twins).
The comparison is mean against mean: one odd selfie neither causes nor escapes a match.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from kitbooth.errors import NotAllowed
from kitbooth.i18n import keyed
from storage import keys
from training.faces import IDENTITY_THRESHOLD
from training.rerank import decode_reference, encode_reference, mean_descriptor

if TYPE_CHECKING:
    from bot.services import Services

log = logging.getLogger(__name__)

LOOKS_LIKE_ANOTHER = (  # refusal.looks_like_another in English
    "These selfies look like a face another member has already taught me, so I can't learn them — a face is only "
    "its owner's. If you are twins or look very alike, ask a server admin to run `/kitbooth allow-lookalike` "
    "for the two of you, then /train again."
)


def reference_bytes(descriptors: Iterable[np.ndarray]) -> bytes | None:
    """The encoded mean of the accepted selfies' descriptors, or None when the checker gave none."""
    mean = mean_descriptor(descriptors)
    return None if mean is None else encode_reference(mean)


def _matches(mine: bytes, others: list[tuple[int, bytes]], allowed: set[int]) -> list[int]:
    ref = decode_reference(mine)
    hits = []
    for owner, blob in others:
        if owner in allowed:
            continue
        try:
            if float(np.linalg.norm(decode_reference(blob) - ref)) < IDENTITY_THRESHOLD:
                hits.append(owner)
        except ValueError:  # a damaged row never blocks anyone (and is not logged: it is biometric data)
            continue
    return hits


async def refuse_other_persons_face(services: Services, user_id: int, guild_id: int | None,
                                    reference: bytes | None) -> None:
    """Raise ``NotAllowed`` when ``reference`` matches another user's kept face (outside allowed pairs)."""
    if reference is None:
        return
    db = services.db
    others = await db.other_face_references(user_id)
    if not others:
        return
    allowed = await db.lookalikes_allowed(guild_id, user_id)
    hits = await asyncio.to_thread(_matches, reference, others, allowed)
    if hits:
        log.info("user %s: /train refused, the selfies match %d other member(s)' face", user_id, len(hits))
        raise keyed(NotAllowed, "refusal.looks_like_another")


async def keep_reference(services: Services, user_id: int, concept_id: int, reference: bytes | None,
                         photo_count: int) -> str | None:
    """Keep the face's reference (DB row + the worker's copy under the user's prefix); returns its store key."""
    if reference is None:
        return None
    key = keys.reference_key(user_id, concept_id)
    await asyncio.to_thread(services.store.put_bytes, key, reference)
    await services.db.save_face_reference(concept_id, user_id, reference, photo_count)
    return key


async def reference_key_for(services: Services, user_id: int, concept_id: int) -> str | None:
    """The store key of a face's reference, when one was kept (faces trained before it existed have none)."""
    if await services.db.face_reference(concept_id) is None:
        return None
    return keys.reference_key(user_id, concept_id)
