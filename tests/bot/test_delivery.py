"""The bot's fallback delivery posts exactly what the worker would (``kitbooth.render``): checked on the message
the bot actually posts through SimCord — its content, buttons, and the PNG attachments themselves, which keep
the A1111 ``parameters`` text and the AI-generated mark that ``training.png_metadata`` writes."""

from __future__ import annotations

import io

from PIL import Image

from kitbooth import render
from storage import keys
from tests.bot.conftest import emit, make_ready_face
from training.png_metadata import IPTC_TRAINED_ALGORITHMIC, a1111_parameters, png_bytes


def worker_png(prompt: str, seed: int) -> bytes:
    """A PNG as the worker stores it (the same function ``training.generate`` calls)."""
    params = a1111_parameters(prompt, "", steps=2, cfg=7.0, seed=seed, size=(64, 64), model="tiny")
    return png_bytes(Image.new("RGB", (64, 64), (seed % 255, 90, 160)), params)


async def test_generate_result_posted_by_the_bot_keeps_parameters_and_ai_mark(arena):
    s, alice = arena.services, arena.alice
    await make_ready_face(s, alice.id)
    await alice.slash(arena.channel, "generate", prompt="lifting the cup in the rain", count=2, seed=5)
    (job,) = await s.db.list_jobs(user_id=alice.id, kind="generate")
    out, stored = [], []
    for i in range(2):
        key = keys.output_key(alice.id, job.id, i)
        data = worker_png(job.payload["prompt"], 5 + i)
        s.store.put_bytes(key, data)
        out.append(key)
        stored.append(data)
    # The worker could not reach Discord: posted=False, so the bot delivers from the stored files.
    await emit(s, "job.done", job.id, alice.id, "generate", posted=False, output_keys=out, seeds=[5, 6],
               prompt=job.payload["prompt"], nsfw=[False, False])
    await arena.bot.consumer.drain()

    msg = arena.channel.last_message
    expected = render.generate_result(job_id=job.id, user_id=alice.id, prompt=job.payload["prompt"], seeds=[5, 6],
                                      pngs=stored, nsfw=[False, False]).with_mention(alice.id)
    assert msg.content == expected.content and alice.mention in msg.content
    assert [a.filename for a in msg.attachments] == [name for name, _ in expected.files]
    assert [c.custom_id for row in msg.components for c in row.children] == [b.custom_id for b in expected.buttons]
    for attachment, original in zip(msg.attachments, stored, strict=True):
        data = await attachment.read()
        assert data == original  # attached as stored, never re-encoded
        png = Image.open(io.BytesIO(data))
        assert png.text["parameters"].startswith("lifting the cup in the rain\nNegative prompt:")
        assert "Seed: " in png.text["parameters"]
        assert png.text["ai_generated"] == "true" and png.text["DigitalSourceType"] == IPTC_TRAINED_ALGORITHMIC


async def test_failure_and_cancel_come_from_the_renderer(arena):
    s, alice = arena.services, arena.alice
    await make_ready_face(s, alice.id)
    await alice.slash(arena.channel, "generate", prompt="one", count=1)
    await alice.slash(arena.channel, "generate", prompt="two", count=1)
    first, second = await s.db.list_jobs(user_id=alice.id, kind="generate")
    await emit(s, "job.failed", first.id, alice.id, "generate", reason="The GPU ran out of memory. Try count 1.")
    await arena.bot.consumer.drain()
    assert arena.channel.last_message.content == render.failure_result(
        "The GPU ran out of memory. Try count 1.").with_mention(alice.id).content
    await emit(s, "job.cancelled", second.id, alice.id, "generate")
    await arena.bot.consumer.drain()
    assert arena.channel.last_message.content == render.cancelled_result().with_mention(alice.id).content
    assert (await s.db.get_job(second.id)).status == "cancelled"
