"""Kits and styles imported by an admin are stored as they came (kohya / diffusers safetensors): the worker
must read them, not only KitBooth's own concept files."""

from __future__ import annotations

import hashlib

from gpu_worker import contract
from gpu_worker.context import CTX_KEY
from storage import keys
from tests.worker.conftest import put_face, target_of, wait_events


def _stored(store, key: str, path) -> contract.ConceptRef:
    data = path.read_bytes()
    store.put_bytes(key, data)
    return contract.ConceptRef(key=key, kind="kit" if "/concepts/1." in key else "style",
                               sha256=hashlib.sha256(data).hexdigest())


async def test_generate_with_imported_kohya_lora_kit_and_embedding_style(
    simcord_env, arq_pool, store, start_worker, worker_settings, engine, tmp_path
):
    from tests.training.concepts import make_artifact
    from training.formats import export

    kit_art = make_artifact(engine.pipe, method="lora", kind="kit", seed=3)
    style_art = make_artifact(engine.pipe, method="ti", kind="style", seed=4)
    kit_file = next(p for p in export(kit_art, "kohya", tmp_path / "kit", name="arsenal") if p.name.endswith("-lora.safetensors"))
    style_file = export(style_art, "kohya", tmp_path / "style", name="comic")[0]

    guild = simcord_env.create_guild()
    ch = guild.create_text_channel("booth")
    alice = guild.add_member(simcord_env.create_user("alice"))
    await alice.slash(ch, "draw", prompt="me")
    target = target_of(simcord_env.bot.interactions[-1])
    face = put_face(store, alice.id, 1, seed=1)
    kit = _stored(store, keys.guild_concept_key(guild.id, 1), kit_file)
    style = _stored(store, keys.guild_concept_key(guild.id, 2), style_file)
    await start_worker(http=simcord_env.bot.http)
    p = contract.GeneratePayload(
        job_id=301, user_id=alice.id, prompt="on the pitch", output_prefix=keys.outputs_prefix(alice.id, 301),
        target=target, guild_id=guild.id, face=face, kit=kit, kit_words="red shirt", style=style, style_words="comic book",
        count=1, seed=2, width=64, height=64, steps=3,
    )
    await arq_pool.enqueue_job(contract.GENERATE_JOB, p.to_dict(), _job_id=contract.arq_job_id(301))
    evs = await wait_events(arq_pool, worker_settings.events_stream,
                            lambda e: any(x.type in ("job.done", "job.failed") for x in e))
    end = next(e for e in evs if e.type in ("job.done", "job.failed"))
    assert end.type == "job.done", end.data
    assert store.exists(end.data["output_keys"][0])
    # Both imported files were parsed with their kind, and the kohya LoRA kept its weights.
    cache = start_worker.workers[-1].ctx[CTX_KEY].concepts
    kit_loaded = await cache.get(kit.key, kit.sha256, "kit")
    style_loaded = await cache.get(style.key, style.sha256, "style")
    assert kit_loaded.kind == "kit" and kit_loaded.unet_lora and kit_loaded.embeddings is None
    assert style_loaded.kind == "style" and style_loaded.embeddings is not None
