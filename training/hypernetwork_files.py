"""Hypernetwork files: AUTOMATIC1111's ``.pt`` layout and a ``.safetensors`` twin.

A1111's file is ``torch.save`` of a plain dict: ``{size: [k_state_dict, v_state_dict], 'layer_structure': [...],
'activation_func': str, 'is_layer_norm': bool, 'weight_initialization': str, 'use_dropout': bool,
'activate_output': bool, 'last_layer_dropout': bool, 'dropout_structure': [...], 'name': str, 'step': int,
'sd_checkpoint': str|None, 'sd_checkpoint_name': str|None, 'optional_info': ...}``. We write only plain
dicts/lists/tensors/scalars, and read only with ``torch.load(weights_only=True)``: a file that needs any other
pickle global (which could run code) is refused. Missing fields take A1111's loader defaults (note
``activate_output`` defaults to True there), and very old files' ``linear1``/``linear2`` keys are renamed as A1111
does.

The ``.safetensors`` form flattens the tensors to ``"<size>.<0=k|1=v>.<state_dict key>"`` and keeps the
structure in ``__metadata__`` as JSON strings (one per A1111 field, plus ``format``).
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from kitbooth.errors import IncompatibleArtifact
from training.hypernetwork import Hypernetwork, HypernetworkConfig

FORMAT = "a1111-hypernetwork"
REFUSED = ("This hypernetwork file holds more than weights (it would run code when loaded); "
           "save it again as plain tensors or as .safetensors.")
NOT_HYPERNETWORK = "This is not a hypernetwork file (expected an A1111 .pt or a .safetensors)."
_OLD_KEYS = {"linear1.bias": "linear.0.bias", "linear1.weight": "linear.0.weight",
             "linear2.bias": "linear.1.bias", "linear2.weight": "linear.1.weight"}


def to_a1111_dict(net: Hypernetwork) -> dict[Any, Any]:
    c = net.config
    out: dict[Any, Any] = dict(net.module_state_dicts())
    out.update({
        "step": int(net.step), "name": net.name, "layer_structure": [float(x) for x in c.layer_structure],
        "activation_func": c.activation_func, "is_layer_norm": c.is_layer_norm,
        "weight_initialization": c.weight_initialization, "sd_checkpoint": net.sd_checkpoint,
        "sd_checkpoint_name": net.sd_checkpoint_name, "activate_output": c.activate_output,
        "use_dropout": c.use_dropout, "dropout_structure": [float(x) for x in c.dropouts],
        "last_layer_dropout": c.last_layer_dropout, "optional_info": None,
    })
    return out


def save_a1111(net: Hypernetwork, path: str | Path | None = None) -> bytes:
    """A1111's ``.pt`` (bytes; also written to ``path`` when given)."""
    buf = io.BytesIO()
    torch.save(to_a1111_dict(net), buf)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def load_a1111(source: str | Path | bytes) -> Hypernetwork:
    """Read an A1111 ``.pt`` (path or bytes) with ``weights_only`` loading. Raises ``IncompatibleArtifact``."""
    try:
        raw = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as exc:
        raise IncompatibleArtifact(f"Cannot read the hypernetwork file ({exc.strerror or 'unreadable'}).") from None
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a global (code), or the bytes are no pickle
        raise IncompatibleArtifact(REFUSED if "global" in str(exc).lower() else NOT_HYPERNETWORK) from None
    except Exception:  # truncated zip, not a torch file at all...
        raise IncompatibleArtifact(NOT_HYPERNETWORK) from None
    if not isinstance(state, dict):
        raise IncompatibleArtifact(NOT_HYPERNETWORK)
    return from_a1111_dict(state)


