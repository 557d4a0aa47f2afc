"""The instant face: IP-Adapter FaceID on SD 1.5, a recognisable face before any training has run.

A face-embedding model (insightface's ``buffalo_l`` in production, through onnxruntime) turns the user's accepted
selfie crops into one 512-d identity vector, once per user, when the face's training starts. Until the trained
face is ready, a generation conditions on that vector through diffusers' own ``load_ip_adapter`` (FaceID:
``image_proj`` with ``proj.0/proj.2/norm`` and ``to_k_ip/to_v_ip`` per cross-attention processor).

``applied(pipe, ...)`` loads the adapter for one pipeline call and restores the resident pipeline exactly after it
(the very attention-processor objects, ``encoder_hid_proj``, the config, the feature extractor): one user's
identity never reaches the next job. The embedding reaches the UNet through a forward pre-hook
(``added_cond_kwargs["image_embeds"]``), so ``training.generate`` needs no instant-face code.

Seam: ``EmbedFace = Callable[[PIL.Image], np.ndarray | None]`` (512 floats, None when no face is found).
``insightface_embedder(name)`` is the production one; tests pass a deterministic stand-in.
Licences: insightface's models and the FaceID adapters are for non-commercial use only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import hf_hub_download
from safetensors import safe_open
from safetensors.torch import save_file

from training.png_metadata import png_bytes, with_extra

log = logging.getLogger(__name__)

EMBED_DIM = 512  # insightface's ArcFace embedding, what FaceID's projection takes
NUM_TOKENS = 4  # image tokens of FaceID's projection (diffusers assumes 4 for "norm.weight" adapters)
PNG_LABEL = {"Instant face": "preview"}  # what the PNG's parameters record

EmbedFace = Callable[[Any], "np.ndarray | None"]


# --- the embedding -------------------------------------------------------------------------------------------
def encode_embedding(vec: np.ndarray) -> bytes:
    """The stored form: 512 little-endian float32 (2048 bytes)."""
    v = np.asarray(vec, dtype="<f4").reshape(-1)
    if v.shape != (EMBED_DIM,) or not np.isfinite(v).all():
        raise ValueError(f"a face embedding is {EMBED_DIM} finite floats")
    return v.tobytes()


def decode_embedding(data: bytes) -> np.ndarray:
    if len(data) != EMBED_DIM * 4:
        raise ValueError("not a stored face embedding")
    v = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.isfinite(v).all():
        raise ValueError("not a stored face embedding")
    return v


def mean_embedding(images: Iterable[Any], embed_face: EmbedFace) -> np.ndarray:
    """The unit-length mean of the crops' embeddings (crops without a detectable face are skipped)."""
    vecs = []
    for im in images:
        v = embed_face(im)
        if v is not None:
            v = np.asarray(v, dtype=np.float32).reshape(-1)
            if v.shape == (EMBED_DIM,) and np.isfinite(v).all() and np.linalg.norm(v) > 0:
                vecs.append(v / np.linalg.norm(v))
    if not vecs:
        raise ValueError("no face found in the training crops")
    m = np.mean(vecs, axis=0)
    return (m / np.linalg.norm(m)).astype(np.float32)


def insightface_embedder(name: str = "buffalo_l", *, gpu: bool = True) -> EmbedFace:
    """insightface's ArcFace through onnxruntime (``pip install insightface onnxruntime-gpu``); the model pack
    is downloaded to ~/.insightface on first use. Imported here, not at the top: it is an optional extra."""
    try:
        app_mod = importlib.import_module("insightface.app")
    except ImportError as exc:
        raise RuntimeError("The instant face needs insightface and onnxruntime on the worker: "
                           "pip install insightface onnxruntime-gpu") from exc
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
    app = app_mod.FaceAnalysis(name=name, providers=providers)
    app.prepare(ctx_id=0 if gpu else -1, det_size=(640, 640))

    def embed(image: Any) -> np.ndarray | None:
        rgb = np.asarray(image.convert("RGB"))
        pad = rgb.shape[0] // 4  # the crops are tight: give the detector some context around the face
        bgr = np.pad(rgb[:, :, ::-1], ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        faces = app.get(bgr)
        if not faces:
            return None
        main = max(faces, key=lambda f: float((f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])))
        return np.asarray(main.normed_embedding, dtype=np.float32)

    return embed


