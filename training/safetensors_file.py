"""A strict, torch-free reader of ``.safetensors`` bytes: every header field checked, tensors read with numpy.

Layout: an 8-byte little-endian header length N, N bytes of JSON ``{name: {"dtype", "shape", "data_offsets"},
"__metadata__": {str: str}}`` (may be padded with spaces), then the tensor bytes. Offsets are relative to the
end of the header; the tensors must tile the data exactly (no overlap, no gap, nothing after the last one).
Anything else — a field of the wrong type, a nested value, an unknown dtype, a size that is not
dtype x shape, a duplicate name, a header length that does not fit — is refused with one sentence
(``IncompatibleArtifact``) naming the file. Pickles (``.pt`` / ``.ckpt``) are recognised and refused, never opened.
"""

from __future__ import annotations

import json
import re
import struct
from math import prod

import numpy as np

from kitbooth.errors import IncompatibleArtifact

MAX_HEADER_BYTES = 100_000_000  # the spec's own limit
MAX_TENSORS = 10_000
MAX_DIMS = 8
# dtype -> (bytes per element, numpy dtype or None when numpy has none: BF16 is widened by hand)
DTYPES: dict[str, tuple[int, str | None]] = {
    "BOOL": (1, "bool"), "U8": (1, "<u1"), "I8": (1, "<i1"), "F8_E5M2": (1, None), "F8_E4M3": (1, None),
    "I16": (2, "<i2"), "U16": (2, "<u2"), "F16": (2, "<f2"), "BF16": (2, None), "I32": (4, "<i4"),
    "U32": (4, "<u4"), "F32": (4, "<f4"), "I64": (8, "<i8"), "U64": (8, "<u8"), "F64": (8, "<f8"),
}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")

PICKLE_REFUSED = ("`{name}` is a PyTorch pickle file, which can run code when opened, so KitBooth accepts only "
                  "`.safetensors` files — look for a safetensors download of it, or convert it first.")
NOT_SAFETENSORS = ("`{name}` is not a valid `.safetensors` file ({why}) — upload the `.safetensors` LoRA or "
                   "embedding file itself.")


def safe_name(filename: str) -> str:
    """A file name fit to quote back to a user (no markdown, no control characters, short)."""
    return re.sub(r"[^A-Za-z0-9._ -]", "_", filename)[:80] or "file"


def looks_like_pickle(data: bytes) -> bool:
    # pickle: PROTO (0x80) + protocol 2..5; torch.save's zip format: "PK\x03\x04" (a zip holding a pickle).
    # A safetensors header length can start with the same bytes (896 = 80 03 00 ..): a JSON header there wins.
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    if 2 <= n <= len(data) - 8 and data[8:9] == b"{":
        return False
    return (len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5) or data[:4] == b"PK\x03\x04"


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate name {k[:40]!r}")
        out[k] = v
    return out


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _short(key: str) -> str:
    return safe_name(key)[:60]


def read(data: bytes, filename: str = "file") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(tensors, metadata)`` of safetensors ``data``; raises ``IncompatibleArtifact`` (one sentence) otherwise."""
    name = safe_name(filename)
    if looks_like_pickle(data):
        raise IncompatibleArtifact(PICKLE_REFUSED.format(name=name))

    def bad(why: str) -> IncompatibleArtifact:
        return IncompatibleArtifact(NOT_SAFETENSORS.format(name=name, why=why))

    if len(data) < 10:
        raise bad("too short")
    (n,) = struct.unpack("<Q", data[:8])
    if n < 2 or n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise bad("bad header length")
    raw = data[8 : 8 + n]
    if raw[:1] != b"{":
        raise bad("no JSON header")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        why = str(exc) if str(exc).startswith("duplicate name") else "unreadable header"
        raise bad(why) from None
    except RecursionError:  # JSON nested thousands deep
        raise bad("header nested too deeply") from None
    if not isinstance(header, dict):
        raise bad("header is not an object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise bad("its metadata is not a map of strings to strings")
    if not header:
        raise bad("it holds no tensors")
    if len(header) > MAX_TENSORS:
        raise bad(f"more than {MAX_TENSORS} tensors")
    body = memoryview(data)[8 + n :]
    entries: list[tuple[int, int, str, str, tuple[int, ...]]] = []
    for key, entry in header.items():
        if not key or not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"bad entry for {_short(key)!r}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise bad(f"unknown dtype for {_short(key)!r}")
        if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_is_int(d) and d >= 0 for d in shape):
            raise bad(f"bad shape for {_short(key)!r}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
            raise bad(f"bad offsets for {_short(key)!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= len(body):
            raise bad(f"offsets of {_short(key)!r} lie outside the file")
        if end - begin != prod(shape) * DTYPES[dtype][0]:
            raise bad(f"the size of {_short(key)!r} does not match its dtype and shape")
        entries.append((begin, end, key, dtype, tuple(shape)))
    entries.sort()
    pos = 0
    for begin, end, _key, _dtype, _shape in entries:  # the spec: tensors tile the data exactly
        if begin != pos:
            raise bad("tensor data overlaps or has gaps")
        pos = end
    if pos != len(body):
        raise bad("trailing bytes after the tensors")
    tensors = {key: _array(body[begin:end], dtype, shape) for begin, end, key, dtype, shape in entries}
    return tensors, dict(meta)


def _array(buf: memoryview, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    np_dtype = DTYPES[dtype][1]
    if dtype == "BF16":  # bfloat16 = the top half of a float32
        wide = np.frombuffer(buf, "<u2").astype(np.uint32) << 16
        return wide.view(np.float32).reshape(shape)
    if np_dtype is None:  # fp8: kept as raw bytes; the concept checks refuse it by dtype
        return np.frombuffer(buf, np.uint8).reshape(shape)
    return np.frombuffer(buf, np_dtype).reshape(shape)

