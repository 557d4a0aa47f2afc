"""Which training method a member may pick: the advanced ``method`` option of ``/train``, ``/kit train`` and
``/style train``, one rule for all three (``bot.training_flow.start_training`` applies it).

The methods are ``training.config.METHODS`` (torch-free; the worker checks a payload against the same list), per
kind in a sensible order, the kind's default first. DreamBooth trains a copy of the whole UNet, the heaviest job
there is, so for faces — which any member may train — a server must allow it first (``/kitbooth settings
allow_dreambooth``); kits and styles are trained by the server's managers, who may pick it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from discord import app_commands

from kitbooth.errors import InvalidInput, NotAllowed
from kitbooth.i18n import keyed
from training.config import METHODS

if TYPE_CHECKING:
    from bot.services import Services

DEFAULTS = {"face": "pivotal", "kit": "lora", "style": "lora"}
_ORDER = {
    "face": ("pivotal", "lora", "ti", "hypernetwork", "dreambooth"),
    "kit": ("lora", "pivotal", "ti", "hypernetwork", "dreambooth"),
    "style": ("lora", "pivotal", "ti", "hypernetwork", "dreambooth"),
}
CHOICES: dict[str, tuple[str, ...]] = {kind: tuple(m for m in order if m in METHODS) for kind, order in _ORDER.items()}
LABELS = {
    "pivotal": "Pivotal tuning (embedding + LoRA)",
    "lora": "LoRA",
    "ti": "Textual inversion (smallest file)",
    "hypernetwork": "Hypernetwork (A1111)",
    "dreambooth": "DreamBooth (heaviest)",
}
DREAMBOOTH_OFF = ("DreamBooth is the heaviest training, and this server has not allowed it for faces — pick "
                  "another method, or ask an admin to turn on `allow_dreambooth` in `/kitbooth settings`.")


def choices(kind: str) -> list[app_commands.Choice[str]]:
    """The ``method`` option's choices for ``kind``, the default marked."""
    # Each label has its own catalogue key (kitbooth/locales): "LoRA" and "LoRA — default" share a value.
    return [app_commands.Choice(name=app_commands.locale_str(
        LABELS.get(m, m) + (" — default" if m == DEFAULTS[kind] else ""),
        key=f"choice.method.{m}" + (".default" if m == DEFAULTS[kind] else "") + ".name"), value=m)
            for m in CHOICES[kind]]


async def method_for(services: Services, guild_id: int | None, kind: str, method: str | None) -> str:
    """The method a training of ``kind`` runs with (``None``: the kind's default); raises a ``UserFacingError``."""
    if method is None:
        return DEFAULTS[kind]
    if method not in CHOICES[kind]:
        raise keyed(InvalidInput, f"refusal.method_unknown.{kind}", method=method[:20],
                    choices=", ".join(CHOICES[kind]))
    if method == "dreambooth" and kind == "face":
        allowed = guild_id is not None and (await services.db.guild_settings(guild_id)).allow_dreambooth
        if not allowed:
            raise keyed(NotAllowed, "refusal.dreambooth_off")
    return method
