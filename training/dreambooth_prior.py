"""DreamBooth's class images: what the base model draws for the bare class word, generated once and shared.

Prior preservation trains on these next to the member's photos so the class ("person", "shirt") keeps looking
like the base model's. They depend only on the base model, the class word, the count and the resolution — not on
any user — so they live in the artifact store under one shared key (``storage.keys.class_images_prefix``, outside
every ``users/`` prefix, so /forget never touches them and no face is ever in them), and every later training
with the same four reuses them. Batches are stored as they are drawn and ``done.json`` last, so a set interrupted
half-way (a slice that timed out) is finished by the next try, not started again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image

from storage import keys

log = logging.getLogger(__name__)

CLASS_SEED = 1234  # image i is drawn with seed CLASS_SEED + i: the same set wherever it is made
GUIDANCE = 7.5
BATCH = 4


class Store(Protocol):  # the artifact store's part this module uses (storage.ArtifactStore)
    def get_bytes(self, key: str) -> bytes: ...
    def put_bytes(self, key: str, data: bytes) -> int: ...
    def exists(self, key: str) -> bool: ...


@dataclass(frozen=True)
class ClassSet:
    base_model: str
    word: str
    count: int
    resolution: int
    steps: int = 25

    @property
    def prompt(self) -> str:
        return f"a photo of a {self.word}"

    @property
    def digest(self) -> str:
        what = json.dumps([self.base_model, self.word, self.count, self.resolution, self.steps])
        return hashlib.sha256(what.encode()).hexdigest()[:32]

    @property
    def prefix(self) -> str:
        return keys.class_images_prefix(self.digest)

    def image_key(self, i: int) -> str:
        return f"{self.prefix}{i:03d}.png"

    @property
    def done_key(self) -> str:
        return f"{self.prefix}done.json"


def class_images(pipe: Any, spec: ClassSet, store: Store | None,
                 should_stop: Callable[[], bool] | None = None) -> tuple[list[Image.Image], int]:
    """The class images of ``spec`` and how many were generated now (0: all came from the store). Each batch is
    stored as soon as it is drawn, so a try that timed out half-way resumes where it stopped. ``should_stop``
    (a cancel) is checked before each batch drawn: when it says stop, fewer than ``spec.count`` images return."""
    if store is not None and store.exists(spec.done_key):
        try:
            return [_read(store, spec.image_key(i)) for i in range(spec.count)], 0
        except Exception:  # noqa: BLE001 - a damaged shared set: make it again
            log.warning("class images %s unreadable; generating them again", spec.prefix)
    images: list[Image.Image] = []
    generated = 0
    log.info("class images of %r at %d²: %d wanted", spec.prompt, spec.resolution, spec.count)
    for start in range(0, spec.count, BATCH):
        n = min(BATCH, spec.count - start)
        have = _stored(store, spec, start, n)
        if have is None:
            if should_stop is not None and should_stop():
                return images, generated
            have = generate(pipe, spec, start, n)
            generated += n
            if store is not None:
                for i, im in enumerate(have):
                    buf = io.BytesIO()
                    im.save(buf, format="PNG")
                    store.put_bytes(spec.image_key(start + i), buf.getvalue())
        images.extend(have)
    if store is not None:
        store.put_bytes(spec.done_key, json.dumps({"prompt": spec.prompt, "count": spec.count}).encode())
    return images, generated


def _read(store: Store, key: str) -> Image.Image:
    return Image.open(io.BytesIO(store.get_bytes(key))).convert("RGB")


def _stored(store: Store | None, spec: ClassSet, start: int, n: int) -> list[Image.Image] | None:
    """Batch ``start`` from an interrupted earlier try, when all of it is in the store."""
    if store is None or not all(store.exists(spec.image_key(start + j)) for j in range(n)):
        return None
    try:
        return [_read(store, spec.image_key(start + j)) for j in range(n)]
    except Exception:  # noqa: BLE001 - half-written or damaged: draw it again
        return None


def generate(pipe: Any, spec: ClassSet, start: int, n: int) -> list[Image.Image]:
    """Images ``start``..``start+n-1`` of ``spec.prompt`` by the base pipeline (read-only use of it: a plain
    call), image i with seed ``CLASS_SEED + i`` wherever and in whatever batch it is drawn."""
    gens = [torch.Generator(device="cpu").manual_seed(CLASS_SEED + start + j) for j in range(n)]
    res = pipe([spec.prompt] * n, num_inference_steps=spec.steps, guidance_scale=GUIDANCE, height=spec.resolution,
               width=spec.resolution, generator=gens, output_type="pil")
    return [im.convert("RGB") for im in res.images]
