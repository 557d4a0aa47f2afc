"""The one renderer: every message a member sees about a job, as plain data. Torch-free, no discord import.

Whoever posts it — the worker's ``gpu_worker.poster`` (editing the interaction, or a channel message) or the
bot's fallback ``bot.delivery`` — posts the same ``Outgoing``: the same content, files and buttons. Images are
attached as the stored PNG bytes themselves (never re-encoded, never a grid), so every image a member receives
carries the A1111 ``parameters`` text and the AI-generated mark written by ``training.generate``.
``discord_kwargs`` (in ``kitbooth.render_discord``) turns an ``Outgoing`` into discord.py arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gpu_worker.contract import button_id
from kitbooth.i18n import ENGLISH, fmt_duration, fmt_number, translate

MAX_CONTENT = 2000  # Discord's message content limit
MAX_FILES = 10  # Discord's attachments per message
ButtonStyle = Literal["primary", "secondary", "success", "danger"]


@dataclass(frozen=True)
class ButtonSpec:
    label: str
    custom_id: str
    style: ButtonStyle = "secondary"
    row: int = 0


@dataclass(frozen=True)
class Outgoing:
    """One message: content, attached files (name, bytes) and buttons.

    ``mention`` is the user to mention when the message is posted as a new channel message (the interaction
    token expired, or the bot delivers it): the poster prefixes ``<@id>`` and allows only that mention.
    """

    content: str
    files: list[tuple[str, bytes]] = field(default_factory=list)
    buttons: list[ButtonSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.content) > MAX_CONTENT:
            object.__setattr__(self, "content", self.content[: MAX_CONTENT - 1] + "…")
        if len(self.files) > MAX_FILES:
            object.__setattr__(self, "files", list(self.files[:MAX_FILES]))

    def with_mention(self, user_id: int) -> Outgoing:
        """The same message as a channel message that mentions ``user_id`` (content still within the limit)."""
        return Outgoing(f"<@{int(user_id)}> {self.content}", list(self.files), list(self.buttons))


def clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def escape_markdown(text: str) -> str:
    """Discord markdown characters escaped (a prompt with ``**`` or ``__`` must not restyle the message)."""
    out = []
    for ch in text:
        if ch in "\\*_~`|>":
            out.append("\\")
        out.append(ch)
    return "".join(out)


def bar(step: int, total: int, width: int = 12) -> str:
    total = max(total, 1)
    filled = round(width * min(step, total) / total)
    return "▰" * filled + "▱" * (width - filled)


def eta_text(seconds: float | None, locale: str = ENGLISH) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return ""
    return translate("progress.eta_left", locale, time=fmt_duration(seconds, locale))


def result_buttons(job_id: int, owner_id: int, count: int, locale: str = ENGLISH) -> list[ButtonSpec]:
    """U1-U4 on the first row; reroll, vary (first image) and delete on the second."""
    buttons = [
        ButtonSpec(f"U{i + 1}", button_id("upscale", job_id, i, owner_id), "secondary", 0) for i in range(count)
    ]
    buttons += [
        ButtonSpec(translate("button.reroll", locale), button_id("reroll", job_id, 0, owner_id), "primary", 1),
        ButtonSpec(translate("button.vary", locale), button_id("vary", job_id, 0, owner_id), "secondary", 1),
        ButtonSpec(translate("button.delete", locale), button_id("delete", job_id, 0, owner_id), "danger", 1),
    ]
    return buttons


def png_bytes(img: object) -> bytes:
    """A PIL image as PNG bytes (previews and tests; results are attached as stored, never re-encoded)."""
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")  # type: ignore[attr-defined]
    return buf.getvalue()


def image_name(job_id: int, index: int, ext: str = "png") -> str:
    return f"kitbooth-{int(job_id)}-{index + 1}.{ext}"


# --- final messages (``locale``: the member's language, ``DiscordTarget.locale``; prompts stay as typed) ---
INSTANT_PREVIEW = "⚡ preview — your trained face is on its way"  # result.instant_preview in English


def generate_result(
    *, job_id: int, user_id: int, prompt: str, seeds: list[int], pngs: list[bytes],
    nsfw: list[bool] | None = None, seconds: float | None = None, likeness: list[float | None] | None = None,
    preview: bool = False, locale: str = ENGLISH,
) -> Outgoing:
    """The result of ``/generate`` (and reroll/vary): each image attached as stored, with its buttons.
    ``likeness`` (best-of-N's score per image, None where no face was found) is shown as a small figure."""
    flagged = sum(bool(x) for x in (nsfw or []))
    run = bool(seeds) and seeds == list(range(seeds[0], seeds[0] + len(seeds)))  # best-of-N keeps any candidates
    t = translate
    seed_text = ((t("result.seed", locale, seed=str(seeds[0])) + (f"-{seeds[-1]}" if len(seeds) > 1 else ""))
                 if run else t("result.seeds", locale, seeds=", ".join(map(str, seeds))) if seeds else "")
    scores = [x for x in (likeness or []) if x is not None]
    like_text = (t("result.likeness", locale, scores=" ".join(
        "–" if x is None else fmt_number(x, locale, digits=2) for x in likeness or []))) if scores else ""
    secs = t("result.seconds", locale, seconds=fmt_number(seconds, locale, digits=1)) if seconds is not None else ""
    meta = " · ".join(x for x in (seed_text, like_text, secs) if x)
    lines = [f"**{escape_markdown(clip(prompt, 300))}**"] + ([meta] if meta else [])
    if preview:  # the instant face (IP-Adapter FaceID) while the trained face is still learning
        lines.append(t("result.instant_preview", locale))
    if flagged:
        lines.append(t("result.hidden_by_filter", locale, count=flagged))
    return Outgoing(
        content="\n".join(lines),
        files=[(image_name(job_id, i), png) for i, png in enumerate(pngs)],
        buttons=result_buttons(job_id, user_id, len(pngs), locale) if pngs else [],
    )


def upscale_result(*, job_id: int, png: bytes, locale: str = ENGLISH) -> Outgoing:
    return Outgoing(translate("result.upscaled", locale), files=[(f"kitbooth-{int(job_id)}-upscaled.png", png)])


def export_result(*, formats: list[str], files: list[tuple[str, bytes]], trigger: str = "",
                  locale: str = ENGLISH) -> Outgoing:
    text = translate("result.export", locale, formats=", ".join(formats))
    if trigger:
        text += " " + translate("result.export_trigger", locale, trigger=clip(trigger, 80))
    return Outgoing(text, files=list(files))


def concept_ready_result(*, kind: str, name: str, seconds: float | None, steps: int | None,
                         size_bytes: int | None, samples: list[bytes], locale: str = ENGLISH) -> Outgoing:
    t = translate
    what = t("ready.your_face", locale) if kind == "face" else (name or t(f"ready.new_{kind}", locale))
    when = " " + t("ready.in_time", locale, time=fmt_duration(seconds, locale)) if seconds is not None else ""
    details = ", ".join(x for x in (t("ready.steps", locale, steps=steps) if steps else "",
                                   t("ready.megabytes", locale, size=fmt_number(size_bytes / 1e6, locale, digits=1))
                                   if size_bytes else "") if x)
    # One sentence per language, so each puts the time where its grammar wants it ("… in 42 s gelernt").
    text = t("ready.learned", locale, what=what, when=when, details=f" ({details})" if details else "")
    return Outgoing(text + " " + t("ready.try_generate", locale),
                    files=[(f"sample-{i + 1}.png", png) for i, png in enumerate(samples)])


def progress_text(what: str, step: int, total: int, eta: float | None = None, extra: str = "",
                  locale: str = ENGLISH) -> str:
    return f"{what} {bar(step, total)} {step}/{total}{eta_text(eta, locale)}{extra}"


def failure_text(reason: str) -> str:
    return f"⚠️ {clip(reason, 400)}"


def failure_result(reason: str) -> Outgoing:
    """``reason`` is already in the member's language (``kitbooth.i18n.render_error`` in the runner)."""
    return Outgoing(failure_text(reason))


def cancelled_result(locale: str = ENGLISH) -> Outgoing:
    return Outgoing(translate("result.cancelled", locale))
