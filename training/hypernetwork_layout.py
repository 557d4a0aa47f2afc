"""A hypernetwork's structure and the exact tensors it implies, torch-free (for the one concept-file validator).

``training.hypernetwork`` builds the MLPs with torch; this module knows, from A1111's structure fields alone,
which ``state_dict`` keys and shapes each K/V module of width ``size`` has (a test checks it against the real
modules), so ``training.concept_file`` can refuse a malformed or foreign file before any tensor is built.
Tensor names are flat: ``"<size>.<0=k|1=v>.linear.<index>.<weight|bias>"``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from kitbooth.errors import IncompatibleArtifact

# A1111's names plus torch.nn's activations that build without arguments (training.hypernetwork.ACTIVATIONS),
# less "glu", which halves the width (A1111 cannot run it either).
ACTIVATION_NAMES = (
    "celu", "elu", "gelu", "hardshrink", "hardsigmoid", "hardswish", "hardtanh", "leakyrelu", "linear",
    "logsigmoid", "logsoftmax", "mish", "prelu", "relu", "relu6", "rrelu", "selu", "sigmoid", "silu", "softmax",
    "softmax2d", "softmin", "softplus", "softshrink", "softsign", "swish", "tanh", "tanhshrink",
)
WEIGHT_INITS = ("Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal")
MAX_WIDTH_FACTOR = 8  # 1,8,1 on SD 1.5 is already ~19M parameters per module
MAX_LAYERS = 8
MAX_SIZE = 4096
_KEY = re.compile(r"^(\d{1,5})\.([01])\.(linear\.\d{1,3}\.(?:weight|bias))$")


def _bad(what: str) -> IncompatibleArtifact:
    return IncompatibleArtifact(f"This hypernetwork file {what} — save it again from A1111 or KitBooth.")


def _bool(fields: dict[str, Any], key: str, default: bool) -> bool:
    value = fields.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool | int) or value not in (0, 1, True, False):
        raise _bad(f"has a {key} that is not true or false")
    return bool(value)


def dropouts_for(layer_structure: list[float], use_dropout: bool, last_layer_dropout: bool) -> list[float]:
    """A1111's ``parse_dropout_structure`` (as ``training.hypernetwork.dropout_structure_for``)."""
    if not use_dropout:
        return [0.0] * len(layer_structure)
    return [0.0] + [0.3] * (len(layer_structure) - 3) + [0.3 if last_layer_dropout else 0.0, 0.0]


def read_structure(fields: dict[str, Any]) -> dict[str, Any]:
    """A1111's structure fields (missing ones take A1111 loader's defaults), checked; raises one sentence."""
    ls_raw = fields.get("layer_structure") or [1, 2, 1]
    if (not isinstance(ls_raw, list | tuple) or not 2 <= len(ls_raw) <= MAX_LAYERS
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in ls_raw)):
        raise _bad(f"has no layer structure of 2 to {MAX_LAYERS} numbers (like 1,2,1)")
    ls = [float(x) for x in ls_raw]
    if ls[0] != 1 or ls[-1] != 1 or any(not 0 < m <= MAX_WIDTH_FACTOR for m in ls):
        raise _bad(f"has a layer structure that does not start and end with 1 within 0..{MAX_WIDTH_FACTOR}")
    act = fields.get("activation_func") or "linear"
    if not isinstance(act, str) or act.lower() not in ACTIVATION_NAMES:
        raise _bad("uses an activation KitBooth does not know")
    init = fields.get("weight_initialization") or "Normal"
    if not isinstance(init, str) or init not in WEIGHT_INITS:
        raise _bad("names an unknown weight initialisation")
    use_dropout = _bool(fields, "use_dropout", False)
    last = _bool(fields, "last_layer_dropout", False)
    drops_raw = fields.get("dropout_structure") or []
    if not isinstance(drops_raw, list | tuple) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in drops_raw):
        raise _bad("has a dropout structure that is not a list of numbers")
    drops = [float(x) for x in drops_raw]
    if drops and (len(drops) != len(ls) or drops[-1] != 0 or any(not 0 <= p < 1 for p in drops)):
        raise _bad("has a dropout structure that does not match its layers")
    if any(drops):
        use_dropout = True
    return {"layer_structure": ls, "activation_func": act.lower(), "is_layer_norm": _bool(fields, "is_layer_norm", False),
            "weight_initialization": init, "use_dropout": use_dropout,
            "activate_output": _bool(fields, "activate_output", True), "last_layer_dropout": last,
            "dropout_structure": drops or dropouts_for(ls, use_dropout, last)}


