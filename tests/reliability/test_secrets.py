"""Secrets: the bot token and the members' interaction tokens never appear in the logs (every logger at DEBUG,
through the redaction the entry points install), the replies and messages members see, the metrics (bot and
worker), arq's stored results and events, or the files in the store (generated images, exported concept files) —
after a generation, a refused request, a job failure and an /export, with the real bot and the real worker."""

from __future__ import annotations

import base64
import logging
import secrets as secrets_module

import pytest
from prometheus_client import generate_latest

from kitbooth.log_redaction import install_log_redaction
from tests.bot.conftest import make_ready_face
from tests.bot.in_process import running_worker, simcord_poster, until, worker_settings
from tests.bot.test_forget_worker import redis_bytes
from tests.reliability.figures import count

pytestmark = pytest.mark.slow
SUITE = "secrets"
BOT_TOKEN = "MTAxMjM0NTY3ODkwMTIzNDU2.Gabcde.fake-bot-token-for-the-secrets-suite-00"


@pytest.fixture
def bot_settings(tmp_path, redis_url, tiny_model_dir):
    return worker_settings(tmp_path, redis_url, tiny_model_dir, tag="secrets", discord_token=BOT_TOKEN)


def real_shaped_tokens(backend, monkeypatch) -> None:
    """SimCord's interaction tokens in Discord's own shape (base64 of ``interaction:<id>:<random>``), so the
    redaction meets what production meets."""
    issue = backend.new_interaction

    def new_interaction(*args, **kwargs):
        record = issue(*args, **kwargs)
        del backend.interaction_tokens[record.token]
        raw = f"interaction:{record.id}:{secrets_module.token_hex(32)}".encode()
        record.token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        backend.interaction_tokens[record.token] = record.id
        return record

    monkeypatch.setattr(backend, "new_interaction", new_interaction)


async def test_no_token_reaches_logs_replies_metrics_results_or_files(arena, bot_settings, store, caplog,
                                                                      monkeypatch, doctor_clean):
    from tests.worker.conftest import face_artifact
    from training.artifact import save_artifact

    real_shaped_tokens(arena.env.backend, monkeypatch)
    caplog.set_level(logging.DEBUG)
    install_log_redaction(bot_settings.discord_token)  # what kitbooth.cli.main does for every process
    s, alice, bob, ch = arena.services, arena.alice, arena.bob, arena.channel
    await make_ready_face(s, alice.id, tokens=("ohwxalice",), data=save_artifact(face_artifact(1)))
    await s.db.record_consent(alice.id)
    replies = []
    async with running_worker(bot_settings, store, poster=simcord_poster(arena)) as w:
        replies.append(await alice.slash(ch, "generate", prompt="a goal celebration", count=1))
        replies.append(await bob.slash(ch, "generate", prompt="me"))  # refused: Bob has no face
        replies.append(await alice.slash(ch, "export"))

        async def all_ended():
            jobs = await s.db.list_jobs()
            return jobs if jobs and all(j.status in ("done", "failed", "cancelled") for j in jobs) else None

        jobs = await until(arena, all_ended, 120, interval=0.05)
        worker_metrics = generate_latest(w.ctx["kitbooth"].metrics.registry).decode() if "kitbooth" in w.ctx else ""
    tokens = {j.payload["target"]["interaction_token"] for j in jobs if j.payload.get("target")}
    tokens |= {r.interaction.token for r in replies if getattr(r, "interaction", None) is not None} - {None}
    assert tokens
    secrets = [BOT_TOKEN, *tokens]

    seen = {
        "logs": caplog.text,
        "replies and messages": "\n".join(
            [m.content for m in ch.history()] + [m.content for r in replies for m in [r.response, *r.followups] if m]
            + [m.content for dm in arena.env.backend.messages.values() for m in dm.values() if m.content]),
        "metrics": worker_metrics + await arena.bot.metrics.render(s),
        "redis (arq results, events)": b"\n".join(await redis_bytes(s.redis)).decode("utf-8", "replace"),
        "store files": b"\n".join(p.read_bytes() for p in store.root.rglob("*") if p.is_file()).decode("latin-1"),
    }
    leaks = {where: [t[:12] for t in secrets if t and t in text] for where, text in seen.items()}
    assert all(not v for v in leaks.values()), leaks
    redacted = caplog.text.count("[interaction-token]")
    assert redacted, "no log line carried a token: the search above proved nothing"
    assert any(store.list(f"users/{alice.id}/exports/")), "the export wrote files"
    await doctor_clean(s.settings, SUITE)
    count(SUITE, secrets=len(secrets), places_searched=len(seen), leaks=sum(map(len, leaks.values())),
          log_lines=len(caplog.records), redacted_in_logs=redacted)
