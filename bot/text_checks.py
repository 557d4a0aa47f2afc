"""What members type, made safe to use and to echo. Torch-free, stdlib + ``kitbooth.render``.

- ``clean_text``: format and control characters (zero-width spaces and joiners, bidi overrides, BOM, soft
  hyphen...) removed, every kind of whitespace collapsed to one space.
- ``has_visible``: at least one character that draws something. Whitespace of every kind, format/control/
  private-use/unassigned characters, combining marks and variation selectors on their own, and the "blank"
  letters (Hangul fillers, braille blank) draw nothing: a prompt of only those is empty.
- ``shown``: a name echoed in a refusal — no markdown, no mentions, no invisible or lone-surrogate characters
  (always valid UTF-8), cut on a character boundary without a dangling combining mark.
"""

from __future__ import annotations

import unicodedata

from kitbooth.render import escape_markdown

# Categories that never draw on their own: controls, format, surrogates, private use, unassigned, separators,
# combining marks (they only modify a base character).
SILENT = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp", "Mn", "Mc", "Me"})
# Letters and symbols that render as blank space.
BLANKS = frozenset({"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800", "\u180e", "\u17b4", "\u17b5"})
_DROP = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
_MENTION_CHARS = "`@<>#"


def clean_text(text: str) -> str:
    kept = "".join(" " if ch.isspace() else ch for ch in (text or "") if ch.isspace()
                   or unicodedata.category(ch) not in _DROP)
    return " ".join(kept.split())


def has_visible(text: str) -> bool:
    return any(ch not in BLANKS and unicodedata.category(ch) not in SILENT for ch in text or "")


def shown(text: str, limit: int = 40) -> str:
    """``text`` as it may appear inside a refusal (Discord markdown escaped, at most ``limit`` characters)."""
    text = unicodedata.normalize("NFC", clean_text(text))
    text = "".join(ch for ch in text if ch not in _MENTION_CHARS)
    if len(text) > limit:
        text = text[: limit - 1]
        while text and unicodedata.category(text[-1]) in ("Mn", "Mc", "Me"):
            text = text[:-1]  # a mark cut from its letter would attach to the ellipsis
        text += "…"
    return escape_markdown(text) or "(blank)"
