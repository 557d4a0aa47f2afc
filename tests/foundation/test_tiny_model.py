from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(tiny_model_dir, local_files_only=True)


def test_tokenizer_gives_sd15_ids(pipe):
    assert pipe.tokenizer("a photo of sks person").input_ids == [49406, 320, 1125, 539, 48136, 2533, 49407]
    assert len(pipe.tokenizer) == 49408
    assert pipe.tokenizer.model_max_length == 77


def test_tiny_model_is_sd15_shaped(pipe, tiny_model_dir):
    assert pipe.vae_scale_factor == 8
    assert pipe.unet.config.in_channels == 4
    assert pipe.text_encoder.config.vocab_size == 49408
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"


def test_generates_deterministic_64px_image(pipe):
    import torch

    def run():
        g = torch.Generator().manual_seed(1234)
        return pipe("a photo of a football fan", num_inference_steps=4, height=64, width=64,
                    generator=g, output_type="np").images[0]

    a, b = run(), run()
    assert a.shape == (64, 64, 3)
    assert np.array_equal(a, b)
    assert a.std() > 0  # not a blank image


def test_build_is_deterministic(tmp_path):
    import torch

    from training.tiny import build_tiny_pipeline

    a, b = build_tiny_pipeline(seed=3), build_tiny_pipeline(seed=3)
    for (name, ta), (_, tb) in zip(a.unet.state_dict().items(), b.unet.state_dict().items(), strict=True):
        assert torch.equal(ta, tb), name


def test_cli_make_tiny_model(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "m"
    res = subprocess.run([sys.executable, "-m", "kitbooth.cli", "make-tiny-model", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (out / "model_index.json").is_file()
    assert (out / "tokenizer" / "tokenizer_config.json").is_file()
