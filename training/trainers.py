"""Which trainer trains a method: one table, used by the worker (``gpu_worker.engine``) and ``kitbooth train``.

Every trainer has ``training.loop.Trainer``'s interface (``from_photos``, ``step``, ``done``, ``last_loss``,
``run(max_steps=, max_seconds=)``, ``state_dict()`` bytes, ``load_state_dict``, ``artifact()``, ``close()``,
context manager). A class with ``uses_store = True`` also gets the artifact store (DreamBooth caches its class
images there). Entries are "module:Class" so importing this module imports no trainer.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

TRAINERS: dict[str, str] = {
    "pivotal": "training.loop:Trainer",
    "lora": "training.loop:Trainer",
    "ti": "training.loop:Trainer",
    "dreambooth": "training.dreambooth:DreamBoothTrainer",
    "hypernetwork": "training.hypernetwork_train:HypernetworkTrainer",
}


def trainer_class(method: str) -> Any:
    try:
        module, _, name = TRAINERS[method].partition(":")
    except KeyError:
        raise ValueError(f"no trainer for method {method!r} (known: {', '.join(TRAINERS)})") from None
    return getattr(importlib.import_module(module), name)


def _kwargs(cls: Any, store: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {**kwargs, "store": store} if getattr(cls, "uses_store", False) else kwargs


def make_trainer(pipe: Any, images: Sequence[Any], config: Any, *, store: Any = None, **kwargs: Any) -> Any:
    """The trainer of ``config.method`` on ``images`` (PIL); ``kwargs`` as ``Trainer``'s (masks, progress ...)."""
    cls = trainer_class(config.method)
    return cls(pipe, images, config, **_kwargs(cls, store, kwargs))


def trainer_from_photos(pipe: Any, photos: Sequence[Any], config: Any, *, store: Any = None, **kwargs: Any) -> Any:
    """The same from ``training.faces`` prepared photos (``.image``, ``.mask``, ``.caption``)."""
    cls = trainer_class(config.method)
    return cls.from_photos(pipe, photos, config, **_kwargs(cls, store, kwargs))
