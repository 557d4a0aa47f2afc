"""Trainer checkpoints as bytes: written with ``torch.save``, read only with ``torch.load(weights_only=True)``.

A checkpoint holds plain containers, numbers, strings and tensors — no pickled objects — so reading one that
came through the shared artifact store cannot run code. Contents (see ``Trainer.state_dict``): format and
version, the config (JSON), the step, the trainable tensors, the optimizer and grad-scaler state, the trainer's
own sampling generator, the process RNG states (torch CPU/CUDA, python, numpy), and the cached latents, loss
weights and captions (so a resumed job neither re-encodes nor needs the photos again).
"""

from __future__ import annotations

import io
import random
from typing import Any

import numpy as np
import torch

from kitbooth.errors import InvalidInput

FORMAT = "kitbooth-train-checkpoint"
VERSION = 1


class BadCheckpoint(InvalidInput):
    """A checkpoint that cannot be resumed (corrupt, another format, or another job's config)."""


def dumps(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buf)
    return buf.getvalue()


def loads(data: bytes) -> dict[str, Any]:
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt bytes or a pickle with objects: both unusable
        raise BadCheckpoint(f"unreadable training checkpoint: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise BadCheckpoint("not a KitBooth training checkpoint")
    if state.get("version") != VERSION:
        raise BadCheckpoint(f"checkpoint version {state.get('version')} is not supported (expected {VERSION})")
    return state


def capture_rng() -> dict[str, Any]:
    """Process-wide RNG states, in weights_only-loadable types."""
    py = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, keys_t, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys_t.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
