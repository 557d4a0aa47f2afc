"""Checks on a concept file a server admin uploads (``/kit import``, ``/style import``). Pure Python, torch-free.

Only ``.safetensors`` is accepted: a ``.pt`` / ``.ckpt`` / ``.bin`` file is a pickle, and unpickling runs
arbitrary code, so such files are refused on sight and never deserialised. A safetensors file is an 8-byte
little-endian header length, a JSON header (``{name: {dtype, shape, data_offsets}, "__metadata__": {...}}``)
and raw tensor bytes; this module reads only the header and checks it for consistency and for the base model:

- an **embedding** (A1111 ``emb_params``, ``string_to_param.*``, or diffusers' ``{"<token>": [n, width]}``):
  its width must be the text encoder's (``Settings.base_hidden_size``: 768 for SD 1.5);
- a **LoRA** (diffusers/peft ``unet.`` / ``text_encoder.`` keys, kohya ``lora_unet_*`` / ``lora_te_*``):
  the keys must use SD 1.5's layout (not SDXL's ``input_blocks`` / ``lora_te1_`` / ``text_encoder_2``) and the
  text-encoder and cross-attention widths must match.

The worker loads the file with the real pipeline before use and does the full check; this one runs in the bot
so that a wrong file is refused in the same second, with a message that says what is wrong.
"""

from __future__ import annotations

import json
import re
import struct
import unicodedata
from dataclasses import dataclass, field
from math import prod
from typing import Any, Literal

from kitbooth.errors import IncompatibleArtifact, InvalidInput

# Header limit from the safetensors spec (100 MB); real headers are a few hundred KB at most.
MAX_HEADER_BYTES = 100_000_000
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
BASE_NAME = "Stable Diffusion 1.5"

WRONG_BASE = ("This file was made for a different base model ({guess}) — KitBooth uses Stable Diffusion 1.5. "
              "Look for the SD 1.5 version of it.")
PICKLE_REFUSED = ("`{name}` is a PyTorch pickle file. Pickles can run code when opened, so KitBooth only accepts "
                  "`.safetensors` files — look for a safetensors download of it, or convert it first.")
NOT_SAFETENSORS = ("`{name}` is not a valid `.safetensors` file ({why}). Upload the `.safetensors` LoRA or "
                   "embedding file itself.")

ImportKind = Literal["embedding", "lora", "lora+embedding"]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class ImportInfo:
    """What the header says the file is."""

    kind: ImportKind
    tensors: int
    size_bytes: int
    width: int  # the text-encoder width the file was made for
    token_count: int = 0  # embedding vectors
    rank: int | None = None  # LoRA rank (the largest seen)
    targets: tuple[str, ...] = ()  # "unet", "text_encoder"
    embedding_names: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        parts = []
        if self.kind in ("embedding", "lora+embedding"):
            parts.append(f"embedding, {self.token_count} vector{'s' * (self.token_count != 1)}")
        if self.kind in ("lora", "lora+embedding"):
            parts.append(f"LoRA rank {self.rank} on {' + '.join(self.targets)}")
        return f"{'; '.join(parts)} ({self.size_bytes / 1e6:.1f} MB)"


# --- reading the header ---------------------------------------------------------------------------
def refuse_pickle_name(filename: str) -> None:
    if filename.lower().endswith(PICKLE_SUFFIXES):
        raise InvalidInput(PICKLE_REFUSED.format(name=_safe_name(filename)))


def _looks_like_pickle(data: bytes) -> bool:
    # A pickle starts with PROTO (0x80) + protocol 2..5; torch.save's zip format starts with "PK\x03\x04"
    # (a zip holding a pickle). Neither is a safetensors header length that fits the file anyway.
    return (len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5) or data[:4] == b"PK\x03\x04"


def _safe_name(filename: str) -> str:
    return re.sub(r"[^A-Za-z0-9._ -]", "_", filename)[:80] or "file"


