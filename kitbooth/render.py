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


def eta_text(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return ""
    s = int(round(seconds))
    return f" · ~{s // 60}m{s % 60:02d}s left" if s >= 60 else f" · ~{s}s left"


def result_buttons(job_id: int, owner_id: int, count: int) -> list[ButtonSpec]:
    """U1-U4 on the first row; reroll, vary (first image) and delete on the second."""
    buttons = [
        ButtonSpec(f"U{i + 1}", button_id("upscale", job_id, i, owner_id), "secondary", 0) for i in range(count)
    ]
    buttons += [
        ButtonSpec("🔁 Reroll", button_id("reroll", job_id, 0, owner_id), "primary", 1),
        ButtonSpec("🎲 Vary", button_id("vary", job_id, 0, owner_id), "secondary", 1),
        ButtonSpec("🗑 Delete", button_id("delete", job_id, 0, owner_id), "danger", 1),
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


# --- final messages ---------------------------------------------------------------------------------
INSTANT_PREVIEW = "⚡ preview — your trained face is on its way"


def generate_result(
    *, job_id: int, user_id: int, prompt: str, seeds: list[int], pngs: list[bytes],
    nsfw: list[bool] | None = None, seconds: float | None = None, likeness: list[float | None] | None = None,
    preview: bool = False,
) -> Outgoing:
    """The result of ``/generate`` (and reroll/vary): each image attached as stored, with its buttons.
    ``likeness`` (best-of-N's score per image, None where no face was found) is shown as a small figure."""
    flagged = sum(bool(x) for x in (nsfw or []))
    run = bool(seeds) and seeds == list(range(seeds[0], seeds[0] + len(seeds)))  # best-of-N keeps any candidates
    seed_text = ((f"seed {seeds[0]}" + (f"-{seeds[-1]}" if len(seeds) > 1 else "")) if run
                 else ("seeds " + ", ".join(map(str, seeds))) if seeds else "")
    scores = [x for x in (likeness or []) if x is not None]
    like_text = ("likeness " + " ".join("–" if x is None else f"{x:.2f}" for x in likeness or [])) if scores else ""
    meta = " · ".join(x for x in (seed_text, like_text, f"{seconds:.1f}s" if seconds is not None else "") if x)
    lines = [f"**{escape_markdown(clip(prompt, 300))}**"] + ([meta] if meta else [])
    if preview:  # the instant face (IP-Adapter FaceID) while the trained face is still learning
        lines.append(INSTANT_PREVIEW)
    if flagged:
        lines.append(f"{flagged} image(s) hidden by the safety filter.")
    return Outgoing(
        content="\n".join(lines),
        files=[(image_name(job_id, i), png) for i, png in enumerate(pngs)],
        buttons=result_buttons(job_id, user_id, len(pngs)) if pngs else [],
    )


def upscale_result(*, job_id: int, png: bytes) -> Outgoing:
    return Outgoing("🔍 Upscaled", files=[(f"kitbooth-{int(job_id)}-upscaled.png", png)])


def export_result(*, formats: list[str], files: list[tuple[str, bytes]], trigger: str = "") -> Outgoing:
    use = f" Put `{clip(trigger, 80)}` in your prompt to use it." if trigger else ""
    return Outgoing(f"📦 Your concept in {', '.join(formats)} format.{use}", files=list(files))


def concept_ready_result(*, kind: str, name: str, seconds: float | None, steps: int | None,
                         size_bytes: int | None, samples: list[bytes]) -> Outgoing:
    what = "your face" if kind == "face" else (name or f"the new {kind}")
    facts = []
    if seconds is not None:
        facts.append(f"in {seconds:.0f}s")
    details = ", ".join(x for x in (f"{steps} steps" if steps else "",
                                   f"{size_bytes / 1e6:.1f} MB" if size_bytes else "") if x)
    text = f"✅ I learned {what}" + (f" {facts[0]}" if facts else "") + (f" ({details})" if details else "")
    return Outgoing(text + ". Try `/generate` now!",
                    files=[(f"sample-{i + 1}.png", png) for i, png in enumerate(samples)])


def progress_text(what: str, step: int, total: int, eta: float | None = None, extra: str = "") -> str:
    return f"{what} {bar(step, total)} {step}/{total}{eta_text(eta)}{extra}"


def failure_text(reason: str) -> str:
    return f"⚠️ {clip(reason, 400)}"


def failure_result(reason: str) -> Outgoing:
    return Outgoing(failure_text(reason))


def cancelled_result() -> Outgoing:
    return Outgoing("Cancelled.")