# --- the adapter ---------------------------------------------------------------------------------------------
def adapter_location(ref: str) -> tuple[str, str, str]:
    """``<hub repo or folder>/<file>`` → (repo or folder, subfolder, weight name) for ``load_ip_adapter``."""
    path = Path(ref)
    if path.is_file():
        return str(path.parent), "", path.name
    parts = [p for p in ref.split("/") if p]
    if len(parts) < 3:
        raise ValueError("Set the instant-face adapter as <owner>/<repo>/<file> or a local file path.")
    return "/".join(parts[:2]), "/".join(parts[2:-1]), parts[-1]


def cross_attention_sizes(unet: Any) -> list[int]:
    """Hidden size of each cross-attention processor, in ``attn_processors`` order (diffusers' key order)."""
    cfg = unet.config
    sizes = []
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            sizes.append(cfg.block_out_channels[-1])
        elif name.startswith("up_blocks"):
            sizes.append(list(reversed(cfg.block_out_channels))[int(name[len("up_blocks.")])])
        else:
            sizes.append(cfg.block_out_channels[int(name[len("down_blocks.")])])
    return sizes


def random_faceid_state_dict(unet: Any, *, seed: int = 0, mult: int = 1) -> dict[str, dict[str, torch.Tensor]]:
    """A random IP-Adapter FaceID (no LoRA) sized for ``unet``: what ``ip-adapter-faceid_sd15.bin`` holds, tiny."""
    g = torch.Generator().manual_seed(seed)
    cross = int(unet.config.cross_attention_dim)
    inner = EMBED_DIM * mult

    def rnd(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.05).contiguous()

    image_proj = {"proj.0.weight": rnd(inner, EMBED_DIM), "proj.0.bias": rnd(inner),
                  "proj.2.weight": rnd(cross * NUM_TOKENS, inner), "proj.2.bias": rnd(cross * NUM_TOKENS),
                  "norm.weight": torch.ones(cross), "norm.bias": torch.zeros(cross)}
    ip_adapter = {}
    for i, hidden in enumerate(cross_attention_sizes(unet)):
        key_id = 1 + 2 * i  # diffusers numbers the cross-attention processors 1, 3, 5, ...
        ip_adapter[f"{key_id}.to_k_ip.weight"] = rnd(hidden, cross)
        ip_adapter[f"{key_id}.to_v_ip.weight"] = rnd(hidden, cross)
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def write_adapter(state: dict[str, dict[str, torch.Tensor]], path: str | Path) -> Path:
    """Save in the hub's safetensors layout (``image_proj.*`` / ``ip_adapter.*``)."""
    flat = {f"{part}.{k}": v for part, sd in state.items() for k, v in sd.items()}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(flat, str(out))
    return out


# --- one call with the instant face --------------------------------------------------------------------------
@contextlib.contextmanager
def applied(pipe: Any, adapter: str, embedding: np.ndarray, *, scale: float = 1.0,
            local_files_only: bool = False) -> Iterator[None]:
    """The pipeline with the FaceID adapter and ``embedding`` for the calls inside; exactly the base after."""
    unet = pipe.unet
    before = {"procs": dict(unet.attn_processors), "hid": unet.encoder_hid_proj,
              "hid_type": unet.config.encoder_hid_dim_type,
              "feature_extractor": getattr(pipe, "feature_extractor", None),
              "image_encoder": getattr(pipe, "image_encoder", None),
              "peft": set(getattr(unet, "peft_config", {}) or {})}
    folder, sub, name = adapter_location(adapter)
    handle = None
    try:
        stripped = _without_lora(folder, sub, name, local_files_only)
        if stripped is None:
            pipe.load_ip_adapter(folder, subfolder=sub, weight_name=name, image_encoder_folder=None,
                                 local_files_only=local_files_only)
        else:
            pipe.load_ip_adapter(stripped, subfolder=sub, weight_name=name, image_encoder_folder=None)
        pipe.set_ip_adapter_scale(scale)
        handle = unet.register_forward_pre_hook(_embeds_hook(pipe, embedding), with_kwargs=True)
        yield
    finally:
        if handle is not None:
            handle.remove()
        _restore(pipe, before)


