"""Translations: message catalogues, the locale fallback chain and locale-aware numbers. Torch-free, no discord.

Every text a member sees has a stable key (``refusal.prompt_too_long``) whose English text lives in
``kitbooth/locales/en/LC_MESSAGES/kitbooth.po`` and whose translations live in one ``.po`` file per language
(``kitbooth/locales/<lang>/LC_MESSAGES/kitbooth.po``). Keys, not English, are the msgids, so editing an English
text never orphans its translations. Catalogues are read with Babel's ``read_po`` once per process (no
compiled ``.mo``: no build step, and a native speaker's edit is live on the next start).

    translate("progress.training", "de", step=3, total=10)     # the member's language, else English
    Lang.pick(interaction.locale, interaction.guild_locale)     # the fallback chain → a shipped language

Fields are ``str.format`` placeholders (``{limit}``); float fields are written the language's way ("1,5" in
German, ``fmt_number``), ``Duration`` fields with ``fmt_duration``; ints stay plain digits. Prompts are never
translated.
"""

from __future__ import annotations

import functools
import logging
import string
from datetime import timedelta
from pathlib import Path
from typing import Any

from babel import Locale as BabelLocale
from babel.dates import format_timedelta
from babel.messages.pofile import read_po
from babel.numbers import format_decimal

log = logging.getLogger(__name__)

LOCALES_DIR = Path(__file__).with_name("locales")
DOMAIN = "kitbooth"
ENGLISH = "en"
# Discord locale code → catalogue folder. Discord's own codes are what interactions and guilds carry.
SHIPPED: dict[str, str] = {
    "en-US": "en", "es-ES": "es_ES", "pt-BR": "pt_BR", "fr": "fr", "de": "de", "it": "it", "nl": "nl", "tr": "tr",
}
DISCORD_CODE = {folder: code for code, folder in SHIPPED.items()}  # "pt_BR" → "pt-BR"
_BY_LANGUAGE = {folder.split("_")[0]: folder for folder in SHIPPED.values()}  # "es" → "es_ES" (es-419 too)


def _code(value: Any) -> str:
    """A discord.Locale, a str or None → the locale string ("" for None)."""
    if value is None:
        return ""
    return str(getattr(value, "value", value))


def folder_of(locale: Any) -> str | None:
    """The catalogue folder for a locale code ("pt-BR" → "pt_BR", "es-419" → "es_ES"), None when unshipped."""
    code = _code(locale).replace("_", "-")
    if not code:
        return None
    for discord_code, folder in SHIPPED.items():
        if code.lower() in (discord_code.lower(), folder.lower().replace("_", "-")):
            return folder
    return _BY_LANGUAGE.get(code.split("-")[0].lower())


class Lang:
    """The fallback chain: the member's locale → the server's preferred locale → English."""

    @staticmethod
    def pick(*candidates: Any) -> str:
        """The first candidate KitBooth ships a catalogue for, as a catalogue folder ("de"); else "en"."""
        for c in candidates:
            folder = folder_of(c)
            if folder is not None:
                return folder
        return ENGLISH


@functools.cache
def catalogue(folder: str) -> dict[str, str]:
    """key → text of one language (empty when the file is missing; translate falls back to English)."""
    path = LOCALES_DIR / folder / "LC_MESSAGES" / f"{DOMAIN}.po"
    if not path.is_file():
        return {}
    with path.open("rb") as fh:
        cat = read_po(fh, locale=None, domain=DOMAIN)
    return {str(m.id): str(m.string) for m in cat if m.id and m.string and not m.fuzzy}


def languages() -> list[str]:
    """Every catalogue folder shipped, English first."""
    found = sorted(p.name for p in LOCALES_DIR.iterdir() if (p / "LC_MESSAGES" / f"{DOMAIN}.po").is_file())
    return [ENGLISH] + [f for f in found if f != ENGLISH]


