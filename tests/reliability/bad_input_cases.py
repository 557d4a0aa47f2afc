"""The bad-input cases, generated class by class (sizes at and past each limit, malformed headers, odd encodings),
and the entry point each goes through — the checks that already exist, never a copy of them:

- photos: ``training.images.load_image`` (what the bot's selfie and reference checks decode every upload with);
- prompts: ``/generate`` through the real bot on SimCord (``bot.generate_request``'s checks);
- options: ``gpu_worker.validation.validate_generate`` (with ``kitbooth.limits``: what the worker re-checks);
- imported files: ``bot.imports.check_import`` (``/kit import``; the worker loads through the same validator);
- job payloads: ``gpu_worker.runner.parse`` then the kind's ``validate_*`` (what the worker does first);
- CLI arguments: ``kitbooth.cli.main``.

``docs/bad-input.md`` is ``render_table()`` (a test keeps it equal): regenerate it with
``python -m tests.reliability.bad_input_cases > docs/bad-input.md``.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass, field
from typing import Any

from kitbooth import limits

Expect = str  # "refused" (a clear message) or "accepted" (at a limit, still allowed)


@dataclass(frozen=True)
class Case:
    klass: str
    name: str
    what: str
    expect: Expect = "refused"
    args: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


# --- photos ----------------------------------------------------------------------------------------------
def _png(w: int = 320, h: int = 320) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 80, 60)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(w: int = 320, h: int = 320, exif: bytes | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 80, 60)).save(buf, format="JPEG", **({"exif": exif} if exif else {}))
    return buf.getvalue()


def _png_claiming(w: int, h: int) -> bytes:
    """A PNG whose header declares ``w``×``h`` (a decompression bomb: the pixels are never there)."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _gif_animated() -> bytes:
    from PIL import Image

    frames = [Image.new("RGB", (300, 300), (i * 60, 0, 0)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _exif_bomb() -> bytes:
    """A JPEG whose EXIF block is as large as a JPEG segment allows, full of junk IFD entries."""
    ifd = struct.pack("<H", 4000) + b"".join(struct.pack("<HHII", 0x0100 + i, 4, 1, 0) for i in range(4000))
    exif = b"II*\x00" + struct.pack("<I", 8) + ifd[: 65000]
    return _jpeg(exif=exif)


def photo_cases() -> list[Case]:
    png = _png()
    out = [
        Case("photos", "zero-byte", "an empty upload", args={"data": b"", "name": "a.jpg"}),
        Case("photos", "garbage", "random bytes named .jpg", args={"data": bytes(range(256)) * 8, "name": "a.jpg"}),
        Case("photos", "text-as-png", "a text file renamed .png", args={"data": b"hello, I am not a photo\n" * 40,
                                                                         "name": "selfie.png"}),
        Case("photos", "svg", "an SVG drawing", args={"data": b"<svg xmlns='http://www.w3.org/2000/svg'/>" * 20,
                                                      "name": "me.svg"}),
        Case("photos", "animated-gif", "an animated GIF", args={"data": _gif_animated(), "name": "me.gif"}),
        Case("photos", "bomb-30000px", "a PNG declaring 30000×30000 pixels",
             args={"data": _png_claiming(30000, 30000), "name": "bomb.png"}),
        Case("photos", "exif-bomb", "a JPEG with a 64 KB junk EXIF block", expect="accepted",
             args={"data": _exif_bomb(), "name": "exif.jpg"}),
        Case("photos", "wrong-extension", "a real PNG named .jpg (read by content)", expect="accepted",
             args={"data": png, "name": "me.jpg"}),
        Case("photos", "too-big-bytes", "over the upload limit in bytes",
             args={"data": png + b"\x00" * 21_000_000, "name": "big.png"}),
    ]
    for frac, label in ((0.5, "half"), (0.9, "90%")):
        out.append(Case("photos", f"truncated-png-{label}", f"a PNG cut at {label} of its bytes",
                        args={"data": png[: int(len(png) * frac)], "name": "cut.png"}))
        jpg = _jpeg()
        out.append(Case("photos", f"truncated-jpeg-{label}", f"a JPEG cut at {label} of its bytes",
                        args={"data": jpg[: int(len(jpg) * frac)], "name": "cut.jpg"}))
    for side, expect in ((255, "refused"), (256, "accepted")):
        out.append(Case("photos", f"side-{side}", f"a {side}×{side} photo (the least is 256)", expect=expect,
                        args={"data": _png(side, side), "name": "small.png"}))
    return out


# --- prompts ----------------------------------------------------------------------------------------------
def prompt_cases() -> list[Case]:
    n = limits.PROMPT_CHARS
    texts = [
        ("empty-visible", "spaces and a tab only", " \t ", "refused"),
        ("at-limit", f"exactly {n} characters", "g" * n, "accepted"),
        ("zero-width-only", "zero-width characters only", "\u200b\u200c\u200d\u2060", "refused"),
        ("rtl-override", "an RTL override hiding the words", "\u202e" + "\u200b" * 3, "refused"),
        ("bidi-words", "right-to-left words (Arabic)", "لاعب كرة القدم في الملعب", "accepted"),
        ("reserved-eot", "CLIP's <|endoftext|> token", "me <|endoftext|> scoring", "refused"),
        ("reserved-slot", "a <kb-...> slot token", "me as <kb-face-0> on the pitch", "refused"),
        ("others-trigger", "another member's trigger token", "ohwxbob scoring a goal", "refused"),
        ("everyone-mention", "@everyone in the prompt (never pings)", "@everyone look at me", "accepted"),
        ("control-chars", "C0 control characters around words", "\x01\x02me\x7f scoring\x1b", "accepted"),
    ]
    return [Case("prompts", name, what, expect, {"prompt": text}) for name, what, text, expect in texts]


# --- options (the payload's picture and count limits) -----------------------------------------------------
def option_cases() -> list[Case]:
    out = []
    lo, hi, m = limits.SIDE_MIN, limits.SIDE_MAX, limits.SIDE_MULTIPLE
    for side, expect in ((lo - m, "refused"), (lo, "accepted"), (hi, "accepted"), (hi + m, "refused"),
                         (lo + 1, "refused")):
        out.append(Case("options", f"width-{side}", f"width {side}", expect, {"width": side}))
    for steps, expect in ((limits.STEPS_MIN - 1, "refused"), (limits.STEPS_MAX, "accepted"),
                          (limits.STEPS_MAX + 1, "refused")):
        out.append(Case("options", f"steps-{steps}", f"{steps} steps", expect, {"steps": steps}))
    for g, expect in ((-0.5, "refused"), (limits.GUIDANCE_MAX, "accepted"), (limits.GUIDANCE_MAX + 0.5, "refused")):
        out.append(Case("options", f"guidance-{g:g}", f"guidance {g:g}", expect, {"guidance": g}))
    for c, expect in ((limits.COUNT_MIN - 1, "refused"), (limits.COUNT_MAX, "accepted"),
                      (limits.COUNT_MAX + 1, "refused")):
        out.append(Case("options", f"count-{c}", f"{c} images", expect, {"count": c}))
    out.append(Case("options", "candidates-past-max", f"{limits.CANDIDATES_MAX + 1} best-of-N candidates",
                    "refused", {"count": 4, "candidates": limits.CANDIDATES_MAX + 1}))
    out.append(Case("options", "prompt-past-limit", f"a {limits.PROMPT_CHARS + 1}-character prompt", "refused",
                    {"prompt": "g" * (limits.PROMPT_CHARS + 1)}))
    out.append(Case("options", "negative-past-limit", "a negative prompt past the limit", "refused",
                    {"negative_prompt": "n" * (limits.PROMPT_CHARS + 1)}))
    out.append(Case("options", "face-detail-unknown", "face_detail 'sometimes'", "refused", {"face_detail": "sometimes"}))
    return out


# --- imported files (malformed safetensors, generated) -----------------------------------------------------
def _st(header: object, body: bytes = b"", *, raw: bytes | None = None, n: int | None = None) -> bytes:
    h = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if n is None else n) + h + body


def _emb(dtype: str = "F32", values: list[float] | None = None, rows: int = 1, width: int = 32) -> bytes:
    vals = values if values is not None else [0.01] * (rows * width)
    fmt = {"F32": "<f", "F16": "<e"}.get(dtype, "<f")
    body = b"".join(struct.pack(fmt, v) for v in vals)
    header = {"emb_params": {"dtype": dtype, "shape": [rows, width], "data_offsets": [0, len(body)]}}
    return _st(header, body)


def import_cases() -> list[Case]:
    nan, inf = float("nan"), float("inf")
    files = [
        ("empty", "an empty file", b""),
        ("too-short", "5 bytes", b"\x01\x02\x03\x04\x05"),
        ("header-length-huge", "a header length past the file", _st({}, n=2**40)),
        ("header-length-zero", "a header length of 0", _st({}, raw=b"")),
        ("header-not-json", "a header that is not JSON", _st(None, raw=b"{not json at all}")),
        ("header-not-object", "a header that is a JSON list", _st([1, 2, 3])),
        ("header-latin1", "a header in Latin-1 bytes", _st(None, raw=b'{"\xe9t\xe9": 1}')),
        ("header-deep", "a header nested 5000 deep", _st(None, raw=b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}")),
        ("no-tensors", "metadata only", _st({"__metadata__": {"a": "b"}})),
        ("metadata-not-strings", "metadata values that are numbers", _st({"__metadata__": {"a": 1}})),
        ("offsets-outside", "tensor offsets past the end", _st({"w": {"dtype": "F32", "shape": [4],
                                                                      "data_offsets": [0, 4096]}}, b"\x00" * 16)),
        ("unknown-dtype", "a tensor of dtype Q4", _st({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 2]}},
                                                       b"\x00\x00")),
        ("int-dtype", "an embedding stored as I32", _st({"emb_params": {"dtype": "I32", "shape": [1, 32],
                                                                        "data_offsets": [0, 128]}}, b"\x00" * 128)),
        ("nan-values", "an embedding full of NaN", _emb(values=[nan] * 32)),
        ("inf-values", "an embedding with an infinity", _emb(values=[inf] + [0.0] * 31)),
        ("wrong-width", "an embedding 48 wide (another base model)", _emb(width=48)),
        ("pickle", "a pickled .pt file", b"\x80\x04\x95" + b"\x00" * 64),
        ("torch-zip", "a torch zip archive renamed", b"PK\x03\x04" + b"\x00" * 64),
        ("duplicate-keys", "a header naming one tensor twice",
         _st(None, raw=b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                       b'"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', body=b"\x00" * 4)),
        ("oversize", "past the upload limit", b"\x00" * (limits.CONCEPT_FILE_BYTES + 1)),
    ]
    out = [Case("imported files", name, what, "refused", {"data": data, "filename": "kit.safetensors"})
           for name, what, data in files]
    out.append(Case("imported files", "wrong-extension", "a good embedding named .ckpt", "refused",
                    {"data": _emb(), "filename": "kit.ckpt"}))
    out.append(Case("imported files", "good-embedding", "a valid 32-wide embedding (the tiny model)", "accepted",
                    {"data": _emb(), "filename": "kit.safetensors"}))
    return out


