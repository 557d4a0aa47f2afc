"""Hypernetwork files: AUTOMATIC1111's ``.pt`` layout and a ``.safetensors`` twin.

A1111's file is ``torch.save`` of a plain dict: ``{size: [k_state_dict, v_state_dict], 'layer_structure': [...],
'activation_func': str, 'is_layer_norm': bool, 'weight_initialization': str, 'use_dropout': bool,
'activate_output': bool, 'last_layer_dropout': bool, 'dropout_structure': [...], 'name': str, 'step': int,
'sd_checkpoint': str|None, 'sd_checkpoint_name': str|None, 'optional_info': ...}``. We write only plain
dicts/lists/tensors/scalars. Reading goes through the same torch-free checks as every concept file
(``training.torch_pickle``: an allow-list unpickler, stricter than ``torch.load(weights_only=True)``, so a file
that needs any other pickle global — which could run code — is refused; ``training.hypernetwork_layout``: the
structure and every tensor's shape). Missing fields take A1111's loader defaults (note ``activate_output``
defaults to True there), and very old files' ``linear1``/``linear2`` keys are renamed as A1111 does.

The ``.safetensors`` form flattens the tensors to ``"<size>.<0=k|1=v>.<state dict key>"`` and keeps the
structure in ``__metadata__`` as JSON strings (one per A1111 field, plus ``format``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as st_save

from kitbooth.errors import IncompatibleArtifact
from training import safetensors_file, torch_pickle
from training.hypernetwork import Hypernetwork, network_from
from training.hypernetwork_layout import (
    FORMAT,
    check_tensors,
    flatten_a1111,
    is_a1111_dict,
    read_structure,
    twin_fields,
)

REFUSED = torch_pickle.REFUSED
NOT_HYPERNETWORK = "This is not a hypernetwork file (expected an A1111 .pt or a .safetensors)."


def to_a1111_dict(net: Hypernetwork, extra: dict[str, str] | None = None) -> dict[Any, Any]:
    """A1111's dict; ``extra``: more string fields (e.g. ``kitbooth_kind``, which A1111 ignores)."""
    c = net.config
    out: dict[Any, Any] = dict(net.module_state_dicts())
    out.update({
        "step": int(net.step), "name": net.name, "layer_structure": [float(x) for x in c.layer_structure],
        "activation_func": c.activation_func, "is_layer_norm": c.is_layer_norm,
        "weight_initialization": c.weight_initialization, "sd_checkpoint": net.sd_checkpoint,
        "sd_checkpoint_name": net.sd_checkpoint_name, "activate_output": c.activate_output,
        "use_dropout": c.use_dropout, "dropout_structure": [float(x) for x in c.dropouts],
        "last_layer_dropout": c.last_layer_dropout, "optional_info": None, **(extra or {}),
    })
    return out


def save_a1111(net: Hypernetwork, path: str | Path | None = None, extra: dict[str, str] | None = None) -> bytes:
    """A1111's ``.pt`` (bytes; also written to ``path`` when given)."""
    buf = io.BytesIO()
    torch.save(to_a1111_dict(net, extra), buf)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def save_safetensors(net: Hypernetwork, path: str | Path | None = None,
                     extra: dict[str, str] | None = None) -> bytes:
    """The ``.safetensors`` twin (bytes; also written to ``path`` when given)."""
    tensors = {f"{size}.{i}.{k}": v.contiguous() for size, pair in net.module_state_dicts().items()
               for i, sd in enumerate(pair) for k, v in sd.items()}
    meta = {k: json.dumps(v) for k, v in to_a1111_dict(net, extra).items() if isinstance(k, str)}
    meta["format"] = json.dumps(FORMAT)
    data = st_save(tensors, metadata=meta)
    if path is not None:
        Path(path).write_bytes(data)
    return data


def load_a1111(source: str | Path | bytes) -> Hypernetwork:
    """Read an A1111 ``.pt`` (path or bytes), torch-free and allow-listed. Raises ``IncompatibleArtifact``."""
    raw = _read(source)
    if not torch_pickle.looks_like_torch_zip(raw):
        raise IncompatibleArtifact(torch_pickle.LEGACY if raw[:1] == b"\x80" else NOT_HYPERNETWORK)
    state = torch_pickle.load(raw)
    if not is_a1111_dict(state):
        raise IncompatibleArtifact(NOT_HYPERNETWORK)
    return _network(*flatten_a1111(state))


def load_safetensors(source: str | Path | bytes) -> Hypernetwork:
    """Read the ``.safetensors`` twin. Raises ``IncompatibleArtifact``."""
    tensors, meta = safetensors_file.read(_read(source), "hypernetwork.safetensors")
    return _network(tensors, meta)


def load_any(source: str | Path | bytes) -> Hypernetwork:
    """Either form, told apart by content (a torch zip, else safetensors)."""
    raw = _read(source)
    if torch_pickle.looks_like_torch_zip(raw) or raw[:1] == b"\x80":
        return load_a1111(raw)
    if raw[8:9] != b"{":  # a safetensors header is JSON after its 8-byte length
        raise IncompatibleArtifact(NOT_HYPERNETWORK)
    return load_safetensors(raw)


def _read(source: str | Path | bytes) -> bytes:
    try:
        return source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as exc:
        raise IncompatibleArtifact(f"Cannot read the hypernetwork file ({exc.strerror or 'unreadable'}).") from None


def _network(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> Hypernetwork:
    fields = twin_fields(meta)
    if fields is None:
        raise IncompatibleArtifact("This is not a KitBooth or A1111 hypernetwork file.")
    structure = read_structure(fields)
    check_tensors({k: tuple(v.shape) for k, v in tensors.items()}, structure, None)
    if not all(np.isfinite(np.asarray(v, np.float64)).all() for v in tensors.values()):
        raise IncompatibleArtifact("This hypernetwork file holds NaN or infinite weights — save it again.")
    net = network_from({k: torch.from_numpy(np.array(v, np.float32)) for k, v in tensors.items()}, structure,
                       name=str(fields.get("name") or "hypernetwork"), step=_int(fields.get("step")))
    net.sd_checkpoint, net.sd_checkpoint_name = _opt_str(fields.get("sd_checkpoint")), _opt_str(
        fields.get("sd_checkpoint_name"))
    return net


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
