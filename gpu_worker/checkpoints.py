"""Where a training keeps its state between slices, and what it deletes when it ends.

Under the payload's ``checkpoint_prefix``:
- ``state.ckpt``: the trainer's state after the last finished slice (the next slice, or a retry, resumes it);
- ``meta.json``: ``SliceMeta``: seconds trained so far and which slice wrote ``state.ckpt``. A slice retried
  after a Redis blip or a store hiccup that struck after its checkpoint was written does not train again: it
  only re-does what failed (enqueue the next slice, send the event).
Once the concept is written, ``done_key(job_id)`` in Redis holds what ``concept.ready`` reports until the event is
out, so a retry after the photos and checkpoints are deleted only re-announces (and does not post twice).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
from typing import Any

from kitbooth.errors import InvalidInput
from storage import ArtifactNotFound, keys

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "state.ckpt"
META_NAME = "meta.json"


def _folder(p: Any) -> str:
    return p.checkpoint_prefix if p.checkpoint_prefix.endswith("/") else p.checkpoint_prefix + "/"


def state_key(p: Any) -> str:
    return _folder(p) + CHECKPOINT_NAME


def meta_key(p: Any) -> str:
    return _folder(p) + META_NAME


def samples_prefix(p: Any) -> str:
    """Sample images of a finished concept: the user's outputs (faces) or beside the guild's checkpoints."""
    return keys.outputs_prefix(p.user_id, p.job_id) if p.kind == "face" else p.checkpoint_prefix.rstrip("/") + "-samples/"


@dataclasses.dataclass
class SliceMeta:
    seconds: float = 0.0  # GPU seconds of every finished slice
    slice_index: int | None = None  # the slice that wrote state.ckpt
    step: int = 0
    total: int = 0

    @classmethod
    def from_json(cls, raw: bytes) -> SliceMeta:
        try:
            data = json.loads(raw)
            return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})
        except (ValueError, TypeError):
            log.warning("unreadable training meta; starting its bookkeeping afresh")
            return cls()

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()


def done_key(job_id: int) -> str:
    """Redis: the finished training's ``concept.ready`` data, from the artifact's write until the event is out."""
    return f"kitbooth:train:done:{int(job_id)}"


def load_meta(store: Any, p: Any) -> SliceMeta:
    try:
        return SliceMeta.from_json(store.get_bytes(meta_key(p)))
    except ArtifactNotFound:
        return SliceMeta()


def load_state(store: Any, p: Any) -> bytes | None:
    try:
        return store.get_bytes(state_key(p))
    except ArtifactNotFound:
        return None


def _png_to_image(data: bytes, mode: str) -> Any:
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    return im.convert(mode)


def load_photos(store: Any, photo_keys: list[str]) -> tuple[list[Any], list[Any] | None]:
    """The training's face crops (and masks, when any photo has one). A missing photo is skipped."""
    images, masks, any_mask = [], [], False
    for k in photo_keys:
        try:
            data = store.get_bytes(k)
        except ArtifactNotFound:
            continue
        try:
            images.append(_png_to_image(data, "RGB"))
        except Exception:  # noqa: BLE001 - any decode error of stored bytes
            raise InvalidInput("One of the training photos is damaged.") from None
        mk = keys.mask_key(k)
        if store.exists(mk):
            masks.append(_png_to_image(store.get_bytes(mk), "L"))
            any_mask = True
        else:
            masks.append(None)
    return images, (masks if any_mask else None)


def delete_prefix(store: Any, prefix: str) -> int:
    if not prefix:
        return 0
    return store.delete_prefix(prefix if prefix.endswith("/") else prefix + "/")


def delete_photos(store: Any, p: Any) -> None:
    """The training's photos and masks (biometric data), each deletion tried even when another fails."""
    for k in p.photo_keys:
        with contextlib.suppress(Exception):
            store.delete(k)
            store.delete(keys.mask_key(k))
    if p.kind == "face":
        with contextlib.suppress(Exception):
            store.delete_prefix(keys.photos_prefix(p.user_id, p.concept_id))


def cleanup_training(store: Any, p: Any, *, photos: bool) -> None:
    """Delete the checkpoints and, when the training ends for good, the photos. Best effort."""
    with contextlib.suppress(Exception):
        delete_prefix(store, p.checkpoint_prefix)
    if photos:
        delete_photos(store, p)
