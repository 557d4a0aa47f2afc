"""Accepted by the validator ⇔ composed by the worker, over a generated corpus of concept files.

The bot side is ``bot.imports.check_import`` (what ``/kit import`` runs, base model from ``base_hidden_size``);
the worker side is the real ``ConceptCache`` (store → validator → tensors) against the tiny pipeline's own
layer table, then a real ``Composer.compose`` and one denoising step on that pipeline. Every refusal, on either
side, must be one sentence (no traceback, no repr) and the same sentence on both sides.
"""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest
import torch

from bot.imports import check_import
from gpu_worker.concepts import ConceptCache
from kitbooth.errors import UserFacingError
from storage import LocalArtifactStore
from tests.training.concepts import load_pipe
from tests.worker.corpus import Variant, variants
from training.base_layers import TINY, for_hidden_size, from_pipeline
from training.compose import Composer, ConceptUse
from training.tiny import TINY_HIDDEN

torch.set_num_threads(1)
FILENAME = "kit.safetensors"  # the worker names a kit's file so; the bot quotes the uploaded name


def one_sentence(msg: str) -> bool:
    return (bool(msg) and "\n" not in msg and "Traceback" not in msg and " object at 0x" not in msg
            and "Error(" not in msg and msg.endswith(".") and not re.search(r"[.!?] +[A-Z]", msg[:-1]))


def bot_verdict(v: Variant) -> str | None:
    try:
        check_import(v.data, FILENAME, hidden_size=TINY_HIDDEN, max_bytes=10_000_000)
    except UserFacingError as exc:
        return exc.message
    return None


def worker_verdict(v: Variant, i: int, store, cache: ConceptCache, composer: Composer, pipe) -> str | None:
    key = f"guilds/1/concepts/{i}.safetensors"
    store.put_bytes(key, v.data)
    try:
        art = asyncio.run(cache.get(key, "", "kit"))
    except UserFacingError as exc:
        return exc.message
    finally:
        cache.invalidate(key)
    with composer.compose([[ConceptUse(key, art, 1.0)]]) as comp:  # any other exception fails the test
        prompt = comp.rewrite(0, f"a photo of {art.trigger} kit")
        out = pipe(prompt, num_inference_steps=1, height=64, width=64, output_type="np",
                   generator=torch.Generator().manual_seed(0)).images
    composer.evict(key)
    assert np.isfinite(out).all(), f"{v.name}: composed into a non-finite image"
    return None


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipe(tiny_model_dir)


def test_the_bots_layer_table_is_the_resident_pipelines(pipe):
    assert for_hidden_size(TINY_HIDDEN) == TINY
    live = from_pipeline(pipe)
    assert (live.hidden_size, dict(live.unet), dict(live.text)) == (TINY.hidden_size, dict(TINY.unet), dict(TINY.text))


def test_sd15_layer_table_is_sd15s_unet():
    from diffusers import UNet2DConditionModel

    from training.base_layers import SD15, _table
    from training.models import SD15_UNET

    with torch.device("meta"):
        unet = UNet2DConditionModel(**{k: v for k, v in SD15_UNET.items() if not k.startswith("_")})
    assert _table(unet) == dict(SD15.unet) and len(SD15.unet) > 250


def test_accepted_by_the_validator_iff_composed_by_the_worker(pipe, tmp_path):
    store = LocalArtifactStore(tmp_path / "store")
    cache = ConceptCache(store, base=from_pipeline(pipe))
    composer = Composer(pipe, slots=40, lora_cache=2)
    corpus = variants(pipe, TINY, tmp_path / "seeds")
    assert len(corpus) > 400
    accepted, mismatches, bad_text = [], [], []
    for i, v in enumerate(corpus):
        bot, worker = bot_verdict(v), worker_verdict(v, i, store, cache, composer, pipe)
        if (bot is None) != (worker is None) or bot != worker:
            mismatches.append((v.name, bot, worker))
        for msg in (bot, worker):
            if msg is not None and not one_sentence(msg):
                bad_text.append((v.name, msg))
        if bot is None:
            accepted.append(v.name)
    assert not mismatches, mismatches[:10]
    assert not bad_text, bad_text[:10]
    # The seeds themselves and the harmless mutations are accepted; every class of damage is refused.
    seeds = [v.name for v in corpus if "|" not in v.name and not v.name.endswith(".pt")]
    assert set(seeds) <= set(accepted), set(seeds) - set(accepted)
    for harmless in ("padded header", "as F32", "alpha=0", "alpha=-4", "trigger arsenal", "ti 1 vectors",
                     "ti 16 vectors", "ti key <red>"):
        assert any(harmless in a for a in accepted), harmless
    for damage in ("=nan", "=inf", "truncated", "trailing garbage", "header length", "rank 0", "rank 257",
                   "drop ", "kb-slot", "endoftext", "alpha=nan", "duplicate keys", "data_offsets=", "dtype=I32",
                   "__metadata__=", "meta tokens", "ti 17 vectors", "ti 0 vectors", "two bundles", "sdxl"):
        hits = [v.name for v in corpus if damage in v.name]
        assert hits and not set(hits) & set(accepted), (damage, set(hits) & set(accepted))
