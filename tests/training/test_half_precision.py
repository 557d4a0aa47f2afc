"""Half precision on CPU: the production (CUDA fp16) code paths, run in bf16 — and fp16 where CPU kernels exist.

In production the worker keeps the pipeline resident in fp16 on CUDA; trainers autocast with fp32 trainable
tensors (and a grad scaler for fp16); the composer writes TI vectors into the half embedding table and applies
LoRA deltas to half activations. CI has no GPU, so these tests load the tiny model through the production loader
in bfloat16 / float16 on CPU and run composition, generation, the three trainers (slices, checkpoint/resume,
exact restore) and the artifact export. CUDA-only branches (TF32, xformers, the autocast dtype rules) are
checked by faking the device where nothing has to run on it.
"""

from __future__ import annotations

import importlib.util
import io
import types

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor2_0
from PIL import Image
from safetensors.torch import load

from tests.training.concepts import synthetic_images
from tests.training.test_compose import FakeArtifact, face_ti, lora_state
from training.artifact import load_artifact, save_artifact
from training.compose import Composer, ConceptUse
from training.config import default_config
from training.generate import GenerationRequest, generate, upscale, vary
from training.loop import Trainer
from training.models import load_base_pipeline
from training.pipeline_calls import encode_text
from training.train_step import amp_dtype

torch.set_num_threads(1)


def _cpu_supports(dtype: torch.dtype) -> bool:
    """Whether this CPU build runs the UNet's kernels (conv, group norm, SDPA, matmul) in ``dtype``."""
    try:
        x = torch.randn(1, 32, 8, 8, dtype=dtype)
        y = torch.nn.GroupNorm(32, 32).to(dtype)(torch.nn.Conv2d(32, 32, 3, padding=1).to(dtype)(x))
        q = y.flatten(2).transpose(1, 2)
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
        return bool(torch.isfinite(torch.nn.Linear(32, 32).to(dtype)(q)).all())
    except (RuntimeError, NotImplementedError):
        return False


HALF = [
    pytest.param(torch.bfloat16, id="bf16"),
    pytest.param(torch.float16, id="fp16",
                 marks=pytest.mark.skipif(not _cpu_supports(torch.float16), reason="no fp16 CPU kernels")),
]
# Images are uint8; half precision moves a few levels between batched and single runs.
PIXEL_TOL = 6


@pytest.fixture(scope="module", params=HALF)
def half(request, tiny_model_dir):
    """(dtype, pipeline loaded by the production loader in that dtype on CPU, composer)."""
    pipe = load_base_pipeline(tiny_model_dir, device="cpu", dtype=request.param, safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    composer = Composer(pipe, slots=8, lora_cache=3)
    yield request.param, pipe, composer
    composer.evict_all()


def _run(pipe, prompts: list[str], seed: int = 0) -> np.ndarray:
    n = len(prompts)
    pos, neg = encode_text(pipe, prompts), encode_text(pipe, [""] * n)
    lat = torch.cat([torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed)) for _ in range(n)])
    with torch.no_grad():
        out = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, latents=lat.to(pos.dtype), num_inference_steps=3,
                   height=64, width=64, output_type="np").images
    assert np.isfinite(out).all()
    return out


def _weights(pipe) -> dict[str, torch.Tensor]:
    """The base weights (resident LoRA adapters the composer keeps are not part of them)."""
    return {f"{i}.{k.replace('.base_layer', '')}": v.clone()
            for i, m in enumerate((pipe.unet, pipe.text_encoder, pipe.vae))
            for k, v in m.state_dict().items() if "lora_" not in k}


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


# --- loading -------------------------------------------------------------------------------------------------
def test_loader_keeps_the_half_dtype_and_sdpa(half):
    dtype, pipe, _ = half
    assert pipe.unet.dtype == pipe.text_encoder.dtype == pipe.vae.dtype == dtype
    assert pipe.device.type == "cpu"
    assert all(isinstance(p, AttnProcessor2_0) for p in pipe.unet.attn_processors.values())


