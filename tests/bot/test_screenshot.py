"""What a member sees, as a picture: alice runs /generate, the real worker (tiny model, CPU, in-process, posting
through SimCord's REST) posts the result, and SimCord's preview page of the channel is screenshotted by headless
chromium. Then /forget's confirmation. Skipped without chromium (``apt-get install chromium``) or
SimCord's preview runtime (``pip install 'simcord[preview]'``).

``KITBOOTH_SCREENSHOT_DIR=docs`` (what ``scripts/screenshot.py`` sets) writes ``screenshot.png`` and
``screenshot-forget.png`` there; otherwise into the test's temp folder."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

from tests.bot.conftest import make_ready_face

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PREVIEW = all(importlib.util.find_spec(m) for m in ("aiohttp", "markdown_it", "linkify_it", "regex"))
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed"),
              pytest.mark.skipif(not PREVIEW, reason="SimCord's preview needs `pip install simcord[preview]`")]
MAX_BYTES = 400_000


@pytest.fixture
def bot_settings(tmp_path, redis_url, tiny_model_dir):
    from kitbooth.settings import Settings

    tag = uuid.uuid4().hex[:8]
    return Settings(
        _env_file=None, data_dir=tmp_path, redis_url=redis_url, queue_name=f"kb:shot:{tag}:queue",
        events_stream=f"kb:shot:{tag}:events", base_model=str(tiny_model_dir), device="cpu", dtype="float32",
        max_batch=4, slice_seconds=30.0, poll_delay=0.01, safety_checker=False, discord_token=None, offline=True,
        job_timeout_s=120.0, batch_gather_s=0.05, ti_slots=8, sample_steps=2, train_samples=0, base_hidden_size=32,
        rate_limit_s=0, generate_steps=2, generate_side=128,
    )


async def _no_sleep(_s: float) -> None:
    return None


@pytest.fixture
async def worker(arena, bot_settings, store):
    from gpu_worker.engine import Engine
    from gpu_worker.poster import Poster
    from gpu_worker.worker import build_worker

    engine = Engine(bot_settings)
    engine.load()
    w = build_worker(bot_settings, store=store, engine=engine, handle_signals=False,
                     poster=Poster(arena.env.bot.http, sleep=_no_sleep))  # the worker posts through SimCord
    task = asyncio.create_task(w.async_run())
    yield w
    await asyncio.sleep(0.05)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await w.close()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def _out_dir(tmp_path: Path) -> Path:
    out = Path(os.environ.get("KITBOOTH_SCREENSHOT_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


async def _screenshot(env, channel, viewer, target, path: Path, size=(1100, 1400)) -> None:
    """Serve ``channel`` as ``viewer`` sees it, focused on ``target``; chromium writes a PNG; shrink it."""
    async with env.preview(channel, viewers=[viewer], layout="channel", display="responsive",
                           width=size[0], height=size[1]) as preview:
        await preview.show(target)
        with tempfile.TemporaryDirectory() as profile:
            raw = Path(profile) / "shot.png"
            proc = await asyncio.create_subprocess_exec(
                CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
                "--virtual-time-budget=5000", f"--screenshot={raw}", f"--window-size={size[0]},{size[1]}",
                preview.url, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            await asyncio.wait_for(proc.wait(), 90)  # the loop keeps serving the page meanwhile
            assert raw.exists(), "chromium wrote no screenshot"
            img = Image.open(raw).convert("RGB")
    img = img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.LANCZOS)
    buf = io.BytesIO()
    img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(buf, format="PNG", optimize=True)
    path.write_bytes(buf.getvalue())


async def _until(arena, pred, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await arena.bot.consumer.drain()
        value = await pred()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def test_screenshot_of_a_result_and_of_forget(arena, worker, tmp_path):
    from tests.worker.conftest import face_artifact
    from training.artifact import save_artifact

    s, env, alice, ch = arena.services, arena.env, arena.alice, arena.channel
    await make_ready_face(s, alice.id, tokens=("<kb-face-1>",), data=save_artifact(face_artifact(1)))
    env.backend.advance_clock(time.time() - env.backend.clock.now().timestamp())  # the worker checks the token
    r = await alice.slash(ch, "generate", prompt="lifting the trophy at anfield", count=4, seed=7)
    assert "queue" in r.response.content, r.response.content
    (job,) = await s.db.list_jobs(user_id=alice.id, kind="generate")

    async def done():
        j = await s.db.get_job(job.id)
        return j if j.status in ("done", "failed") else None

    assert (await _until(arena, done)).status == "done"
    (msg,) = [m for m in ch.history() if m.attachments]
    assert len(msg.attachments) == 4 and "lifting the trophy" in msg.content  # her /generate reply, edited
    labels = [c.label for row in msg.components for c in row.children]
    assert labels[:4] == ["U1", "U2", "U3", "U4"] and len(labels) == 7, labels

    out = _out_dir(tmp_path)
    await _screenshot(env, ch, alice, msg, out / "screenshot.png", size=(1100, 1150))
    forget = await alice.slash(ch, "forget")
    await _screenshot(env, ch, alice, forget, out / "screenshot-forget.png", size=(1100, 700))
    for name in ("screenshot.png", "screenshot-forget.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) < MAX_BYTES, (name, len(data))
