"""What a member sees, as a picture: alice runs /generate, the real worker (tiny model, CPU, in-process, posting
through SimCord's REST) posts the result, and SimCord's preview page of the channel is screenshotted by headless
chromium. Then /forget's confirmation. Skipped without chromium (``apt-get install chromium``) or
SimCord's preview runtime (``pip install 'simcord[preview]'``).

``KITBOOTH_SCREENSHOT_DIR=docs`` (what ``scripts/screenshot.py`` sets) writes ``screenshot.png``,
``screenshot-forget.png``, ``screenshot-squad.png`` and ``screenshot-help-de.png`` there; otherwise into the
test's temp folder."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.bot.conftest import make_ready_face
from tests.bot.in_process import running_worker, simcord_poster, until, worker_settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PREVIEW = all(importlib.util.find_spec(m) for m in ("aiohttp", "markdown_it", "linkify_it", "regex"))
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed"),
              pytest.mark.skipif(not PREVIEW, reason="SimCord's preview needs `pip install simcord[preview]`")]
MAX_BYTES = 400_000


@pytest.fixture
def bot_settings(tmp_path, redis_url, tiny_model_dir):
    return worker_settings(tmp_path, redis_url, tiny_model_dir, tag="shot", generate_side=128)


@pytest.fixture
async def worker(arena, bot_settings, store):
    # the worker posts through SimCord
    async with running_worker(bot_settings, store, poster=simcord_poster(arena)) as w:
        yield w


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
    return await until(arena, pred, timeout, interval=0.05)


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


async def test_screenshot_of_a_squad_and_of_help_in_german(arena, worker, tmp_path):
    from tests.bot.conftest import with_locale
    from tests.worker.conftest import face_artifact
    from training.artifact import save_artifact

    s, env, alice, bob, ch = arena.services, arena.env, arena.alice, arena.bob, arena.channel
    for seed, member in enumerate((alice, bob), start=1):
        await make_ready_face(s, member.id, tokens=(f"<kb-face-{seed}>",), data=save_artifact(face_artifact(seed)))
    env.backend.advance_clock(time.time() - env.backend.clock.now().timestamp())
    await alice.slash(ch, "squad", prompt="lifting the trophy together", kit="Arsenal home", member1=bob)
    (invite,) = [m for m in ch.history() if m.content.startswith(bob.mention) and m.components]
    await bob.click(invite, label="✅ Approve")
    (job,) = await s.db.list_jobs(user_id=alice.id, kind="squad")

    async def done():
        j = await s.db.get_job(job.id)
        return j if j.status in ("done", "failed") else None

    assert (await _until(arena, done)).status == "done"
    result = ch.last_message
    assert result.attachments and bob.mention in result.content

    out = _out_dir(tmp_path)
    await _screenshot(env, ch, bob, result, out / "screenshot-squad.png", size=(1100, 1250))
    help_ = await with_locale(alice, "de").slash(ch, "help")
    assert "`/erstellen`" in help_.response.content, help_.response.content  # the German command names
    await _screenshot(env, ch, alice, help_, out / "screenshot-help-de.png", size=(1100, 1000))
    for name in ("screenshot-squad.png", "screenshot-help-de.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) < MAX_BYTES, (name, len(data))
