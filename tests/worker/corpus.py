"""A corpus of concept files for the validator ⇔ worker test: valid seeds of every layout the worker supports,
made by the real exporters on the tiny model, and their mutations class by class (``variants``)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import save as np_save

from kitbooth import limits
from training.artifact import save_artifact
from training.base_layers import BaseModel
from training.concept_layouts import kohya_name
from training.exports import export


@dataclass(frozen=True)
class Variant:
    name: str
    data: bytes


# --- raw safetensors editing ------------------------------------------------------------------------------
def split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: object, body: bytes, *, raw: bytes | None = None) -> bytes:
    h = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


def arrays(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    header, body = split(data)
    meta = header.pop("__metadata__", {})
    dt = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}
    out = {k: np.frombuffer(body[e["data_offsets"][0]:e["data_offsets"][1]], dt[e["dtype"]]).reshape(e["shape"]).copy()
           for k, e in header.items()}
    return out, meta


def rebuild(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> bytes:
    return np_save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=meta or None)


# --- seeds -------------------------------------------------------------------------------------------------
def seeds(pipe, base: BaseModel, tmp) -> dict[str, bytes]:
    """Valid files of every layout, from the real writers (save_artifact, export) and the tiny model's table."""
    from tests.training.concepts import make_artifact

    out: dict[str, bytes] = {}
    piv = make_artifact(pipe, method="pivotal", text=True, seed=1, kind="kit")  # a face is no kit
    out["own-pivotal"] = save_artifact(piv)
    out["own-ti"] = save_artifact(make_artifact(pipe, method="ti", seed=2, kind="kit"))
    for fmt in ("kohya", "a1111", "diffusers"):
        for f in export(piv, fmt, tmp / fmt):
            out[f"{fmt}-{f.name}"] = f.read_bytes()
    lora, meta = arrays(out["kohya-kb-kit-lora.safetensors"])
    emb, _ = arrays(out["kohya-kb-kit.safetensors"])
    out["kohya-bundle"] = rebuild({**lora, "bundle_emb.arsenal.string_to_param.*": emb["emb_params"]}, meta)
    out["a1111-safetensors"] = rebuild({"string_to_param.*": emb["emb_params"]}, {})
    out["diffusers-ti-1d"] = rebuild({"<red-kit>": emb["emb_params"][0]}, {})
    rng = np.random.default_rng(0)
    locon: dict[str, np.ndarray] = {}
    convs = [p for p, layer in base.unet.items() if layer.kernel is not None][:6]
    for i, path in enumerate(convs):  # LoCon: conv layers, mixed ranks and alphas
        rank = 2 + i % 3
        a_shape, b_shape = base.unet[path].lora_shapes(rank)
        name = kohya_name(path, text=False)
        locon[f"{name}.lora_down.weight"] = (rng.standard_normal(a_shape) * 0.1).astype(np.float16)
        locon[f"{name}.lora_up.weight"] = (rng.standard_normal(b_shape) * 0.1).astype(np.float16)
        locon[f"{name}.alpha"] = np.array(float(rank + i % 2), np.float16)
    out["kohya-locon"] = rebuild(locon, {"ss_network_module": "lycoris.kohya"})
    return out


# --- mutations ---------------------------------------------------------------------------------------------
_BAD_VALUES = [None, True, 1.5, "x", [], {}, [[1]], {"a": 1}]