def module_shapes(size: int, s: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """``{"linear.<i>.<weight|bias>": shape}`` of one K or V module of width ``size`` (A1111's layer order)."""
    ls, drops, act = s["layer_structure"], s["dropout_structure"], s["activation_func"]
    out: dict[str, tuple[int, ...]] = {}
    i = 0
    for n in range(len(ls) - 1):
        fan_in, width = int(size * ls[n]), int(size * ls[n + 1])
        out[f"linear.{i}.weight"], out[f"linear.{i}.bias"] = (width, fan_in), (width,)
        i += 1
        if act != "linear" and not (n >= len(ls) - 2 and not s["activate_output"]):
            if act == "prelu":  # the one activation with a parameter
                out[f"linear.{i}.weight"] = (1,)
            i += 1
        if s["is_layer_norm"]:
            out[f"linear.{i}.weight"], out[f"linear.{i}.bias"] = (width,), (width,)
            i += 1
        if drops[n + 1] > 0:
            i += 1
    return out


def split_key(key: str) -> tuple[int, int, str]:
    m = _KEY.match(key)
    if m is None:
        raise _bad(f"has a tensor named {key[:60]!r}, which is not a hypernetwork weight")
    return int(m[1]), int(m[2]), m[3]


def check_tensors(shapes: dict[str, tuple[int, ...]], structure: dict[str, Any],
                  widths: set[int] | None) -> list[int]:
    """The sizes of flat tensors ``{key: shape}`` that match ``structure`` exactly (both K and V, every key,
    every shape); ``widths``: the base model's attention context widths, one of which a size must be."""
    by_module: dict[tuple[int, int], dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        size, which, name = split_key(key)
        by_module.setdefault((size, which), {})[name] = tuple(shape)
    sizes = sorted({size for size, _ in by_module})
    if not sizes:
        raise _bad("has no layers")
    for size in sizes:
        if not 1 <= size <= MAX_SIZE:
            raise _bad(f"has a layer of width {size}")
        want = module_shapes(size, structure)
        for which in (0, 1):
            got = by_module.get((size, which))
            if got is None:
                raise _bad(f"lacks the {'K' if which == 0 else 'V'} half of layer {size}")
            if got != want:
                raise _bad(f"has weights for layer {size} that do not match its stated structure")
    if widths is not None and not set(sizes) & widths:
        raise IncompatibleArtifact(f"This hypernetwork is for context widths {sizes}, but this base model uses "
                                   f"{sorted(widths)} — use one made for this base model.")
    return sizes


# --- A1111's .pt dict (read torch-free by training.torch_pickle) -> the .safetensors twin's form ------------
FORMAT = "a1111-hypernetwork"  # the twin's ``__metadata__["format"]`` (JSON-encoded, as every twin field)
_OLD_KEYS = {"linear1.bias": "linear.0.bias", "linear1.weight": "linear.0.weight",
             "linear2.bias": "linear.1.bias", "linear2.weight": "linear.1.weight"}
_FIELDS = ("step", "name", "layer_structure", "activation_func", "is_layer_norm", "weight_initialization",
           "sd_checkpoint", "sd_checkpoint_name", "activate_output", "use_dropout", "dropout_structure",
           "last_layer_dropout", "kitbooth_kind", "kitbooth_trigger")


def is_a1111_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and any(isinstance(k, int) and not isinstance(k, bool) for k in obj)


def flatten_a1111(state: dict[Any, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``(tensors, metadata)`` as ``training.hypernetwork_files.save_safetensors`` writes them: tensors
    ``"<size>.<0|1>.<key>"`` (very old ``linear1``/``linear2`` keys renamed as A1111 does), every structure field
    JSON-encoded, ``format`` = ``"a1111-hypernetwork"``."""

    tensors: dict[str, Any] = {}
    for size in sorted(k for k in state if isinstance(k, int) and not isinstance(k, bool)):
        pair = state[size]
        if not isinstance(pair, list | tuple) or len(pair) != 2 or not all(isinstance(d, dict) for d in pair):
            raise _bad(f"has a layer {size} that is not a K/V pair of weights")
        for which, sd in enumerate(pair):
            for key, value in sd.items():
                if not isinstance(key, str) or not hasattr(value, "shape"):
                    raise _bad(f"has something other than weights in layer {size}")
                tensors[f"{size}.{which}.{_OLD_KEYS.get(key, key)}"] = value
    meta: dict[str, str] = {"format": json.dumps(FORMAT)}
    for key in _FIELDS:
        if key in state:
            value = state[key]
            if value is not None and not isinstance(value, str | int | float | bool | list | tuple):
                raise _bad(f"has a {key} field KitBooth cannot read")
            try:
                meta[key] = json.dumps(list(value) if isinstance(value, tuple) else value)
            except (TypeError, ValueError):
                raise _bad(f"has a {key} field KitBooth cannot read") from None
    return tensors, meta


def twin_fields(metadata: dict[str, str]) -> dict[str, Any] | None:
    """The decoded fields of a ``.safetensors`` twin (None when the metadata is not a twin's)."""

    try:
        if json.loads(metadata.get("format", "null")) != FORMAT:
            return None
        return {k: json.loads(v) for k, v in metadata.items() if k != "format"}
    except ValueError:
        return None


def describe(structure: dict[str, Any], tensors: dict[str, Any], name: str = "") -> dict[str, Any]:
    """What ``kitbooth inspect`` shows of a hypernetwork (structure, widths, parameters)."""
    return {"name": name, "layer_structure": ",".join(f"{m:g}" for m in structure["layer_structure"]),
            "activation": structure["activation_func"], "layer_norm": structure["is_layer_norm"],
            "dropout": ",".join(f"{p:g}" for p in structure["dropout_structure"]),
            "activate_output": structure["activate_output"],
            "widths": sorted({int(k.split(".", 1)[0]) for k in tensors}),
            "parameters": sum(math.prod(v.shape) for v in tensors.values())}


def own_structure(metadata: dict[str, str]) -> dict[str, Any] | None:
    """The structure a KitBooth concept file keeps in ``__metadata__["hypernetwork"]`` (None: none readable)."""
    try:
        fields = json.loads(metadata.get("hypernetwork") or "null")
    except ValueError:
        return None
    return fields if isinstance(fields, dict) else None


def check_hypernetwork(tensors: dict[str, Any], fields: dict[str, Any] | None, base: Any) -> dict[str, Any]:
    """A concept file's hypernetwork, exactly: its structure (``fields``: A1111's, None when the file has none)
    and every tensor against it, at a width of ``base``'s attention layers (``training.base_layers.BaseModel``;
    None: any width). Returns the structure; raises one sentence."""
    if fields is None:
        raise IncompatibleArtifact("This KitBooth concept file has hypernetwork weights but no structure — "
                                   "retrain or re-export it.")
    structure = read_structure(fields)
    widths = None if base is None else {
        layer.fan_in for path, layer in base.unet.items() if path.endswith((".to_k", ".to_v"))}
    check_tensors({k: tuple(v.shape) for k, v in tensors.items()}, structure, widths)
    return structure
