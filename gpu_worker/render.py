"""What the worker shows in Discord, as plain data (no discord import): texts, image grids, result buttons.

``gpu_worker.poster`` turns an ``Outgoing`` into REST calls.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image

from gpu_worker.contract import button_id

MAX_CONTENT = 2000  # Discord's message content limit
ButtonStyle = Literal["primary", "secondary", "success", "danger"]


@dataclass(frozen=True)
class ButtonSpec:
    label: str
    custom_id: str
    style: ButtonStyle = "secondary"
    row: int = 0


@dataclass(frozen=True)
class Outgoing:
    """One message: content, attached files (name, bytes) and buttons."""

    content: str
    files: list[tuple[str, bytes]] = field(default_factory=list)
    buttons: list[ButtonSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.content) > MAX_CONTENT:
            object.__setattr__(self, "content", self.content[: MAX_CONTENT - 1] + "…")


def clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def bar(step: int, total: int, width: int = 12) -> str:
    total = max(total, 1)
    filled = round(width * min(step, total) / total)
    return "▰" * filled + "▱" * (width - filled)


def eta_text(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return ""
    s = int(round(seconds))
    return f" · ~{s // 60}m{s % 60:02d}s left" if s >= 60 else f" · ~{s}s left"


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def grid(images: list[Image.Image]) -> Image.Image:
    """A 2×2 grid (or 1×2 for two images, the image itself for one)."""
    if len(images) == 1:
        return images[0]
    w, h = images[0].size
    cols = 2
    rows = (len(images) + 1) // 2
    out = Image.new("RGB", (cols * w, rows * h), (0, 0, 0))
    for i, im in enumerate(images):
        out.paste(im.convert("RGB").resize((w, h)), ((i % cols) * w, (i // cols) * h))
    return out


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


def generate_result(
    *, job_id: int, user_id: int, prompt: str, seeds: list[int], images: list[Image.Image],
    nsfw: list[bool], seconds: float,
) -> Outgoing:
    shown = [im for im in images]
    flagged = sum(bool(x) for x in nsfw)
    lines = [f"**{clip(prompt, 300)}**", f"seed {seeds[0]}" + (f"-{seeds[-1]}" if len(seeds) > 1 else "")
             + f" · {seconds:.1f}s"]
    if flagged:
        lines.append(f"{flagged} image(s) hidden by the safety filter.")
    return Outgoing(
        content="\n".join(lines),
        files=[(f"kitbooth-{job_id}.png", png_bytes(grid(shown)))],
        buttons=result_buttons(job_id, user_id, len(images)),
    )


def progress_text(what: str, step: int, total: int, eta: float | None = None, extra: str = "") -> str:
    return f"{what} {bar(step, total)} {step}/{total}{eta_text(eta)}{extra}"


def failure_text(reason: str) -> str:
    return f"⚠️ {clip(reason, 400)}"