# --- composition ---------------------------------------------------------------------------------------------
def test_compose_ti_lora_and_mixed_batch_in_half_then_exact_restore(half, tiny_model_dir):
    dtype, pipe, composer = half
    emb = pipe.text_encoder.get_input_embeddings().weight
    p = "a photo of a person"
    base = _run(pipe, [p])
    before = _weights(pipe)
    face = face_ti(1)
    kit = FakeArtifact("kit", "lora", [], None, lora_state(1, tiny_model_dir),
                       text_lora=lora_state(2, tiny_model_dir, part="text"))
    style = FakeArtifact("style", "lora", [], None, lora_state(3, tiny_model_dir))
    with composer.compose([[ConceptUse("h/face", face), ConceptUse("h/kit", kit)]]) as c:
        assert emb.dtype == dtype
        assert torch.equal(emb[composer.slot_ids[:2]], face.embeddings.to(dtype))  # fp32 vectors, half table
        composed = _run(pipe, [c.rewrite(0, f"a photo of {face.trigger} person")])
    assert np.abs(composed - base).max() > 1e-2
    # Mixed batch: per-row LoRA hooks add (half) deltas into half activations; each row equals its request alone.
    with composer.compose([[ConceptUse("h/kit", kit)], [ConceptUse("h/style", style, 0.7)], []]) as c:
        assert c.mixed
        batch = _run(pipe, [p, p, p])
    with composer.compose([[ConceptUse("h/kit", kit)]]) as c:
        assert not c.mixed
        alone_kit = _run(pipe, [p])
    with composer.compose([[ConceptUse("h/style", style, 0.7)]]):
        alone_style = _run(pipe, [p])
    for got, want in ((batch[0], alone_kit[0]), (batch[1], alone_style[0]), (batch[2], base[0])):
        np.testing.assert_allclose(got, want, atol=0.02)  # bf16 batching noise: ~0.008
    assert np.abs(alone_kit - base).max() > 0.05 and np.abs(alone_style - alone_kit).max() > 0.05
    # Restored exactly: weights, slot rows, output.
    assert np.array_equal(_run(pipe, [p]), base)
    assert torch.all(emb[composer.slot_ids] == 0)
    after = _weights(pipe)
    assert all(torch.equal(after[k], v) for k, v in before.items())


# --- generation ----------------------------------------------------------------------------------------------
def test_generate_batched_with_previews_vary_and_upscale_in_half(half, tiny_model_dir):
    dtype, pipe, composer = half
    small = dict(width=64, height=64, steps=3)
    kit = FakeArtifact("kit", "lora", [], None, lora_state(4, tiny_model_dir))
    reqs = [
        GenerationRequest("smiling", [ConceptUse("g/face", face_ti(5)), ConceptUse("g/kit", kit)], seed=1, count=2,
                          **small),
        GenerationRequest("a dog", [], seed=9, upscale=True, **small),
    ]
    previews: list[Image.Image] = []
    per_request: list[tuple[int, Image.Image | None]] = []
    out = generate(pipe, composer, reqs, preview_every_s=0.0,
                   progress=lambda s, t, im: previews.append(im),
                   request_progress=lambda i, s, t, im: per_request.append((i, im)))
    assert len(previews) == 3 and all(im is not None for im in previews)
    assert previews[0].size == (256, 256)  # 2 columns x 2 rows of 128-pixel cells
    assert {i for i, im in per_request if im is not None} == {0, 1}
    imgs = [g for o in out for g in o]
    assert len(imgs) == 3 and all(_arr(g.image).std() > 0 for g in imgs)
    assert not out[1][0].upscaled and out[1][0].image.size == (64, 64)  # no upscaler: base size
    assert Image.open(io.BytesIO(imgs[0].png)).text["ai_generated"] == "true"
    # One request alone equals its rows of the batch (CPU noise per seed, half precision tolerance).
    alone = generate(pipe, composer, [reqs[1]])[0][0]
    assert np.abs(_arr(alone.image) - _arr(out[1][0].image)).max() <= PIXEL_TOL
    # vary: img2img with CPU generators in a half pipeline.
    v = generate(pipe, composer, [vary(reqs[0], imgs[0].image, strength=0.6, count=1)])[0][0]
    assert v.image.size == (64, 64) and _arr(v.image).std() > 0
    assert pipe.unet.dtype == dtype  # from_pipe (the img2img view) did not recast the resident modules
    # upscale: Lanczos without an upscaler; with one, it gets latents in the pipeline's dtype and device.
    assert upscale(pipe, imgs[0].image).image.size == (128, 128)
    seen = {}

    class FakeUpscaler:
        def set_progress_bar_config(self, **kw):
            pass

        def __call__(self, *, prompt, image, generator, **kw):
            seen.update(dtype=image.dtype, device=image.device, finite=bool(torch.isfinite(image).all()),
                        gen=generator.device.type, prompt=prompt)
            return types.SimpleNamespace(images=[Image.new("RGB", (128, 128), (9, 9, 9))])

    up = generate(pipe, composer, [reqs[1]], upscaler=FakeUpscaler())[0][0]
    assert up.upscaled and seen["dtype"] == dtype and seen["device"] == pipe.device and seen["finite"]
    assert seen["gen"] == "cpu"
    seen.clear()
    up2 = upscale(pipe, imgs[0].image, upscaler=FakeUpscaler(), prompt="a <kb-face-0> person")
    assert up2.upscaled and seen["dtype"] == dtype and seen["finite"] and seen["prompt"] == ["a person"]


