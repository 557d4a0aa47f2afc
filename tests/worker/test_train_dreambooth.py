"""A DreamBooth training through the real worker (tiny model, CPU): slices with checkpoints, shared class images,
the concept file, and the resident pipeline untouched."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gpu_worker.validation import validate_train
from kitbooth.errors import InvalidInput
from storage import keys
from tests.worker.conftest import until_empty, wait_events, wctx
from tests.worker.test_train import _enqueue_train, train_payload


def test_the_worker_checks_the_method(store):
    p = train_payload(store, 5, 1, steps=4)
    validate_train(dataclasses.replace(p, method="dreambooth"))
    with pytest.raises(InvalidInput, match="Unknown training method"):
        validate_train(dataclasses.replace(p, method="everything"))
    with pytest.raises(InvalidInput, match="full delta"):
        validate_train(dataclasses.replace(p, method="dreambooth", full_delta=True))  # p is a face
    validate_train(dataclasses.replace(p, kind="kit", method="dreambooth", full_delta=True))


async def test_dreambooth_trains_in_slices_on_the_worker(arq_pool, store, start_worker, worker_settings, engine,
                                                        monkeypatch):
    before = {k: v.clone() for k, v in engine.pipe.unet.state_dict().items()}
    small = {"dreambooth_class_images": 2, "dreambooth_class_steps": 2}  # production: 100 images of 25 steps
    monkeypatch.setattr(engine, "settings", engine.settings.model_copy(update=small))  # the engine reads its own
    settings = worker_settings.model_copy(update={"slice_steps": 2, "train_samples": 0, **small})
    p = dataclasses.replace(train_payload(store, 41, 51, steps=4), method="dreambooth")
    w = await start_worker(settings)
    await _enqueue_train(arq_pool, p)
    evs = await wait_events(arq_pool, settings.events_stream, lambda e: any(x.type == "concept.ready" for x in e),
                            timeout=60)
    assert [e.type for e in evs] == ["job.started", "job.progress", "concept.ready"]
    assert [s[2] for s in wctx(w).slices if s[0] == "start"] == [0, 1]
    from training.artifact import load_artifact

    art = load_artifact(store.get_bytes(p.artifact_key))
    assert (art.method, art.steps, art.tokens, art.rank) == ("dreambooth", 4, ["ohwx"], 32)
    assert float(art.extra["delta_rel_error"]) < 1 and art.extra["class_images"] == "2"
    shared = store.list("shared/class-images/")
    assert len(shared) == 3 and not any(k.startswith(keys.user_prefix(41)) for k in shared)
    assert await until_empty(store, p.checkpoint_prefix) and not store.list(keys.photos_prefix(41, 51))
    after = engine.pipe.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # other jobs' pipeline: bit-identical