def from_a1111_dict(state: dict[Any, Any]) -> Hypernetwork:
    bad = IncompatibleArtifact
    sizes = sorted(k for k in state if isinstance(k, int))
    if not sizes:
        raise bad("This hypernetwork file has no layers (expected sizes such as 768).")
    try:
        use_dropout = bool(state.get("use_dropout", False))
        dropouts = state.get("dropout_structure") or ()
        if any(dropouts):
            use_dropout = True
        config = HypernetworkConfig(
            sizes=tuple(sizes), layer_structure=tuple(float(x) for x in state.get("layer_structure") or (1, 2, 1)),
            activation_func=str(state.get("activation_func") or "linear"),
            is_layer_norm=bool(state.get("is_layer_norm", False)),
            weight_initialization=str(state.get("weight_initialization") or "Normal"),
            use_dropout=use_dropout, activate_output=bool(state.get("activate_output", True)),
            last_layer_dropout=bool(state.get("last_layer_dropout", False)),
            dropout_structure=tuple(float(x) for x in dropouts),
        )
    except (ValueError, TypeError) as exc:
        raise bad(f"This hypernetwork's structure is not supported ({str(exc).rstrip('.')}).") from None
    net = Hypernetwork(config, name=str(state.get("name") or "hypernetwork"), step=int(state.get("step") or 0),
                       sd_checkpoint=_opt_str(state.get("sd_checkpoint")),
                       sd_checkpoint_name=_opt_str(state.get("sd_checkpoint_name")))
    for size in sizes:
        pair = state[size]
        if not isinstance(pair, list | tuple) or len(pair) != 2 or not all(isinstance(d, dict) for d in pair):
            raise bad(f"Hypernetwork layer {size} is not a K/V pair of weights.")
        for module, sd in zip(net.pair(size) or (), pair, strict=True):
            _load_module(module, {_OLD_KEYS.get(k, k): v for k, v in sd.items()}, size)
    return net.eval()


def _load_module(module: torch.nn.Module, sd: dict[str, Any], size: int) -> None:
    own = module.state_dict()
    if set(sd) != set(own):
        raise IncompatibleArtifact(f"Hypernetwork layer {size}'s weights do not match its stated structure.")
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor) or v.shape != own[k].shape:
            raise IncompatibleArtifact(f"Hypernetwork layer {size}'s weight {k} has the wrong shape.")
    module.load_state_dict({k: v.float() for k, v in sd.items()})


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def save_safetensors(net: Hypernetwork, path: str | Path | None = None) -> bytes:
    """The ``.safetensors`` twin (bytes; also written to ``path`` when given)."""
    tensors = {f"{size}.{i}.{k}": v.contiguous() for size, pair in net.module_state_dicts().items()
               for i, sd in enumerate(pair) for k, v in sd.items()}
    meta = {k: json.dumps(v) for k, v in to_a1111_dict(net).items() if isinstance(k, str)}
    meta["format"] = json.dumps(FORMAT)
    data = st_save(tensors, metadata=meta)
    if path is not None:
        Path(path).write_bytes(data)
    return data


def load_safetensors(source: str | Path | bytes) -> Hypernetwork:
    """Read the ``.safetensors`` twin. Raises ``IncompatibleArtifact``."""
    try:
        raw = source if isinstance(source, bytes) else Path(source).read_bytes()
        tensors = st_load(raw)
        meta = _metadata(raw)
        if json.loads(meta.get("format", "null")) != FORMAT:
            raise ValueError
        state: dict[Any, Any] = {k: json.loads(v) for k, v in meta.items() if k != "format"}
    except OSError as exc:
        raise IncompatibleArtifact(f"Cannot read the hypernetwork file ({exc.strerror or 'unreadable'}).") from None
    except (SafetensorError, ValueError):
        raise IncompatibleArtifact("This is not a KitBooth hypernetwork .safetensors file.") from None
    for key, value in tensors.items():
        size, which, name = _split_key(key)
        state.setdefault(size, [{}, {}])[which][name] = value
    return from_a1111_dict(state)


def _split_key(key: str) -> tuple[int, int, str]:
    size, which, name = (key.split(".", 2) + ["", ""])[:3]
    if not size.isdigit() or which not in ("0", "1") or not name:
        raise IncompatibleArtifact(f"Unexpected tensor {key!r} in the hypernetwork file.")
    return int(size), int(which), name


def _metadata(raw: bytes) -> dict[str, str]:
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError
    return meta


def load_any(source: str | Path | bytes) -> Hypernetwork:
    """Either form, told apart by content: a safetensors header is JSON after its 8-byte length; anything else
    goes to the torch loader (zip or legacy pickle), which refuses what it cannot read."""
    try:
        raw = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as exc:
        raise IncompatibleArtifact(f"Cannot read the hypernetwork file ({exc.strerror or 'unreadable'}).") from None
    return load_safetensors(raw) if raw[8:9] == b"{" else load_a1111(raw)
