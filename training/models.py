"""Loading the base SD 1.5 pipeline (and the optional ×2 latent upscaler).

``ref`` may be a hub id (default ``stable-diffusion-v1-5/stable-diffusion-v1-5``), a local diffusers folder or
a single-file ``.safetensors`` checkpoint. Local paths are always loaded with ``local_files_only=True``, and a
single file gets a local config folder (SD 1.5's architecture, written by :func:`write_sd15_config`) so diffusers
never fetches one from the hub. fp16 on CUDA, PyTorch SDPA attention (xformers only when installed *and* on
CUDA), channels_last UNet on CUDA, DPM-Solver++ as the scheduler.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from kitbooth.errors import UserFacingError
from kitbooth.settings import DEFAULT_BASE_MODEL

log = logging.getLogger(__name__)


class BaseModelUnavailable(UserFacingError):
    """The base model (or upscaler / safety checker) cannot be loaded from where it was asked for."""


def resolve_device(device: str = "auto") -> Any:
    """``auto`` -> CUDA when available, else CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BaseModelUnavailable("KITBOOTH_DEVICE is cuda but no CUDA GPU is available.")
    return dev


_DTYPES = {"float16": "float16", "fp16": "float16", "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float32": "float32", "fp32": "float32", "float": "float32"}


def resolve_dtype(dtype: Any = "auto", device: Any = "cpu") -> Any:
    """``auto`` -> float16 on CUDA, float32 elsewhere (CPU half precision is slow and lossy)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    try:
        return getattr(torch, _DTYPES[str(dtype).lower()])
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: use auto, float16, bfloat16 or float32") from None


def _is_local(ref: str | Path) -> bool:
    s = str(ref)
    return Path(s).exists() or s.startswith((".", "/", "~")) or s.endswith((".safetensors", ".ckpt")) \
        or s.count("/") > 1 or "\\" in s


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # noqa: BLE001 - an old huggingface_hub: assume online
        return False


def load_base_pipeline(
    ref: str | Path = DEFAULT_BASE_MODEL,
    *,
    device: Any = "auto",
    dtype: Any = "auto",
    offline: bool = False,
    safety_checker: bool | str = True,
    config: str | Path | None = None,
) -> Any:
    """Load the base ``StableDiffusionPipeline``, ready for :mod:`training.generate`.

    ``safety_checker``: True = the model's own when it ships one, False = none, or a hub id / folder of a
    ``StableDiffusionSafetyChecker`` (with its ``CLIPImageProcessor``). ``config``: a diffusers config folder for
    a single-file checkpoint (default: SD 1.5's, written locally). Raises :class:`BaseModelUnavailable` with
    what to do when the model cannot be found (e.g. a hub id while offline).
    """
    import torch
    from diffusers import StableDiffusionPipeline

    dev = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    dt = resolve_dtype(dtype, dev)
    local = _is_local(ref)
    local_only = local or offline or _hub_offline()
    path = Path(str(ref)).expanduser()
    kwargs: dict[str, Any] = {"dtype": dt, "local_files_only": local_only}
    if safety_checker is False or isinstance(safety_checker, str):
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    t0 = time.perf_counter()
    try:
        if local and not path.exists():
            raise BaseModelUnavailable(f"Base model not found at {path}. Set KITBOOTH_BASE_MODEL to a diffusers "
                                       "folder, a .safetensors checkpoint or a hub id.")
        if local and path.is_file():
            if path.suffix != ".safetensors":
                raise BaseModelUnavailable("Only .safetensors checkpoints are loaded (a .ckpt is a pickle that "
                                           "can run code). Convert it first.")
            cfg = Path(config) if config else write_sd15_config(_config_cache_dir())
            pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(cfg), **kwargs)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(str(path) if local else str(ref), **kwargs)
    except BaseModelUnavailable:
        raise
    except (OSError, ValueError) as exc:  # diffusers/hub raise OSError subclasses (LocalEntryNotFoundError, ...)
        if local:
            raise BaseModelUnavailable(f"Could not load the base model from {path}: {exc}") from exc
        raise BaseModelUnavailable(
            f"Base model {ref!r} is not available {'offline' if local_only else 'from the hub'}. Download it once "
            "(e.g. `huggingface-cli download` on a machine with network) or set KITBOOTH_BASE_MODEL to a local folder."
        ) from exc
    if isinstance(safety_checker, str):
        pipe.safety_checker, pipe.feature_extractor = load_safety_checker(safety_checker, dtype=dt,
                                                                          offline=local_only)
    elif safety_checker and getattr(pipe, "safety_checker", None) is None:
        log.warning("base model %s has no safety checker: set KITBOOTH_SAFETY_CHECKER_MODEL to enable one", ref)
    pipe = pipe.to(dev)
    _optimise(pipe, dev)
    from training.pipeline_calls import use_dpm_solver

    use_dpm_solver(pipe)
    log.info("base model %s loaded on %s/%s in %.2f s", ref, dev, dt, time.perf_counter() - t0)
    return pipe


def _optimise(pipe: Any, dev: Any) -> None:
    import importlib.util

    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe.unet.set_attn_processor(AttnProcessor2_0())  # PyTorch SDPA
    if dev.type != "cuda":
        return
    pipe.unet.to(memory_format=torch.channels_last)
    if importlib.util.find_spec("xformers") is not None:
        try:
            pipe.enable_xformers_memory_efficient_attention()
        except Exception as exc:  # noqa: BLE001 - a wheel built for another torch: keep SDPA
            log.warning("xformers installed but unusable (%s): using PyTorch SDPA", exc)


def load_safety_checker(ref: str, *, dtype: Any = None, offline: bool = False) -> tuple[Any, Any]:
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    local_only = offline or _is_local(ref) or _hub_offline()
    try:
        sub = "safety_checker" if (Path(ref) / "safety_checker").is_dir() else None
        model = StableDiffusionSafetyChecker.from_pretrained(ref, subfolder=sub, dtype=dtype,
                                                             local_files_only=local_only)
        fe_sub = "feature_extractor" if (Path(ref) / "feature_extractor").is_dir() else None
        fe = CLIPImageProcessor.from_pretrained(ref, subfolder=fe_sub, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        raise BaseModelUnavailable(f"Safety checker {ref!r} could not be loaded: {exc}") from exc
    return model, fe


def load_upscaler(ref: str | Path | None, *, device: Any = "auto", dtype: Any = "auto",
                  offline: bool = False) -> Any:
    """The ×2 latent upscaler (e.g. ``stabilityai/sd-x2-latent-upscaler``), or None when not configured."""
    if not ref:
        return None
    from diffusers import StableDiffusionLatentUpscalePipeline

    dev = resolve_device(str(device))
    local_only = offline or _is_local(ref) or _hub_offline()
    try:
        up = StableDiffusionLatentUpscalePipeline.from_pretrained(
            str(ref), dtype=resolve_dtype(dtype, dev), local_files_only=local_only)
    except (OSError, ValueError) as exc:
        raise BaseModelUnavailable(f"Upscaler {ref!r} is not available: set KITBOOTH_UPSCALER_MODEL to a local "
                                   "folder or leave it unset.") from exc
    up.set_progress_bar_config(disable=True)
    return up.to(dev)


# --- SD 1.5's diffusers config, for single-file checkpoints without network -------------------------------------
def _config_cache_dir() -> Path:
    import tempfile

    return Path(tempfile.gettempdir()) / "kitbooth-sd15-config"


SD15_UNET = {
    "_class_name": "UNet2DConditionModel", "sample_size": 64, "in_channels": 4, "out_channels": 4,
    "center_input_sample": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "downsample_padding": 1,
    "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "cross_attention_dim": 768, "attention_head_dim": 8,
}
SD15_VAE = {
    "_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "act_fn": "silu",
    "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215,
}
SD15_TEXT = {
    "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "hidden_size": 768,
    "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
    "vocab_size": 49408, "hidden_act": "quick_gelu", "projection_dim": 768, "layer_norm_eps": 1e-5,
    "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "torch_dtype": "float32",
}
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "skip_prk_steps": True, "steps_offset": 1, "set_alpha_to_one": False,
    "prediction_type": "epsilon", "clip_sample": False,
}


def write_sd15_config(out_dir: str | Path) -> Path:
    """A diffusers config folder (no weights) with SD 1.5's architecture and exact tokenizer (offline)."""
    from training.tiny import write_clip_tokenizer

    out = Path(out_dir)
    if (out / "model_index.json").is_file():
        return out
    tmp = out.with_name(out.name + f".partial-{time.time_ns()}")
    for sub, cfg in (("unet", SD15_UNET), ("vae", SD15_VAE), ("text_encoder", SD15_TEXT),
                     ("scheduler", SD15_SCHEDULER)):
        (tmp / sub).mkdir(parents=True)
        name = "scheduler_config.json" if sub == "scheduler" else "config.json"
        (tmp / sub / name).write_text(json.dumps(cfg, indent=2))
    write_clip_tokenizer(tmp / "tokenizer")
    (tmp / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "feature_extractor": [None, None],
        "safety_checker": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }, indent=2))
    try:
        tmp.rename(out)
    except OSError:  # another process won the race
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out