def _adapter_file(folder: str, sub: str, name: str, local_files_only: bool) -> Path:
    local = Path(folder, sub, name)
    if local.is_file():
        return local
    return Path(hf_hub_download(folder, name, subfolder=sub or None, local_files_only=local_files_only))


def _without_lora(folder: str, sub: str, name: str, local_files_only: bool) -> dict[str, dict] | None:
    """None when the file has no LoRA weights (diffusers loads it from the path); else its state dict without
    them. ``ip-adapter-faceid_sd15.bin`` bundles a LoRA that diffusers would load as a peft adapter and activate
    with ``set_adapters``, which would switch the resident concepts' LoRAs (``training.lora_residency``) on and
    off behind the composer's back: the instant face runs with the projection and ``to_k_ip/to_v_ip`` only."""
    path = _adapter_file(folder, sub, name, local_files_only)
    if name.endswith(".safetensors"):
        with safe_open(str(path), framework="pt") as f:
            if not any("_lora." in k for k in f.keys()):  # noqa: SIM118 - safe_open has no __iter__
                return None
            state: dict[str, dict] = {"image_proj": {}, "ip_adapter": {}}
            for k in f.keys():  # noqa: SIM118
                part, _, rest = k.partition(".")
                if part in state:
                    state[part][rest] = f.get_tensor(k)
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        if not any("_lora." in k for k in state.get("ip_adapter", {})):
            return None
    dropped = [k for k in state["ip_adapter"] if "_lora." in k]
    log.info("instant face: %d LoRA tensors of the FaceID file left out", len(dropped))
    state["ip_adapter"] = {k: v for k, v in state["ip_adapter"].items() if "_lora." not in k}
    return state


def _embeds_hook(pipe: Any, embedding: np.ndarray) -> Callable[..., Any]:
    vec = torch.from_numpy(np.asarray(embedding, dtype=np.float32).reshape(1, 1, EMBED_DIM))

    def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        sample = args[0] if args else kwargs["sample"]
        n = sample.shape[0]
        pos = vec.to(sample.device, module.dtype).expand(n, 1, EMBED_DIM)
        if getattr(pipe, "do_classifier_free_guidance", False) and n % 2 == 0:
            # diffusers' FaceID convention: the unconditional half sees a zero embedding.
            pos = torch.cat([torch.zeros_like(pos[: n // 2]), pos[n // 2 :]])
        added = dict(kwargs.get("added_cond_kwargs") or {})
        added["image_embeds"] = [pos]
        return args, {**kwargs, "added_cond_kwargs": added}

    return hook


def _restore(pipe: Any, before: dict[str, Any]) -> None:
    unet = pipe.unet
    if unet.config.encoder_hid_dim_type == "ip_image_proj":
        pipe.unload_ip_adapter()
    added = set(getattr(unet, "peft_config", {}) or {}) - before["peft"]
    if added:  # a FaceID file with LoRA weights loaded them as faceid_<i> adapters
        pipe.delete_adapters(sorted(added))
    unet.set_attn_processor(before["procs"])  # the very objects of the base pipeline
    unet.encoder_hid_proj = before["hid"]
    unet.register_to_config(encoder_hid_dim_type=before["hid_type"])
    for name in ("feature_extractor", "image_encoder"):
        if hasattr(pipe, name) and getattr(pipe, name) is not before[name]:
            pipe.register_modules(**{name: before[name]})


def labelled(images: list[Any]) -> list[Any]:
    """The images (``GeneratedImage``) with the lever in their PNG parameters: "Instant face: preview"."""
    out = []
    for g in images:
        params = with_extra(g.parameters, PNG_LABEL)
        out.append(dataclasses.replace(g, parameters=params, png=png_bytes(g.image, params)))
    return out