def placeholders(text: str) -> set[str]:
    """The ``{field}`` names a text uses."""
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def _babel(folder: str) -> str:
    return "en_US" if folder == ENGLISH else folder


def fmt_number(value: float | int, locale: Any = ENGLISH, *, digits: int | None = None) -> str:
    """``value`` as the language writes it (1.5 → "1,5" in German); ``digits`` fixes the decimals."""
    folder = Lang.pick(locale)
    pattern = None if digits is None else ("#,##0" + ("." + "0" * digits if digits else ""))
    return format_decimal(value, format=pattern, locale=_babel(folder))


class Duration(float):
    """Seconds, as a field: ``translate`` writes it with ``fmt_duration`` ("1 Std. 5 Min." in German)."""


def fmt_duration(seconds: float, locale: Any = ENGLISH) -> str:
    """A short duration in the language's own units: "42 sec", "1 min 35 sec", "3 hr 5 min" (to the minute
    past an hour)."""
    folder = _babel(Lang.pick(locale))
    s = max(int(round(seconds)), 0)
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)

    def unit(amount: int, granularity: str) -> str:
        td = timedelta(**{f"{granularity}s": amount})
        return format_timedelta(td, threshold=1000, granularity=granularity, format="short", locale=folder)

    if hours:
        parts = [unit(hours, "hour")] + ([unit(minutes, "minute")] if minutes else [])
    elif minutes:
        parts = [unit(minutes, "minute")] + ([unit(secs, "second")] if secs else [])
    else:
        parts = [unit(secs, "second")]
    return " ".join(parts)


def _fields(folder: str, fields: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in fields.items():
        if isinstance(v, Duration):
            out[k] = fmt_duration(v, folder)
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            out[k] = v
        elif isinstance(v, int):  # counts, limits, ids: plain digits in every language ("10200 characters")
            out[k] = str(v)
        else:  # floats with one decimal ("1,5" in German) unless pre-formatted by the caller
            out[k] = fmt_number(v, folder, digits=1)
    return out


def _plural(key: str, folder: str, fields: dict[str, Any]) -> str:
    """``key.one`` / ``key.other`` by the language's plural rule for ``count`` (when the key has forms)."""
    count = fields.get("count")
    if not isinstance(count, int) or f"{key}.other" not in catalogue(ENGLISH):
        return key
    form = BabelLocale.parse(_babel(folder)).plural_form(count)
    return f"{key}.one" if form == "one" else f"{key}.other"


def translate(key: str, locale: Any = ENGLISH, /, **fields: Any) -> str:
    """The text of ``key`` in ``locale`` (a Discord code, a folder or a discord.Locale), English when that
    language lacks it, the key itself when English lacks it too (logged: a missing catalogue entry).
    A key with plural forms (``key.one``/``key.other`` in the catalogue) is chosen by its ``count`` field."""
    folder = Lang.pick(locale)
    key = _plural(key, folder, fields)
    text = catalogue(folder).get(key) or catalogue(ENGLISH).get(key)
    if text is None:
        log.warning("i18n: no English text for key %r", key)
        return key
    try:
        return text.format(**_fields(folder, fields))
    except (KeyError, IndexError, ValueError):  # a broken translation must not break the reply
        log.warning("i18n: bad placeholders in %r for %s", key, folder)
        return catalogue(ENGLISH)[key].format(**_fields(ENGLISH, fields))


def keyed(cls: type, key: str, /, **fields: Any) -> Any:
    """A ``UserFacingError`` subclass carrying ``key`` and ``fields`` (its message: the English text), so the
    bot's error handler and the worker's runner render it in the member's language."""
    return cls(translate(key, ENGLISH, **fields), key=key, fields=fields)


def render_error(error: Any, locale: Any) -> str:
    """A ``UserFacingError``'s text in ``locale`` (its English message when it carries no key)."""
    key = getattr(error, "key", None)
    if not key:
        return str(error)
    return translate(key, locale, **(getattr(error, "fields", None) or {}))


t = translate
