"""Every image a member receives from the worker carries A1111's ``parameters`` text and the AI-generated mark:
checked on the attachments of the message the worker ACTUALLY posted (SimCord's stored message, which is what
discord.py sent over HTTP), for a generation and an upscale."""

from __future__ import annotations

import io

from PIL import Image

from gpu_worker import contract
from storage import keys
from tests.worker.conftest import put_face, target_of, wait_events
from tests.worker.test_generate import _payload


def assert_marked(data: bytes, prompt: str) -> None:
    im = Image.open(io.BytesIO(data))
    text = im.text  # tEXt/iTXt chunks
    assert prompt in text["parameters"] and "Seed:" in text["parameters"] and "Model:" in text["parameters"]
    assert text["ai_generated"] == "true"
    assert "trainedAlgorithmicMedia" in text["DigitalSourceType"]


async def _slash(env, user, ch):
    result = await user.slash(ch, "draw", prompt="me")
    return result, target_of(env.bot.interactions[-1])


async def test_posted_generate_and_upscale_images_carry_parameters_and_the_ai_mark(
    simcord_env, arq_pool, store, start_worker, worker_settings
):
    guild = simcord_env.create_guild()
    ch = guild.create_text_channel("booth")
    alice = guild.add_member(simcord_env.create_user("alice"))
    await start_worker(http=simcord_env.bot.http)

    gen_result, target = await _slash(simcord_env, alice, ch)
    p = _payload(701, alice.id, target, put_face(store, alice.id, 1, seed=2), count=2, prompt="on the terrace")
    await arq_pool.enqueue_job(contract.GENERATE_JOB, p.to_dict(), _job_id=contract.arq_job_id(701))
    evs = await wait_events(arq_pool, worker_settings.events_stream, lambda e: any(x.type == "job.done" for x in e))
    assert next(e for e in evs if e.job_id == 701).posted
    posted = gen_result.response.attachments
    assert len(posted) == 2
    for a in posted:
        assert_marked(await a.read(), "on the terrace")

    up_result, target = await _slash(simcord_env, alice, ch)
    up = contract.UpscalePayload(job_id=702, user_id=alice.id, source_key=keys.output_key(alice.id, 701, 0),
                                 output_key=keys.output_key(alice.id, 702, 0), target=target,
                                 prompt="on the terrace", seed=11)
    await arq_pool.enqueue_job(contract.UPSCALE_JOB, up.to_dict(), _job_id=contract.arq_job_id(702))
    await wait_events(arq_pool, worker_settings.events_stream,
                      lambda e: any(x.type == "job.done" and x.job_id == 702 for x in e))
    [a] = up_result.response.attachments
    data = await a.read()
    assert_marked(data, "on the terrace")
    assert Image.open(io.BytesIO(data)).size == (128, 128)
