"""Daily quotas and a short per-user rate limit for image requests. Torch-free.

A user's daily quota (images per UTC day) is, in order: their own override (``users.daily_quota``), the
guild's (``guild_settings.daily_quota``), the deployment default (``Settings.daily_quota``). Each request must
also wait ``Settings.rate_limit_s`` after the previous one, and a user may have at most ``MAX_ACTIVE`` image jobs
queued or running at once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from kitbooth.errors import QuotaExceeded
from kitbooth.i18n import Duration, keyed

if TYPE_CHECKING:
    from bot.services import Services

MAX_ACTIVE = 3
IMAGE_KINDS = ("generate", "vary", "reroll", "upscale", "squad")


def day_start(now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def _until_reset(now: datetime | None = None) -> Duration:
    now = now or datetime.now(UTC)
    left = day_start(now) + timedelta(days=1) - now
    return Duration(int(left.total_seconds()) // 60 * 60)  # to the minute


async def daily_quota(services: Services, user_id: int, guild_id: int | None) -> int:
    user = await services.db.get_user(user_id)
    if user is not None and user.daily_quota is not None:
        return user.daily_quota
    if guild_id is not None:
        gs = await services.db.guild_settings(guild_id)
        if gs.daily_quota is not None:
            return gs.daily_quota
    return services.settings.daily_quota


async def images_left(services: Services, user_id: int, guild_id: int | None) -> tuple[int, int]:
    """(images left today, the quota)."""
    quota = await daily_quota(services, user_id, guild_id)
    used = await services.db.count_images_since(user_id, day_start().isoformat(timespec="milliseconds"))
    return max(0, quota - used), quota


async def check_image_request(services: Services, user_id: int, guild_id: int | None, images: int) -> None:
    """Raise ``QuotaExceeded`` when this request would pass the quota, the rate limit or the active cap."""
    active = [j for j in await services.db.active_jobs(user_id) if j.kind in IMAGE_KINDS]
    if len(active) >= MAX_ACTIVE:
        raise keyed(QuotaExceeded, "refusal.too_many_active", count=len(active))
    left, quota = await images_left(services, user_id, guild_id)
    if images > left:
        if left == 0:
            raise keyed(QuotaExceeded, "refusal.quota_used", quota=quota, until=_until_reset())
        raise keyed(QuotaExceeded, "refusal.quota_partial", left=left, quota=quota)
    rate = services.settings.rate_limit_s
    last = services.last_request_at
    now = services.clock()
    prev = last.get(user_id)
    if rate > 0 and prev is not None and now - prev < rate:
        raise keyed(QuotaExceeded, "error.cooldown", seconds=max(1, round(rate - (now - prev))))
    last[user_id] = now
