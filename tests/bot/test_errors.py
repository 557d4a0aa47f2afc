"""The global error handler: refusals are short ephemeral replies; bugs get an incident id; tokens never logged."""

from __future__ import annotations

import logging
import re

import pytest

from bot.app import COGS
from kitbooth.log_redaction import TokenRedactingFilter, install_log_redaction

pytestmark = pytest.mark.parametrize("bot_cogs", [[*COGS, "tests.bot.boom_cog"]])

INCIDENT = re.compile(r"Something went wrong \(incident ([0-9a-f]{6})\)\. Try again in a minute\.")


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.INFO)
    install_log_redaction()
    for h in logging.getLogger().handlers:  # caplog's handler too
        if not any(isinstance(f, TokenRedactingFilter) for f in h.filters):
            h.addFilter(install_log_redaction())
    return caplog


def _token_of(arena) -> str:
    for r in arena.env.http_requests:
        m = re.search(r"/interactions/\d+/([^/]+)/callback", r.path)
        if m:
            token = m.group(1)
    return token


async def test_unexpected_error_before_responding_shows_incident_and_hides_token(arena, logs):
    r = await arena.alice.slash(arena.channel, "boom")
    arena.expect_errors()
    m = INCIDENT.fullmatch(r.response.content)
    assert m and r.response.ephemeral
    token = _token_of(arena)
    text = "\n".join(rec.getMessage() + (rec.exc_text or "") for rec in logs.records)
    assert f"incident {m.group(1)}" in text and "RuntimeError" in text
    assert token not in logs.text and token not in text


async def test_unexpected_error_after_deferring_uses_the_followup(arena, logs):
    r = await arena.alice.slash(arena.channel, "boom-late")
    arena.expect_errors()
    assert INCIDENT.fullmatch(r.response.content) and r.response.ephemeral
    assert _token_of(arena) not in logs.text


async def test_user_facing_error_is_a_short_ephemeral_reply(arena, logs):
    r = await arena.alice.slash(arena.channel, "refuse")
    assert r.response.content == "You've used all 5 of today's images." and r.response.ephemeral
    assert "incident" not in logs.text


def test_redaction_filter_scrubs_bot_and_interaction_tokens(bot_cogs):
    f = TokenRedactingFilter(["MTIz.secret.token"])
    rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "token %s and %s", (
        "MTIz.secret.token", "aW50ZXJhY3Rpb246MTIzNDU2Nzg5OmFiY2RlZg.xyz"), None)
    assert f.filter(rec)
    assert "secret" not in rec.getMessage() and "aW50ZXJhY3Rpb24" not in rec.getMessage()
