"""What ``kitbooth compare`` writes: the results of one method, and the report over all of them.

One :class:`MethodResult` per method (it is also that method's ``metrics.json``, so a later run reuses it), and
from them ``report.json`` (the same data), ``report.md`` (a table), ``chart.png`` (matplotlib, Agg) and one
``sheet-<method>.png`` contact sheet per method (PIL: prompts by rows, without / with the kit by columns). Every
file is written atomically. matplotlib is optional (``kitbooth[compare]``): without it the chart is skipped with
one line and everything else is written.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from training.artifact import write_atomic

SAME_PERSON = 0.6  # dlib's usual threshold (training.face_identity.IDENTITY_THRESHOLD)
NO_CHART = "chart.png skipped: matplotlib is not installed — pip install 'kitbooth[compare]'"
MEMORY_KINDS = {
    "cuda_max_allocated": "CUDA max allocated during training (the resident pipeline included)",
    "cpu_rss_peak_delta": "CPU resident-memory peak over its level before training (sampled every 10 ms; memory "
                          "an earlier method freed may be reused, so later methods can read low)",
}
_CELL = 256  # contact-sheet cell width in pixels
_CAPTION_LINES = 3


@dataclass
class ImageRecord:
    file: str  # relative to the method's folder
    prompt: str  # the fixed prompt
    built: str  # the prompt as generated (trigger words, kit words)
    kit: bool
    seed: int
    face_found: bool | None = None  # None: identity not measured (no face in the held-out photos)
    identity_distance: float | None = None  # mean dlib distance to the held-out photos (lower = closer)
    clip_t: float | None = None
    nsfw: bool = False


@dataclass
class Identity:
    """Identity of a set of images against the held-out photos."""

    images: int
    faces_found: int
    mean_distance: float | None  # over the images where a face was found
    same_person_rate: float  # share of all images under SAME_PERSON (an image without a face is a miss)


@dataclass
class MethodResult:
    method: str
    file_bytes: int
    train_seconds: float
    train_steps: int
    peak_memory_bytes: int | None
    peak_memory_kind: str  # a key of MEMORY_KINDS
    hidden_size: int  # the base model's text width (768 on SD 1.5)
    key: str = ""  # what the result depends on (a later run reuses it only when equal)
    identity: Identity | None = None
    identity_kit: Identity | None = None
    clip_t: float | None = None
    clip_t_kit: float | None = None
    images: list[ImageRecord] = field(default_factory=list)
    reused: str = "no"  # "no", "concept" (trained earlier, measured now) or "all"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodResult:
        data = dict(data)
        for name in ("identity", "identity_kit"):
            data[name] = Identity(**data[name]) if data.get(name) else None
        data["images"] = [ImageRecord(**r) for r in data.get("images", [])]
        return cls(**data)


def identity_of(records: Sequence[ImageRecord]) -> Identity | None:
    """Summary of the records' identity measures (None when identity was not measured)."""
    if not records or all(r.face_found is None for r in records):
        return None
    dists = [r.identity_distance for r in records if r.identity_distance is not None]
    return Identity(images=len(records), faces_found=len(dists),
                    mean_distance=sum(dists) / len(dists) if dists else None,
                    same_person_rate=sum(d < SAME_PERSON for d in dists) / len(records))


def mean_clip(records: Sequence[ImageRecord]) -> float | None:
    scores = [r.clip_t for r in records if r.clip_t is not None]
    return sum(scores) / len(scores) if scores else None


# --- the report ----------------------------------------------------------------------------------------------
def write_report(out: Path, results: Sequence[MethodResult], info: dict[str, Any]) -> list[Path]:
    """``report.json``, ``report.md``, ``chart.png`` (when matplotlib is there) and the sheets, into ``out``."""
    written = []
    for r in results:
        sheet = out / f"sheet-{r.method}.png"
        write_atomic(sheet, png(contact_sheet(out / r.method, r)), mode=0o644)
        written.append(sheet)
    chart = None
    if has_matplotlib():
        chart = out / "chart.png"
        write_atomic(chart, chart_png(results), mode=0o644)
        written.append(chart)
    data = {**info, "chart": chart.name if chart else None, "memory_measure": _memory_note(results),
            "methods": {r.method: r.to_dict() for r in results}}
    write_atomic(out / "report.json", json.dumps(data, indent=2).encode(), mode=0o644)
    write_atomic(out / "report.md", markdown(results, info, chart is not None).encode(), mode=0o644)
    return [out / "report.json", out / "report.md", *written]


def has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _memory_note(results: Sequence[MethodResult]) -> dict[str, str]:
    return {k: MEMORY_KINDS[k] for k in dict.fromkeys(r.peak_memory_kind for r in results)}


def _size(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n} B"


def _identity_cell(ident: Identity | None) -> str:
    if ident is None:
        return "n/a (no face in the held-out photos)"
    if ident.mean_distance is None:
        return f"n/a (no face in {ident.images} images)"
    return (f"{ident.mean_distance:.3f} ({ident.same_person_rate:.0%} same person, "
            f"{ident.faces_found}/{ident.images} faces)")


def _clip_cell(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.2f}"