# --- job payloads -------------------------------------------------------------------------------------------
def payload_cases() -> list[Case]:
    ok = {"job_id": 5, "user_id": 9, "prompt": "me", "output_prefix": "users/9/outputs/5/",
          "target": {"channel_id": 1, "user_id": 9}, "count": 1}
    raws = [
        ("not-json", "a string that is not JSON", "{not json"),
        ("a-list", "a JSON list instead of an object", [1, 2]),
        ("unknown-field", "an unknown field", {**ok, "admin": True}),
        ("missing-field", "no prompt", {k: v for k, v in ok.items() if k != "prompt"}),
        ("target-not-object", "a target that is a string", {**ok, "target": "channel 1"}),
        ("prefix-escape", "an output prefix with ..", {**ok, "output_prefix": "users/9/../8/outputs/5/"}),
        ("prefix-other-user", "an output prefix of another user", {**ok, "output_prefix": "users/8/outputs/5/"}),
        ("count-as-text", "count given as the string '4'", {**ok, "count": "4"}),
        ("seed-as-float", "a seed of 1.5", {**ok, "seed": 1.5}),
        ("channel-as-text", "a target channel id given as text", {**ok, "target": {"channel_id": "1", "user_id": 9}}),
        ("nsfw-as-text", "allow_nsfw given as the string 'yes'", {**ok, "allow_nsfw": "yes"}),
    ]
    return [Case("job payloads", name, what, "refused", {"raw": raw}) for name, what, raw in raws]


