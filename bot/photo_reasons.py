"""The selfie checklist in the member's language.

``training`` is a library with no notion of a member's language: its verdicts carry a short English reason
("photo 3: no face found — use a clear, front-facing photo"), written from the templates in
``training.photo_report`` and ``training.images``. This module maps each template back to its catalogue key
(``checklist.*``) with its fields, so the bot renders the checklist in any shipped language. A reason no
template matches is shown as written (English) — ``tests/foundation/test_i18n_catalogue.py`` checks that
every template of the library has its key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from kitbooth.i18n import translate

# key → the English reason template, exactly as ``training`` writes it ({field} = a value it fills in).
TEMPLATES: dict[str, str] = {
    "checklist.ok": "ok",
    "checklist.no_face": "no face found — use a clear, front-facing photo",
    "checklist.two_people": "two people — crop it to just you",
    "checklist.face_too_small": "face too small — take a closer photo or crop it around your face",
    "checklist.blurry": "too blurry — use a sharp, well-lit photo",
    "checklist.different_person": "looks like a different person from the others",
    "checklist.too_many": "too many photos — only the first {n} are used",
    "checklist.same_as": "same photo as photo {n} — skipped",
    "checklist.empty": "the file is empty",
    "checklist.file_too_large": "the file is too large ({size} MB) — send a photo under {limit} MB",
    "checklist.far_too_large": "the image is far too large — send an ordinary photo",
    "checklist.not_an_image": "not an image — send a JPEG or PNG photo",
    "checklist.damaged": "the file is damaged or incomplete — send the photo again",
    "checklist.too_many_pixels": "the image is too large ({width}×{height}) — send a photo under {limit} megapixels",
    "checklist.animated": "animated images aren't supported — send a still photo",
    "checklist.image_too_small": "too small ({width}×{height}) — send a photo at least {side} px on each side",
    "checklist.upload_too_big": "too big ({size} MB) — send a photo under {limit} MB",  # bot.training_flow
}
_LINE = re.compile(r"^photo (?P<index>\d+): (?P<reason>.*)$", re.S)
_NUMBER = re.compile(r"^\d+(\.\d+)?$")


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    rx = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.+?)" for i, p in enumerate(parts))
    return re.compile(f"^{rx}$", re.S)


_PATTERNS = [(key, _pattern(t)) for key, t in TEMPLATES.items()]


def _value(text: str) -> Any:
    """Numbers become numbers again, so they are written the language's way (1.5 MB → 1,5 MB)."""
    if not _NUMBER.match(text):
        return text
    return float(text) if "." in text else int(text)


def reason_text(reason: str, locale: str) -> str:
    """One reason ("no face found — …", or "photo 3: no face found — …") in ``locale``."""
    line = _LINE.match(reason)
    if line:
        return translate("checklist.line", locale, index=line["index"], reason=reason_text(line["reason"], locale))
    for key, rx in _PATTERNS:
        m = rx.match(reason)
        if m:
            return translate(key, locale, **{k: _value(v) for k, v in m.groupdict().items()})
    return reason


def checklist(verdicts: Sequence[Any], locale: str = "en-US") -> str:
    """✅/❌ and the reason, one line per photo."""
    return "\n".join(f"{'✅' if v.accepted else '❌'} {reason_text(v.reason, locale)}" for v in verdicts)
