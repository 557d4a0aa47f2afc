"""A torch-free, allow-list reader of ``torch.save`` zip files (``.pt``), for the one concept-file validator.

The bot never imports torch, yet ``/kit import`` takes A1111 hypernetwork ``.pt`` files. This reads them the way
``torch.load(weights_only=True)`` does — Python's documented "restricting globals" unpickler — but allows even
less: ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``/``_rebuild_parameter`` and the float
storage types, nothing else; every other global (which could run code) is refused with one sentence. Tensors
come back as numpy arrays read from the zip's ``data/<key>`` entries, bounds-checked against their storage.
The legacy (pre-zip, torch < 1.6) format is refused.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from typing import Any

import numpy as np

from kitbooth.errors import IncompatibleArtifact

REFUSED = ("This .pt file holds more than weights (it would run code when loaded), so KitBooth does not open it — "
           "save it again as plain tensors or as .safetensors.")
NOT_TORCH = "This is not a readable PyTorch pickle (.pt) file — download it again or use a .safetensors version."
LEGACY = "This .pt file uses PyTorch's pre-2020 format — save it again with a current PyTorch or as .safetensors."
_STORAGES = {"FloatStorage": "<f4", "HalfStorage": "<f2", "DoubleStorage": "<f8", "BFloat16Storage": "bf16"}
MAX_UNPACKED = 1_000_000_000


class _Storage:
    def __init__(self, dtype: str):
        self.dtype = dtype


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                    *_rest: Any) -> np.ndarray:
    if not (isinstance(storage, np.ndarray) and all(isinstance(x, int) and x >= 0 for x in (offset, *size, *stride))
            and len(size) == len(stride) and len(size) <= 8):
        raise IncompatibleArtifact(NOT_TORCH)
    if any(n == 0 for n in size):
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.size:
        raise IncompatibleArtifact(NOT_TORCH)
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=[s * storage.itemsize for s in stride], writeable=False)
    return np.array(view)


def _rebuild_parameter(data: np.ndarray, *_rest: Any) -> np.ndarray:
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self._archive, self._prefix = archive, prefix

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGES:
            return _Storage(_STORAGES[name])
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage" or not isinstance(pid[1], _Storage)
                or not isinstance(pid[2], str) or not pid[2].isdigit()):
            raise pickle.UnpicklingError("global storage type is not allowed")
        try:
            raw = self._archive.read(f"{self._prefix}data/{pid[2]}")
        except KeyError:
            raise IncompatibleArtifact(NOT_TORCH) from None
        dtype = pid[1].dtype
        if dtype == "bf16":  # numpy has no bfloat16: widen to float32 by hand (exact)
            if len(raw) % 2:
                raise IncompatibleArtifact(NOT_TORCH)
            return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        if len(raw) % np.dtype(dtype).itemsize:
            raise IncompatibleArtifact(NOT_TORCH)
        return np.frombuffer(raw, dtype)


def looks_like_torch_zip(data: bytes) -> bool:
    return data[:4] == b"PK\x03\x04"


def load(data: bytes) -> Any:
    """The object a ``torch.save`` zip holds, tensors as numpy arrays; raises ``IncompatibleArtifact``."""
    if not looks_like_torch_zip(data):
        raise IncompatibleArtifact(LEGACY if data[:1] == b"\x80" else NOT_TORCH)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
        if sum(i.file_size for i in infos) > MAX_UNPACKED:
            raise IncompatibleArtifact(NOT_TORCH)
        pkl = next(i.filename for i in infos if i.filename.endswith("data.pkl") and i.filename.count("/") == 1)
        prefix = pkl[: -len("data.pkl")]
        return _Unpickler(archive.read(pkl), archive, prefix).load()
    except IncompatibleArtifact:
        raise
    except pickle.UnpicklingError as exc:
        raise IncompatibleArtifact(REFUSED if "global" in str(exc) else NOT_TORCH) from None
    except (StopIteration, zipfile.BadZipFile, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, RecursionError, MemoryError, OverflowError, UnicodeDecodeError):
        raise IncompatibleArtifact(NOT_TORCH) from None