# --- CLI arguments ------------------------------------------------------------------------------------------
def cli_cases() -> list[Case]:
    argvs = [
        ("unknown-command", "an unknown subcommand", ["kick-off"]),
        ("inspect-missing", "inspect a file that does not exist", ["inspect", "/nonexistent/face.safetensors"]),
        ("inspect-garbage", "inspect a garbage file", ["inspect", "{garbage}"]),
        ("health-bad-skip", "health --skip of an unknown component", ["health", "--skip", "gpu"]),
        ("doctor-bad-grace", "doctor --grace that is not a number", ["doctor", "--grace", "soon"]),
        ("generate-steps-0", "generate with --steps 0", ["generate", "--steps", "0", "--prompt", "me"]),
        ("convert-bad-format", "convert to an unknown format", ["convert", "{garbage}", "--to", "ckpt"]),
    ]
    return [Case("CLI arguments", name, what, "refused", {"argv": argv}) for name, what, argv in argvs]


def all_cases() -> list[Case]:
    return photo_cases() + prompt_cases() + option_cases() + import_cases() + payload_cases() + cli_cases()


ENTRY_POINTS = {
    "photos": "`training.images.load_image` (the bot's selfie/reference checks)",
    "prompts": "`/generate` on the real bot (SimCord)",
    "options": "`gpu_worker.validation.validate_generate` (`kitbooth.limits`)",
    "imported files": "`bot.imports.check_import` (`/kit import`)",
    "job payloads": "`gpu_worker.runner.parse` + `validate_*`",
    "CLI arguments": "`kitbooth.cli.main`",
}


def render_table() -> str:
    cases = all_cases()
    lines = [
        "# Bad input, by class",
        "",
        "Generated from `tests/reliability/bad_input_cases.py` (`python -m tests.reliability.bad_input_cases >",
        "docs/bad-input.md`); `tests/reliability/test_bad_input.py` runs every case through its entry point, expects a",
        "clear message (no traceback, no incident id) or, at a limit, acceptance, and then runs `kitbooth doctor`'s",
        f"scan. {len(cases)} cases.",
        "",
        "| Class | Case | Input | Expected | Entry point |",
        "|---|---|---|---|---|",
    ]
    for c in cases:
        lines.append(f"| {c.klass} | `{c.name}` | {c.what} | {c.expect} | {ENTRY_POINTS[c.klass]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_table(), end="")
