"""Nothing personal survives in Redis (the real worker on the tiny model): arq's result record keeps ids and keys
only (never the interaction token or the prompt), no event carries a token or a prompt, and a job of a user who
ran /forget after it was enqueued ends without an event, a result or a file."""

from __future__ import annotations

import asyncio
import time

from arq.constants import result_key_prefix

from gpu_worker import contract
from storage import keys
from tests.worker.conftest import put_face, read_events, wait_events
from tests.worker.test_generate import _payload

TOKEN = "interaction-token-do-not-keep-0123456789"
PROMPT = "capybara scoring a bicycle kick"


def _target(uid):
    return contract.DiscordTarget(channel_id=7, user_id=uid, guild_id=8, application_id=9, interaction_token=TOKEN,
                                  interaction_created_at=time.time() - 3600)  # expired: no Discord call here


async def _all_bytes(redis) -> bytes:
    out = []
    async for key in redis.scan_iter(match="*", count=1000):
        out.append(key)
        typ = (await redis.type(key)).decode()
        if typ == "string":
            out.append(await redis.get(key))
        elif typ == "stream":
            out += [v for _id, fields in await redis.xrange(key) for v in fields.values()]
        elif typ == "zset":
            out += await redis.zrange(key, 0, -1)
    return b"\n".join(out)


async def test_results_and_events_hold_no_token_and_no_prompt(arq_pool, store, start_worker, worker_settings):
    await start_worker()
    face = put_face(store, 61, 1, seed=3)
    p = _payload(601, 61, _target(61), face, count=1, prompt=PROMPT, negative_prompt="blurry " + PROMPT)
    await arq_pool.enqueue_job(contract.GENERATE_JOB, p.to_dict(), _job_id=contract.arq_job_id(601))
    (done,) = await wait_events(arq_pool, worker_settings.events_stream, lambda e: any(x.type == "job.done" for x in e))
    await asyncio.sleep(0.2)
    result = await arq_pool.get(result_key_prefix + contract.arq_job_id(601))
    assert result is not None and keys.outputs_prefix(61, 601).encode() in result  # ids and keys stay
    everything = await _all_bytes(arq_pool)
    assert TOKEN.encode() not in everything and PROMPT.encode() not in everything
    assert done.target is not None and done.target.interaction_token is None and "prompt" not in done.data


async def test_a_job_of_a_forgotten_user_ends_without_a_trace(arq_pool, store, start_worker, worker_settings):
    face = put_face(store, 62, 1, seed=4)
    p = _payload(602, 62, _target(62), face, count=1, prompt=PROMPT)
    await arq_pool.enqueue_job(contract.GENERATE_JOB, p.to_dict(), _job_id=contract.arq_job_id(602))
    # /forget ran after the job was enqueued (and, here, before a worker took it: the same path as mid-job, as the
    # worker checks the marker when it posts, emits and ends).
    await arq_pool.set(contract.forgotten_user_key(62), str(time.time() + 1), ex=contract.FORGOTTEN_TTL_S)
    w = await start_worker()
    for _ in range(300):
        if w.jobs_complete + w.jobs_failed >= 1 and not w.tasks:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # arq's after_job_end hook
    assert w.jobs_complete + w.jobs_failed == 1
    assert await read_events(arq_pool, worker_settings.events_stream) == []
    assert await arq_pool.get(result_key_prefix + contract.arq_job_id(602)) is None
    assert store.list(keys.user_prefix(62)) == []
    everything = await _all_bytes(arq_pool)
    assert b"users/62/" not in everything
    assert TOKEN.encode() not in everything and PROMPT.encode() not in everything