# --- training ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, extra", [
    ("ti", {"mixed_precision": "bf16"}),
    ("lora", {"text_lora": True, "gradient_checkpointing": True}),
    ("pivotal", {"ti_fraction": 0.5}),
])
def test_trainers_on_a_half_pipeline_resume_restore_and_export(half, method, extra):
    dtype, pipe, composer = half
    if dtype == torch.float16 and method == "ti":
        pytest.skip("fp16 on CPU is slow: pivotal covers the TI phase (and the grad scaler)")
    p = "a photo of a person"
    base, before = _run(pipe, [p]), _weights(pipe)
    cfg = default_config("face", method=method, resolution=64, batch_size=2, steps=6, checkpoint_every=0, **extra)
    with Trainer(pipe, synthetic_images(), cfg) as t:
        assert t._amp_dtype == dtype  # half resident weights autocast in their own dtype, whatever the config
        assert (t.scaler is not None) == (dtype == torch.float16)
        t.run(max_steps=3)
        assert np.array_equal(_run(pipe, [p]), base)  # between slices the pipeline is the base model
        blob = t.state_dict()
        t.run()
        assert t.done and np.isfinite(t.last_loss)
        full = {k: v.detach().clone() for k, v in t._named_params().items()}
        art = t.artifact()
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in full.values())
    if cfg.uses_unet_lora:  # B starts at zero: it learned (gradient checkpointing and autocast kept the graph)
        assert any(v.abs().max() > 0 for k, v in full.items() if "lora_B" in k)
    if cfg.uses_ti:  # the vectors moved away from their class-word start
        init = pipe.text_encoder.get_input_embeddings().weight[t.ti.stand_in_id].float()
        assert (full["ti.vectors"] - init).abs().max() > 1e-3
    # Resume in a new trainer from the mid-run checkpoint: same tensors as uninterrupted.
    with Trainer(pipe, [], cfg) as t2:
        t2.load_state_dict(blob)
        t2.run()
        for k, v in t2._named_params().items():
            torch.testing.assert_close(v.detach(), full[k], rtol=0, atol=1e-6)
    # The pipeline is bit-identical after close().
    after = _weights(pipe)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert np.array_equal(_run(pipe, [p]), base)
    assert pipe.unet.dtype == dtype and not pipe.unet.is_gradient_checkpointing
    # Export: fp16 tensors, finite, round-trips; and the concept composes into the half pipeline.
    data = save_artifact(art)
    raw = load(data)
    assert raw and all(v.dtype == torch.float16 and torch.isfinite(v).all() for v in raw.values())
    if cfg.uses_ti:
        assert raw["embeddings"].shape == (cfg.num_vectors, pipe.text_encoder.config.hidden_size)
    back = load_artifact(data)
    out = generate(pipe, composer, [GenerationRequest("smiling", [ConceptUse(f"t/{method}", back)], width=64,
                                                      height=64, steps=2)])[0][0]
    assert _arr(out.image).std() > 0
    assert np.array_equal(_run(pipe, [p]), base)


# --- CUDA-only branches, checked without a GPU ---------------------------------------------------------------
def test_autocast_dtype_rules():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    cfg = default_config("face")
    assert amp_dtype(cfg, cpu, torch.float32) is None
    for mp in ("auto", "no", "bf16", "fp16"):
        c = cfg.replace(mixed_precision=mp)
        for dev in (cpu, cuda):  # half weights: always their own dtype (fp16 gets the grad scaler)
            assert amp_dtype(c, dev, torch.float16) == torch.float16
            assert amp_dtype(c, dev, torch.bfloat16) == torch.bfloat16
        assert amp_dtype(c, cpu, torch.float32) is None
    assert amp_dtype(cfg.replace(mixed_precision="no"), cuda, torch.float32) is None
    assert amp_dtype(cfg.replace(mixed_precision="fp16"), cuda, torch.float32) == torch.float16
    assert amp_dtype(cfg.replace(mixed_precision="bf16"), cuda, torch.float32) == torch.bfloat16


def test_cuda_branch_of_attach_restores_tf32_and_attention(tiny_model_dir, monkeypatch):
    """The CUDA-only part of ``Trainer._attached`` (TF32 on, xformers tried): both undone on exit."""
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, local_files_only=True, dtype=torch.bfloat16)
    cfg = default_config("face", method="lora", resolution=64, steps=2, checkpoint_every=0,
                         gradient_checkpointing=True)
    t = Trainer(pipe, synthetic_images(), cfg)
    procs = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "xformers" else real_find_spec(name, *a))
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        t.device = torch.device("cuda")  # only the branch choice; nothing runs on the device here
        with t._attached():
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
            assert pipe.unet.is_gradient_checkpointing
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == procs
        assert not pipe.unet.is_gradient_checkpointing
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        t.close()