def _entry_mutations(name: str, data: bytes) -> Iterator[Variant]:
    header, body = split(data)
    keys = [k for k in header if k != "__metadata__"]
    for key in keys[:2] + keys[-1:]:
        e = header[key]
        for field_ in ("dtype", "shape", "data_offsets"):
            for bad in _BAD_VALUES:
                yield Variant(f"{name}|{key}.{field_}={bad!r}", join({**header, key: {**e, field_: bad}}, body))
            yield Variant(f"{name}|{key}.{field_} missing",
                          join({**header, key: {k: v for k, v in e.items() if k != field_}}, body))
        yield Variant(f"{name}|{key} extra field", join({**header, key: {**e, "extra": 1}}, body))
        for bad in ([e], "x", 3, None, {"nested": e}):
            yield Variant(f"{name}|{key} entry={type(bad).__name__}", join({**header, key: bad}, body))
        b, end = e["data_offsets"]
        for offs in ([end, b], [b, end + 2], [b - 2, end - 2] if b >= 2 else [b + 1, end + 1], [b, len(body) + 8],
                     [-1, end], [0, 2**64]):
            yield Variant(f"{name}|{key}.data_offsets={offs}", join({**header, key: {**e, "data_offsets": offs}}, body))
        for dt in ("F32", "I32", "F64", "U8", "BOOL", "F8_E4M3", "XX"):
            yield Variant(f"{name}|{key}.dtype={dt}", join({**header, key: {**e, "dtype": dt}}, body))
        shape = e["shape"]
        for shp in (list(reversed(shape)), [int(np.prod(shape))], shape + [1], [0] + shape[1:], [-1] + shape[1:]):
            yield Variant(f"{name}|{key}.shape={shp}", join({**header, key: {**e, "shape": shp}}, body))
    for bad in (["x"], "x", {"k": 1}, {"k": None}, {"k": {"x": "y"}}, {"k": ["y"]}, None, 7):
        yield Variant(f"{name}|__metadata__={bad!r}", join({**header, "__metadata__": bad}, body))
    n = len(json.dumps(header))
    raw = json.dumps(header).encode()
    for label, blob in (
        ("header length huge", struct.pack("<Q", 2**63) + raw + body),
        ("header length 0", struct.pack("<Q", 0) + raw + body),
        ("header length +1", struct.pack("<Q", n + 1) + raw + body),
        ("header length -1", struct.pack("<Q", n - 1) + raw + body),
        ("truncated", data[: len(data) - 3]),
        ("truncated header", data[: 8 + n // 2]),
        ("trailing garbage", data + b"garbage!"),
        ("header is a list", join([header], body)),
        ("header not utf-8", join(None, body, raw=b"{\xff\xfe}")),
        ("duplicate keys", join(None, body, raw=raw[:-1] + b", " + raw[1:])),
        ("padded header", join(None, body, raw=raw + b"    ")),
        ("no tensors", join({"__metadata__": header.get("__metadata__", {})}, b"")),
    ):
        yield Variant(f"{name}|{label}", blob)


def _value_mutations(name: str, data: bytes) -> Iterator[Variant]:
    tensors, meta = arrays(data)
    for key in list(tensors):
        for label, value in (("nan", np.nan), ("inf", np.inf), ("-inf", -np.inf), ("1e5", 1e5)):
            t = {k: v.astype(np.float32) if k == key else v for k, v in tensors.items()}
            t[key].reshape(-1)[0] = value
            yield Variant(f"{name}|{key}={label}", rebuild(t, meta))
        if key.endswith((".lora_down.weight", ".lora_up.weight", ".lora_A.weight", ".lora_B.weight")):
            yield Variant(f"{name}|drop {key}", rebuild({k: v for k, v in tensors.items() if k != key}, meta))
    first = next(iter(tensors))
    yield Variant(f"{name}|{first} as F32", rebuild({**tensors, first: tensors[first].astype(np.float32)}, meta))
    yield Variant(f"{name}|{first} as int", rebuild({**tensors, first: tensors[first].astype(np.int32)}, meta))


def _lora_mutations(name: str, data: bytes, base: BaseModel) -> Iterator[Variant]:
    tensors, meta = arrays(data)
    downs = [k for k in tensors if k.endswith((".lora_down.weight", ".lora_A.weight", "lora.down.weight"))]
    if not downs:
        return
    down = downs[0]
    up = down.replace("lora_down", "lora_up").replace("lora_A", "lora_B").replace("lora.down", "lora.up")
    a, b = tensors[down], tensors[up]
    for rank in (0, limits.LORA_RANK_MAX + 1, a.shape[0] + 1):
        ra = np.zeros((rank, *a.shape[1:]), a.dtype)
        rb = np.zeros((b.shape[0], rank, *b.shape[2:]), b.dtype)
        yield Variant(f"{name}|rank {rank}", rebuild({**tensors, down: ra, up: rb}, meta))
        yield Variant(f"{name}|down rank {rank}", rebuild({**tensors, down: ra}, meta))
    yield Variant(f"{name}|down transposed", rebuild({**tensors, down: np.ascontiguousarray(a.swapaxes(0, 1))}, meta))
    yield Variant(f"{name}|down 4d", rebuild({**tensors, down: a.reshape(*a.shape, 1, 1)}, meta))
    yield Variant(f"{name}|fan-in x2", rebuild({**tensors, down: np.concatenate([a, a], axis=1)}, meta))
    for new in ("down_blocks.9", "up_blocks.0.attentions.7", "mid_blocks.0"):
        for old in ("down_blocks.0", "down_blocks_0", "up_blocks.1", "up_blocks_1", "mid_block"):
            if old in down:
                new_ = new.replace(".", "_") if "_" in old[-2:] else new
                moved = {k.replace(old, new_) if k.startswith(down.rsplit(".lora", 1)[0]) else k: v
                         for k, v in tensors.items()}
                yield Variant(f"{name}|layer {old}->{new_}", rebuild(moved, meta))
                break
    alpha = down.replace(".lora_down.weight", ".alpha")
    if alpha in tensors:
        for label, value in (("nan", np.nan), ("inf", np.inf), ("1e30", 1e30), ("0", 0.0), ("-4", -4.0)):
            yield Variant(f"{name}|alpha={label}", rebuild({**tensors, alpha: np.array(value, np.float32)}, meta))
        yield Variant(f"{name}|alpha vector", rebuild({**tensors, alpha: np.ones(2, np.float32)}, meta))
        yield Variant(f"{name}|alpha alone", rebuild({k: v for k, v in tensors.items() if k not in (down, up)}, meta))
    yield Variant(f"{name}|unknown suffix", rebuild({**tensors, down.replace("weight", "bias"): a}, meta))


def _meta_mutations(name: str, data: bytes) -> Iterator[Variant]:
    tensors, meta = arrays(data)
    if meta.get("format") == "kitbooth.concept":
        for field_, value in (("rank", "x"), ("rank", "8"), ("tokens", "[1]"), ("tokens", "not json"),
                              ("tokens", "[]"), ("tokens", json.dumps(["<kb-slot-0>", "<kb-face-1>"])),
                              ("tokens", json.dumps(["<ｋｂ－ｓｌｏｔ-0>", "b"])), ("hidden_size", "768"),
                              ("hidden_size", "x"), ("format_version", "2"), ("kind", "boss"), ("method", "magic"),
                              ("alpha", "nan"), ("alpha", "x"), ("steps", "-1"), ("extra", "[]"),
                              ("kind", "face")):  # a face offered as a kit: consent (both sides refuse)
            yield Variant(f"{name}|meta {field_}={value}", rebuild(tensors, {**meta, field_: value}))
    else:
        for value in ("<kb-slot-2>", "<|endoftext|>", "ＫＢ-ＳＬＯＴ", "arsenal", "alice-kb-face"):
            yield Variant(f"{name}|trigger {value}", rebuild(tensors, {**meta, "kitbooth_trigger": value}))
        yield Variant(f"{name}|lora_adapter_metadata bad",
                      rebuild(tensors, {**meta, "lora_adapter_metadata": "[1]"}))
        yield Variant(f"{name}|lora_adapter_metadata alpha nan",
                      rebuild(tensors, {**meta, "lora_adapter_metadata": '{"unet.lora_alpha": NaN}'}))
        yield Variant(f"{name}|sdxl metadata", rebuild(tensors, {**meta, "ss_base_model_version": "sdxl_base_v1-0"}))


def _embedding_variants(emb: np.ndarray) -> Iterator[Variant]:
    for key in ("<kb-slot-1>", "<|endoftext|>", "kb slot", "<ｋｂ-ｓｌｏｔ>", "<red>", "*", "emb_params"):
        yield Variant(f"emb|ti key {key}", rebuild({key: emb}, {}))
    for n in (0, 1, limits.TI_VECTORS_MAX, limits.TI_VECTORS_MAX + 1):
        yield Variant(f"emb|ti {n} vectors", rebuild({"emb_params": np.resize(emb, (n, emb.shape[-1]))}, {}))
    yield Variant("emb|ti 3d", rebuild({"emb_params": emb[None]}, {}))
    yield Variant("emb|ti width+1", rebuild({"emb_params": np.resize(emb, (2, emb.shape[-1] + 1))}, {}))
    yield Variant("emb|ti two tensors", rebuild({"emb_params": emb, "other": emb}, {}))
    yield Variant("emb|bundle reserved", rebuild({"bundle_emb.kb_slot.string_to_param.*": emb}, {}))
    yield Variant("emb|two bundles", rebuild({"bundle_emb.a.string_to_param.*": emb, "bundle_emb.b.emb_params": emb}, {}))
    yield Variant("emb|sdxl ti", rebuild({"clip_l": emb, "clip_g": emb}, {}))


def variants(pipe, base: BaseModel, tmp) -> list[Variant]:
    out: list[Variant] = []
    made = seeds(pipe, base, tmp)
    for name, data in made.items():
        out.append(Variant(name, data))
        if data[:1] == b"\x80" or data[:2] == b"PK":  # the A1111 .pt export: a pickle, refused by both
            continue
        for gen in (_entry_mutations(name, data), _value_mutations(name, data), _lora_mutations(name, data, base),
                    _meta_mutations(name, data)):
            out.extend(gen)
    emb, _ = arrays(made["kohya-kb-kit.safetensors"])
    out.extend(_embedding_variants(emb["emb_params"]))
    return out