def markdown(results: Sequence[MethodResult], info: dict[str, Any], chart: bool) -> str:
    lines = ["# kitbooth compare", ""]
    lines += [f"> {n}" for n in info.get("notes", [])]
    lines += ["", f"Base model `{info.get('base_model')}`. {len(info.get('prompts', []))} fixed prompts, each "
              f"drawn without a kit and with the kit {info.get('kit')} from the same seed (seeds {info.get('seeds')}"
              f"), {info.get('sample_steps')} denoising steps at {info.get('size')} px.", "",
              "Identity: mean dlib distance of the generated faces to the held-out photos (lower is closer; under "
              f"{SAME_PERSON} is the same person). CLIP-T: prompt-image agreement (higher is better).", ""]
    lines += table(results)
    lines += ["", "Peak memory: " + "; ".join(f"{v}" for v in _memory_note(results).values()) + ".", ""]
    if chart:
        lines += ["![chart](chart.png)", ""]
    lines += [f"- `{r.method}`: ![sheet](sheet-{r.method}.png) images in `{r.method}/images/`" for r in results]
    return "\n".join(lines) + "\n"


def table(results: Sequence[MethodResult]) -> list[str]:
    """The comparison as Markdown table lines (also what the command prints at the end)."""
    lines = ["| method | file size | training time | peak memory | identity (no kit) | identity (kit) | "
             "CLIP-T (no kit) | CLIP-T (kit) | this run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.method} | {_size(r.file_bytes)} | {r.train_seconds:.1f} s ({r.train_steps} steps) | "
                     f"{_size(r.peak_memory_bytes)} | {_identity_cell(r.identity)} | {_identity_cell(r.identity_kit)} "
                     f"| {_clip_cell(r.clip_t)} | {_clip_cell(r.clip_t_kit)} | "
                     f"{ {'no': 'trained', 'concept': 'reused concept', 'all': 'reused'}[r.reused] } |")
    return lines


# --- the chart -----------------------------------------------------------------------------------------------
def chart_png(results: Sequence[MethodResult]) -> bytes:
    """Four bar charts (size, time, memory, identity without/with the kit) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    names = [r.method for r in results]
    fig = Figure(figsize=(11, 3.2), dpi=100)
    axes = fig.subplots(1, 4)
    measure = {"cuda_max_allocated": "CUDA max allocated", "cpu_rss_peak_delta": "CPU RSS peak Δ"}
    memory = " / ".join(measure[k] for k in _memory_note(results))
    panels = [("file size (MB)", [r.file_bytes / 1e6 for r in results]),
              ("training time (s)", [r.train_seconds for r in results]),
              (f"peak memory (MB, {memory})", [(r.peak_memory_bytes or 0) / 1e6 for r in results])]
    for ax, (title, values) in zip(axes, panels, strict=False):
        ax.bar(names, values, color="#3b6ea5")
        ax.set_title(title, fontsize=9)
    ax = axes[3]
    xs = range(len(names))
    for offset, label, pick in ((-0.2, "no kit", "identity"), (0.2, "kit", "identity_kit")):
        values = [getattr(r, pick) for r in results]
        heights = [v.mean_distance if v is not None and v.mean_distance is not None else 0.0 for v in values]
        ax.bar([x + offset for x in xs], heights, width=0.4, label=label)
        for x, v in zip(xs, values, strict=True):
            if v is None or v.mean_distance is None:
                ax.text(x + offset, 0.02, "n/a", ha="center", fontsize=7, rotation=90)
    ax.axhline(SAME_PERSON, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks(list(xs), names)
    ax.set_title("identity distance (lower = closer)", fontsize=9)
    ax.legend(fontsize=7)
    for a in axes:
        a.tick_params(labelsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# --- the contact sheet ---------------------------------------------------------------------------------------
def contact_sheet(folder: Path, result: MethodResult) -> Image.Image:
    """The method's images: one row per prompt, without the kit then with it, each captioned."""
    font = ImageFont.load_default()
    rows: dict[int, dict[bool, ImageRecord]] = {}  # by seed: each prompt has its own, shared by its two images
    for rec in result.images:
        rows.setdefault(rec.seed, {})[rec.kit] = rec
    line_h = 12
    caption_h = line_h * _CAPTION_LINES + 6
    title_h = 3 * line_h + 8
    sheet = Image.new("RGB", (2 * _CELL, title_h + len(rows) * (_CELL + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 4), f"{result.method}: {_size(result.file_bytes)}, {result.train_seconds:.1f} s", fill="black",
              font=font)
    draw.text((6, 4 + line_h), f"identity, no kit: {_identity_cell(result.identity)}", fill="black", font=font)
    draw.text((6, 4 + 2 * line_h), f"identity, kit: {_identity_cell(result.identity_kit)}", fill="black", font=font)
    for y_index, pair in enumerate(rows.values()):
        top = title_h + y_index * (_CELL + caption_h)
        for col, kit in enumerate((False, True)):
            rec = pair.get(kit)
            if rec is None:
                continue
            with Image.open(folder / rec.file) as im:
                cell = im.convert("RGB").resize((_CELL, _CELL), Image.Resampling.LANCZOS)
            sheet.paste(cell, (col * _CELL, top))
            dist = "no face" if rec.identity_distance is None else f"distance {rec.identity_distance:.2f}"
            caption = [f"{'kit' if kit else 'no kit'} · seed {rec.seed} · {dist}",
                       *textwrap.wrap(rec.prompt, width=40)][:_CAPTION_LINES]
            for i, line in enumerate(caption):
                draw.text((col * _CELL + 4, top + _CELL + 3 + i * line_h), line, fill="black", font=font)
    return sheet


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