def parse_header(data: bytes, filename: str = "file") -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Validate the safetensors layout of ``data`` and return (tensors, metadata). Never touches torch."""
    name = _safe_name(filename)
    if _looks_like_pickle(data):
        raise InvalidInput(PICKLE_REFUSED.format(name=name))

    def bad(why: str) -> InvalidInput:
        return InvalidInput(NOT_SAFETENSORS.format(name=name, why=why))

    if len(data) < 10:
        raise bad("too short")
    (n,) = struct.unpack("<Q", data[:8])
    if n < 2 or n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise bad("bad header length")
    raw = data[8 : 8 + n]
    if raw[:1] != b"{":
        raise bad("no JSON header")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise bad("unreadable header") from None
    if not isinstance(header, dict):
        raise bad("header is not an object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise bad("bad metadata")
    if not header:
        raise bad("it holds no tensors")
    body = len(data) - 8 - n
    tensors: dict[str, TensorInfo] = {}
    spans = []
    for key, entry in header.items():
        if not isinstance(entry, dict) or set(entry) - {"dtype", "shape", "data_offsets"}:
            raise bad(f"bad entry for {key[:60]!r}")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise bad(f"unknown dtype {str(dtype)[:10]!r}")
        if (not isinstance(shape, list) or len(shape) > 8
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise bad(f"bad shape for {key[:60]!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise bad(f"bad offsets for {key[:60]!r}")
        begin, end = offsets
        nbytes = prod(shape) * DTYPE_SIZES[dtype]
        if not 0 <= begin <= end <= body or end - begin != nbytes:
            raise bad(f"tensor {key[:60]!r} does not fit the file")
        spans.append((begin, end))
        tensors[key] = TensorInfo(key, dtype, tuple(shape), nbytes)
    spans.sort()
    pos = 0
    for begin, end in spans:  # the spec: tensors tile the body with no overlap and no holes
        if begin != pos:
            raise bad("tensor data overlaps or has gaps")
        pos = end
    if pos != body:
        raise bad("trailing bytes after the tensors")
    return tensors, meta


# --- classifying ------------------------------------------------------------------------------------
_LORA_SUFFIX = re.compile(
    r"\.(lora_down|lora_up|lora_A|lora_B|lora\.down|lora\.up|lora_linear_layer\.down|lora_linear_layer\.up)"
    r"(\.[A-Za-z0-9_-]+)?\.weight$|\.alpha$|\.dora_scale$|_lora\.(down|up)\.weight$"
)
_SDXL_HINTS = ("input_blocks", "output_blocks", "middle_block", "lora_te1_", "lora_te2_", "text_encoder_2",
               "conditioner.embedders", "add_embedding", "text_model_2")
_SD3_FLUX_HINTS = ("transformer_blocks.0.attn.add_", "joint_blocks", "double_blocks", "single_blocks",
                   "lora_transformer_", "context_embedder")
_TEXT_LAYERS = re.compile(r"(self_attn[._](q|k|v|out)_proj|mlp[._]fc1|mlp[._]fc2)")
_CROSS_KV = re.compile(r"attn2[._](processor[._])?to_(k|v)")
_EMB_KEYS = re.compile(r"^(emb_params|string_to_param\.[^.]+|<[^<>|]{1,64}>|[A-Za-z0-9_*-]{1,64})$")


def _strip_peft(key: str) -> str:
    for p in ("base_model.model.",):
        if key.startswith(p):
            key = key[len(p):]
    return key


def _lora_target(key: str) -> str | None:
    k = _strip_peft(key)
    if k.startswith(("unet.", "lora_unet_")) or k.startswith(("down_blocks.", "up_blocks.", "mid_block.")):
        return "unet"
    if k.startswith(("text_encoder.", "lora_te_", "te_text_model", "text_model.")):
        return "text_encoder"
    return None


def _guess_base(width: int) -> str:
    return {1024: "Stable Diffusion 2.x", 1280: "SDXL", 2048: "SDXL", 4096: "SD 3 / Flux"}.get(
        width, f"a text encoder {width} wide")


def classify(tensors: dict[str, TensorInfo], meta: dict[str, str], *, hidden_size: int,
             size_bytes: int) -> ImportInfo:
    """Decide what the file is and whether it fits SD 1.5; raise ``IncompatibleArtifact`` otherwise."""
    keys = list(tensors)
    lowered = " ".join(keys).lower()
    if any(h in lowered for h in _SD3_FLUX_HINTS):
        raise IncompatibleArtifact(WRONG_BASE.format(guess="SD 3 / Flux?"))
    if any(h in lowered for h in _SDXL_HINTS) or {"clip_g", "clip_l"} & set(keys):
        raise IncompatibleArtifact(WRONG_BASE.format(guess="SDXL?"))
    # kohya's ss_* and the modelspec metadata name the base model outright when present.
    base_meta = (meta.get("ss_base_model_version", "") + " " + meta.get("modelspec.architecture", "")).lower()
    if "sdxl" in base_meta or "stable-diffusion-xl" in base_meta:
        raise IncompatibleArtifact(WRONG_BASE.format(guess="SDXL?"))
    if meta.get("ss_v2", "").lower() == "true" or "sd_v2" in base_meta or "stable-diffusion-v2" in base_meta:
        raise IncompatibleArtifact(WRONG_BASE.format(guess="Stable Diffusion 2.x?"))

    lora_keys = [k for k in keys if _LORA_SUFFIX.search(k)]
    emb_keys = [k for k in keys if k not in lora_keys]
    for k in lora_keys:
        if _lora_target(k) is None:
            raise IncompatibleArtifact(
                f"`{k[:80]}` is not a Stable Diffusion 1.5 UNet or text-encoder layer — KitBooth uses "
                f"{BASE_NAME} LoRAs (diffusers or kohya format).")
    for k in emb_keys:
        t = tensors[k]
        if not _EMB_KEYS.match(k) or len(t.shape) not in (1, 2) or t.dtype not in FLOAT_DTYPES:
            raise IncompatibleArtifact(
                f"This file holds `{k[:80]}`, which is neither a LoRA layer nor a textual-inversion embedding — "
                f"KitBooth imports {BASE_NAME} LoRAs and embeddings only.")

    # Embedding width.
    token_count = 0
    for k in emb_keys:
        t = tensors[k]
        width = t.shape[-1]
        if width != hidden_size:
            raise IncompatibleArtifact(WRONG_BASE.format(guess=_guess_base(width) + "?"))
        token_count += 1 if len(t.shape) == 1 else t.shape[0]
    if emb_keys and not 1 <= token_count <= 75:
        raise IncompatibleArtifact(f"An embedding of {token_count} vectors does not fit in a prompt (1-75).")

    # LoRA widths: text-encoder layers and the cross-attention key/value inputs see the text width.
    rank = None
    targets = set()
    for k in lora_keys:
        t = tensors[k]
        if k.endswith((".alpha", ".dora_scale")):
            continue
        target = _lora_target(k)
        targets.add(target)
        down = bool(re.search(r"(lora_down|lora_A|lora\.down|lora_linear_layer\.down|_lora\.down)", k))
        if len(t.shape) < 2:
            raise IncompatibleArtifact(f"LoRA layer `{k[:80]}` has a malformed shape {list(t.shape)}.")
        if down:
            rank = max(rank or 0, t.shape[0])
        in_width = t.shape[1] if down else None
        out_width = t.shape[0] if not down else None
        if target == "text_encoder":
            m = _TEXT_LAYERS.search(k)
            if m and not m.group(1).endswith("fc2") and in_width is not None and in_width != hidden_size:
                raise IncompatibleArtifact(WRONG_BASE.format(guess=_guess_base(in_width) + "?"))
            if m and not m.group(1).endswith("fc1") and out_width is not None and out_width != hidden_size:
                raise IncompatibleArtifact(WRONG_BASE.format(guess=_guess_base(out_width) + "?"))
        elif target == "unet" and _CROSS_KV.search(k) and in_width is not None and in_width != hidden_size:
            raise IncompatibleArtifact(WRONG_BASE.format(guess=_guess_base(in_width) + "?"))
    if lora_keys and not targets:
        raise IncompatibleArtifact("This LoRA holds no weights.")

    kind: ImportKind = "lora+embedding" if lora_keys and emb_keys else "lora" if lora_keys else "embedding"
    return ImportInfo(
        kind=kind, tensors=len(tensors), size_bytes=size_bytes, width=hidden_size, token_count=token_count,
        rank=rank, targets=tuple(sorted(t for t in targets if t)), embedding_names=tuple(emb_keys),
        metadata=dict(meta),
    )


def check_import(data: bytes, filename: str, *, hidden_size: int, max_bytes: int) -> ImportInfo:
    """Everything the bot checks before storing an uploaded concept file; raises a ``UserFacingError``."""
    refuse_pickle_name(filename)
    if not filename.lower().endswith(".safetensors"):
        raise InvalidInput(f"`{_safe_name(filename)}` is not a `.safetensors` file. KitBooth imports "
                           f"{BASE_NAME} LoRAs and embeddings in safetensors format only.")
    if len(data) > max_bytes:
        raise InvalidInput(f"That file is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB.")
    tensors, meta = parse_header(data, filename)
    info = classify(tensors, meta, hidden_size=hidden_size, size_bytes=len(data))
    refuse_reserved_triggers(info)
    return info


def _declared_triggers(info: ImportInfo) -> list[str]:
    """Every trigger the file names: embedding keys, and the tokens a KitBooth/kohya header declares."""
    names = list(info.embedding_names)
    meta = info.metadata
    raw = meta.get("tokens")
    if raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = [raw]
        names += [str(t) for t in (parsed if isinstance(parsed, list) else [parsed])]
    names += [meta[k] for k in ("kitbooth_trigger", "trigger", "ss_trigger") if meta.get(k)]
    return names


def refuse_reserved_triggers(info: ImportInfo) -> None:
    """A trigger that names the worker's slot tokens (``<kb-slot-N>``) or CLIP's special tokens would read
    another request's concept vectors (another member's face) in a shared batch: refuse the file."""
    for name in _declared_triggers(info):
        t = unicodedata.normalize("NFKC", name).lower()
        if "kb-slot" in t or "<|" in t:
            raise InvalidInput(f"This file's trigger `{_safe_name(name)}` uses a token KitBooth reserves. "
                               "Rename the embedding / trigger and upload it again.")


def describe(info: ImportInfo) -> dict[str, Any]:
    return {"kind": info.kind, "tensors": info.tensors, "tokens": info.token_count, "rank": info.rank,
            "targets": list(info.targets)}
