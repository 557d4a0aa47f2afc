"""Base model loading: local folders never touch the network; a hub id offline fails fast and clearly."""

from __future__ import annotations

import time

import pytest
import torch


def test_loads_tiny_folder_local_only(tiny_model_dir, monkeypatch):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    from training.models import load_base_pipeline

    seen = {}
    real = StableDiffusionPipeline.from_pretrained.__func__

    def spy(cls, ref, **kw):
        seen.update(kw)
        return real(cls, ref, **kw)

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", classmethod(spy))
    pipe = load_base_pipeline(tiny_model_dir, device="cpu", safety_checker=True)
    assert seen["local_files_only"] is True and seen["dtype"] == torch.float32
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert pipe.safety_checker is None  # the tiny model ships none
    assert pipe.text_encoder.config.hidden_size == 32


def test_unreachable_hub_id_offline_fails_fast(monkeypatch, tmp_path):
    from training.models import BaseModelUnavailable, load_base_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    t = time.perf_counter()
    with pytest.raises(BaseModelUnavailable, match="KITBOOTH_BASE_MODEL"):
        load_base_pipeline("someone/not-a-model", device="cpu", offline=True)
    assert time.perf_counter() - t < 10


def test_missing_local_path_and_pickles_refused(tmp_path):
    from training.models import BaseModelUnavailable, load_base_pipeline

    with pytest.raises(BaseModelUnavailable, match="not found"):
        load_base_pipeline(tmp_path / "nope", device="cpu")
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(BaseModelUnavailable, match="pickle"):
        load_base_pipeline(ckpt, device="cpu")


def test_single_file_uses_a_local_config(tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    from training.models import BaseModelUnavailable, load_base_pipeline

    seen = {}

    def fake(cls, path, **kw):
        seen.update(kw, path=path)
        raise OSError("stop here")

    monkeypatch.setattr(StableDiffusionPipeline, "from_single_file", classmethod(fake))
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"x")
    with pytest.raises(BaseModelUnavailable):
        load_base_pipeline(ckpt, device="cpu")
    assert seen["local_files_only"] is True
    from pathlib import Path

    assert (Path(seen["config"]) / "unet" / "config.json").is_file()


def test_sd15_config_has_sd15_sizes(tmp_path):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig

    from training.models import write_sd15_config

    cfg = write_sd15_config(tmp_path / "cfg")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "unet"))
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    assert CLIPTextConfig.from_pretrained(cfg / "text_encoder").hidden_size == 768


def test_resolve_helpers():
    from training.models import resolve_device, resolve_dtype

    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.float16
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError):
        resolve_dtype("int8")
