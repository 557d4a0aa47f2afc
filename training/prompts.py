"""Prompt building and checking. Torch-free: the bot imports this to validate prompts before enqueueing.

The template puts the things that must survive first (the face trigger and the kit words), then the user's
text, then the style. CLIP sees 77 tokens (75 after the start/end tokens); a prompt that does not fit is
truncated **explicitly**: only the user's part is cut, and ``BuiltPrompt.notice`` says what was dropped.

Token counts are exact when a tokenizer is given (any object with ``__call__`` returning ``input_ids`` or
with ``encode``, e.g. ``CLIPTokenizer``) and a conservative over-estimate otherwise, so a prompt that the
estimate accepts always fits.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

#: CLIP's window: 77 positions, two of them the start and end tokens.
MAX_TOKENS = 75

DEFAULT_NEGATIVE = (
    "lowres, blurry, worst quality, jpeg artifacts, deformed face, disfigured, bad anatomy, extra fingers, "
    "mutated hands, watermark, text, signature, cropped, out of frame"
)

#: Things a user may not type: CLIP's special tokens, our placeholder/slot tokens, any ``<...>`` token syntax.
RESERVED_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"<\|startoftext\|>", re.IGNORECASE),
    re.compile(r"<\|endoftext\|>", re.IGNORECASE),
    re.compile(r"<\s*kb[-_][^>]*>", re.IGNORECASE),
    re.compile(r"<[^<>\s]{1,100}>"),
)

# A placeholder token such as "<kb-face-0>" or "<kb-slot-12>": counted as one token (it is an added token).
_PLACEHOLDER = re.compile(r"<kb-[a-z0-9_-]+>", re.IGNORECASE)
# Roughly CLIP's pre-tokenizer: letters runs, single digits, punctuation runs.
_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+", re.UNICODE)


@dataclass(frozen=True)
class BuiltPrompt:
    text: str
    negative: str
    truncated: bool = False
    notice: str | None = None
    tokens: int = 0  # token count of ``text`` (exact with a tokenizer, else an upper estimate)


def find_reserved(text: str) -> list[str]:
    """Every reserved token the text contains (in order of appearance, no duplicates)."""
    hits: list[tuple[int, str]] = []
    for pat in RESERVED_PATTERNS:
        hits.extend((m.start(), m.group(0)) for m in pat.finditer(text))
    seen: set[str] = set()
    out: list[str] = []
    for _, tok in sorted(hits):
        if tok not in seen:
            seen.add(tok)
            out.append(tok)
    return out


def _estimate_piece(piece: str) -> int:
    if not piece.isascii():
        return len(piece.encode("utf-8"))  # worst case: one token per byte
    if piece[0].isalpha():
        # Common words are one token; rare words split into pieces of >= 2-3 characters.
        return max(1, math.ceil(len(piece) / 3))
    return len(piece)  # digits and punctuation: at most one token per character


def count_tokens(text: str, tokenizer: Any = None) -> int:
    """Tokens ``text`` takes in CLIP's window, without the start/end tokens.

    Placeholder tokens (``<kb-...>``) count as one each (they are added tokens on the worker). With a
    tokenizer the rest is counted exactly, else over-estimated.
    """
    n = len(_PLACEHOLDER.findall(text))
    rest = _PLACEHOLDER.sub(" ", text)
    if tokenizer is not None:
        if hasattr(tokenizer, "encode"):
            ids = tokenizer.encode(rest, add_special_tokens=False, verbose=False)
        else:
            ids = tokenizer(rest, add_special_tokens=False, verbose=False)["input_ids"]
        return n + len(ids)
    return n + sum(_estimate_piece(p) for p in _PIECES.findall(rest.lower()))


def _fit_words(text: str, budget: int, tokenizer: Any) -> tuple[str, str]:
    """The longest word prefix of ``text`` within ``budget`` tokens, and the part that was cut."""
    words = text.split()
    lo, hi = 0, len(words)
    while lo < hi:  # binary search on the number of words kept
        mid = (lo + hi + 1) // 2
        if count_tokens(" ".join(words[:mid]), tokenizer) <= budget:
            lo = mid
        else:
            hi = mid - 1
    kept = " ".join(words[:lo]).rstrip(" ,;")
    return kept, " ".join(words[lo:])


def _join(parts: list[str]) -> str:
    return ", ".join(p.strip(" ,") for p in parts if p and p.strip(" ,"))


def _subject(face_trigger: str | None, kit_words: str | None, style_words: str | None) -> str:
    lead = "" if style_words else "a photo of "
    if face_trigger and kit_words:
        return f"{lead}{face_trigger} person wearing {kit_words}"
    if face_trigger:
        return f"{lead}{face_trigger} person"
    if kit_words:
        return f"{lead}a person wearing {kit_words}"
    return ""


def _short(text: str, n: int = 70) -> str:
    return text if len(text) <= n else text[: n // 2].rstrip() + " … " + text[-(n // 2) :].lstrip()


def build_prompt(
    user_prompt: str,
    *,
    face_trigger: str | None,
    kit_words: str | None,
    style_words: str | None = None,
    negative: str | None = None,
    tokenizer: Any = None,
    max_tokens: int = MAX_TOKENS,
    subject: str | None = None,
) -> BuiltPrompt:
    """Fill the template "a photo of {face} person wearing {kit}, {user prompt}, {style}".

    The face trigger and kit words always survive: if the whole does not fit CLIP's window, the user's
    text is cut word by word (then the style, if even that is not enough) and ``notice`` names what was cut.
    ``negative`` defaults to :data:`DEFAULT_NEGATIVE`; a user negative that does not fit is cut likewise.
    """
    user = " ".join(user_prompt.split())
    style = " ".join((style_words or "").split())
    # ``subject`` replaces the template's one-person subject (a squad scene: "a photo of 3 football players ...").
    subject = _subject(face_trigger, kit_words, style) if subject is None else " ".join(subject.split())
    notices: list[str] = []
    truncated = False

    fixed = _join([subject, style])
    if count_tokens(fixed, tokenizer) > max_tokens and style:
        # Face and kit must survive: the style is cut before them.
        budget = max_tokens - count_tokens(subject + ",", tokenizer)
        style, cut = _fit_words(style, max(budget, 0), tokenizer)
        truncated = True
        notices.append(f'style shortened, dropped "{_short(cut)}"')
        fixed = _join([subject, style])
    if count_tokens(fixed, tokenizer) > max_tokens:
        raise ValueError("face trigger and kit words alone exceed CLIP's 75-token window")

    text = _join([subject, user, style])
    total = count_tokens(text, tokenizer)
    if user and total > max_tokens:
        # Budget left for the user's words once the fixed parts and the joining commas are counted.
        budget = max_tokens - count_tokens(_join([subject, "x", style]), tokenizer) + count_tokens("x", tokenizer)
        kept, cut = _fit_words(user, max(budget, 0), tokenizer)
        truncated = True
        notices.insert(0, f"prompt too long for the model ({total} of {max_tokens} tokens): "
                              f'dropped the last {len(cut.split())} words "{_short(cut)}"')
        text = _join([subject, kept, style])
        total = count_tokens(text, tokenizer)

    neg = " ".join((negative if negative is not None else DEFAULT_NEGATIVE).split())
    if negative is not None and count_tokens(neg, tokenizer) > max_tokens:
        neg, cut = _fit_words(neg, max_tokens, tokenizer)
        truncated = True
        notices.append(f'negative prompt too long: dropped "{_short(cut)}"')
    return BuiltPrompt(
        text=text, negative=neg, truncated=truncated, notice="; ".join(notices) or None, tokens=total
    )
