"""Posting to Discord — the only module of gpu_worker/ and training/ that imports discord.

Built on discord.py's REST ``HTTPClient`` (injected: in production ``make_http_client(token)``; in tests the
simulated bot's ``bot.http`` from SimCord). While the interaction token is valid the worker edits the original
interaction response (``PATCH /webhooks/{app}/{token}/messages/@original``); after that it sends a new channel
message that mentions the user. discord.py's HTTPClient already waits out 429s (per bucket and global) and
retries 500/502/504/524 a few times; on top of that the final post is retried with backoff on any 5xx, 429 or
connection error, and when it still fails the caller emits its event with ``posted=False`` so the bot delivers
the result later. Progress edits are best effort: one attempt, never a fallback message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord
from discord.http import HTTPClient, Route, handle_message_parameters

from gpu_worker.contract import DiscordTarget
from kitbooth.render import Outgoing
from kitbooth.render_discord import allowed_mentions, files_of, view_of

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class PostResult:
    posted: bool
    message_id: int | None = None
    via: str = ""  # "original" | "channel" | "message" | ""
    error: str = ""


async def make_http_client(token: str) -> HTTPClient:
    """A logged-in REST client for production (no gateway)."""
    http = HTTPClient(asyncio.get_running_loop())
    await http.static_login(token)
    return http


def _retryable(exc: BaseException) -> float | None:
    """Seconds to wait before retrying ``exc`` (None: do not retry)."""
    if isinstance(exc, discord.RateLimited):
        return float(exc.retry_after)
    if isinstance(exc, discord.HTTPException):
        if exc.status == 429:
            retry_after = None
            resp = getattr(exc, "response", None)
            headers = getattr(resp, "headers", None) or {}
            with contextlib.suppress(TypeError, ValueError):
                retry_after = float(headers.get("Retry-After"))
            return retry_after if retry_after is not None else 1.0
        return 0.0 if exc.status >= 500 else None
    if isinstance(exc, aiohttp.ClientError | OSError | asyncio.TimeoutError):
        return 0.0
    return None


class Poster:
    """Progress edits and final messages for one worker."""

    def __init__(
        self, http: HTTPClient, *, attempts: int = 5, backoff: float = 0.5, max_backoff: float = 8.0,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ):
        self.http = http
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep

    # --- one REST call ---------------------------------------------------------------------------
    def _params(self, msg: Outgoing, *, mention: int | None = None, edit: bool = False):
        """discord.py's multipart/JSON parameters of ``msg``, from ``kitbooth.render_discord`` (the bot's
        fallback builds its messages from the same functions)."""
        out = msg.with_mention(mention) if mention else msg
        kwargs: dict[str, Any] = {"content": out.content, "allowed_mentions": allowed_mentions(mention)}
        view = view_of(out)
        if view is not None or edit:
            kwargs["view"] = view
        files = files_of(out)
        if files:
            kwargs["files"] = files
        elif edit:
            kwargs["attachments"] = []  # an edit without files drops earlier previews
        return handle_message_parameters(**kwargs)

    async def _send(self, route: Route, msg: Outgoing, *, mention: int | None = None, edit: bool = False) -> Any:
        params = self._params(msg, mention=mention, edit=edit)
        try:
            if params.files:
                return await self.http.request(route, files=params.files, form=params.multipart)
            return await self.http.request(route, json=params.payload)
        finally:
            for f in params.files or ():
                f.close()

    def _original(self, target: DiscordTarget) -> Route:
        return Route(
            "PATCH", "/webhooks/{application_id}/{interaction_token}/messages/@original",
            application_id=target.application_id, interaction_token=target.interaction_token,
        )

    async def _with_retries(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                return await call()
            except Exception as exc:  # noqa: BLE001 - classified below
                wait = _retryable(exc)
                if wait is None or attempt == self.attempts:
                    raise
                wait = max(wait, delay * (0.5 + random.random()))
                log.warning("discord %s failed (%s), retry %d in %.2fs", what, exc, attempt, wait)
                await self._sleep(wait)
                delay = min(delay * 2, self.max_backoff)
        raise AssertionError("unreachable")

    # --- public ----------------------------------------------------------------------------------
    async def progress(self, target: DiscordTarget, msg: Outgoing) -> bool:
        """Best-effort edit of the job's visible message; False when nothing could be edited."""
        try:
            if target.token_valid():
                await self._send(self._original(target), msg, edit=True)
                return True
            if target.message_id:
                route = Route("PATCH", "/channels/{channel_id}/messages/{message_id}",
                              channel_id=target.channel_id, message_id=target.message_id)
                await self._send(route, msg, edit=True)
                return True
        except (TimeoutError, discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            log.info("progress edit skipped: %s", exc)
        return False

    async def final(self, target: DiscordTarget, msg: Outgoing, *, in_channel: bool = False) -> PostResult:
        """Deliver a result or failure: edit @original while the token is valid, else a channel message that
        mentions the user. ``in_channel``: always the channel message (a training's reply was private and said
        "I'll post in this channel"). Never raises for Discord errors: ``posted=False`` says the bot must
        deliver it."""
        if target.token_valid() and not in_channel:
            try:
                data = await self._with_retries(
                    "edit original", lambda: self._send(self._original(target), msg, edit=True)
                )
                return PostResult(True, _msg_id(data), "original")
            except discord.NotFound:
                log.info("original response gone; falling back to a channel message")
            except discord.HTTPException as exc:
                if exc.status not in (401, 403, 404) and _retryable(exc) is not None:
                    return PostResult(False, error=str(exc))
                log.info("editing the original failed (%s); falling back to a channel message", exc)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                return PostResult(False, error=str(exc))
        route = Route("POST", "/channels/{channel_id}/messages", channel_id=target.channel_id)
        try:
            data = await self._with_retries(
                "channel message", lambda: self._send(route, msg, mention=target.user_id)
            )
        except (TimeoutError, discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            log.warning("posting to channel %s failed: %s", target.channel_id, exc)
            return PostResult(False, error=str(exc))
        return PostResult(True, _msg_id(data), "channel")


def _msg_id(data: Any) -> int | None:
    try:
        return int(data["id"])
    except (TypeError, KeyError, ValueError):
        return None
