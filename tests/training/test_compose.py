"""Composition on the tiny pipeline: TI slots, resident LoRA (LRU), per-sample adapters, exact restore."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from transformers import CLIPTextModel

from kitbooth.errors import IncompatibleArtifact
from training.compose import Composer, ConceptUse
from training.pipeline_calls import encode_text

HIDDEN = 32


@dataclass
class FakeArtifact:
    """ConceptArtifact-shaped (training/artifact.py field names) for tests that must not depend on T2's code."""

    kind: str
    method: str
    tokens: list[str]
    embeddings: torch.Tensor | None = None
    unet_lora: dict[str, torch.Tensor] = field(default_factory=dict)
    text_lora: dict[str, torch.Tensor] = field(default_factory=dict)
    base_model: str = "tiny"
    hidden_size: int = HIDDEN
    rank: int | None = 4
    alpha: float | None = 4.0
    steps: int = 10
    created: str = "2026-01-01T00:00:00Z"
    version: str = "test"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def trigger(self) -> str:
        return " ".join(self.tokens)


_LORA_CACHE: dict[tuple[int, str], dict[str, torch.Tensor]] = {}


def lora_state(seed: int, model_dir, *, part: str = "unet", scale: float = 0.5) -> dict[str, torch.Tensor]:
    """A peft LoRA state dict (r=4) for the tiny UNet/text encoder with a random (non-zero) lora_B."""
    key = (seed, part)
    if key not in _LORA_CACHE:
        if part == "unet":
            model = UNet2DConditionModel.from_pretrained(model_dir / "unet", local_files_only=True)
            targets = ["to_q", "to_k", "to_v", "to_out.0"]
        else:
            model = CLIPTextModel.from_pretrained(model_dir / "text_encoder", local_files_only=True)
            targets = ["q_proj", "k_proj", "v_proj", "out_proj"]
        torch.manual_seed(seed)
        inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False), model)
        sd = get_peft_model_state_dict(model)
        _LORA_CACHE[key] = {k: (v * scale if "lora_B" in k else v).detach().clone() for k, v in sd.items()}
    return dict(_LORA_CACHE[key])


def face_ti(seed: int, n: int = 2, name: str = "face") -> FakeArtifact:
    g = torch.Generator().manual_seed(seed)
    return FakeArtifact("face", "ti", [f"<kb-{name}-{i}>" for i in range(n)], torch.randn(n, HIDDEN, generator=g))


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    p = StableDiffusionPipeline.from_pretrained(tiny_model_dir, local_files_only=True)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture
def composer(pipe):
    c = Composer(pipe, slots=8, lora_cache=2)
    yield c
    c.evict_all()


def run(pipe, prompts, seed=0, steps=4):
    n = len(prompts)
    pos = encode_text(pipe, prompts)
    neg = encode_text(pipe, [""] * n)
    gens = [torch.Generator().manual_seed(seed) for _ in range(n)]
    lat = torch.cat([torch.randn((1, 4, 8, 8), generator=g) for g in gens])
    with torch.no_grad():
        return pipe(prompt_embeds=pos, negative_prompt_embeds=neg, latents=lat, num_inference_steps=steps,
                    height=64, width=64, output_type="np").images


def test_slot_tokens_are_single_tokens(pipe, composer):
    ids = pipe.tokenizer("a <kb-slot-1> <kb-slot-7>x").input_ids
    assert composer.slot_ids[1] in ids and composer.slot_ids[7] in ids
    emb = pipe.text_encoder.get_input_embeddings().weight
    assert torch.all(emb[composer.slot_ids] == 0)


def test_face_and_kit_composed_in_one_call_and_restored_exactly(pipe, composer, tiny_model_dir):
    base = run(pipe, ["a photo of a person"])
    face = face_ti(1)
    kit = FakeArtifact("kit", "lora", ["<kb-kit-0>"], torch.randn(1, HIDDEN), lora_state(1, tiny_model_dir))
    with composer.compose([[ConceptUse("u1/face", face), ConceptUse("kits/a", kit)]]) as c:
        text = c.rewrite(0, f"a photo of {face.trigger} person wearing {kit.trigger} kit")
        assert "<kb-face" not in text and text.count("<kb-slot-") == 3
        composed = run(pipe, [text])
        ti_only_text = c.rewrite(0, "a photo of a person")
        with_lora = run(pipe, [ti_only_text])
    assert not np.array_equal(composed, base)
    assert not np.array_equal(with_lora, base)  # the kit LoRA alone changes the base prompt's image
    after = run(pipe, ["a photo of a person"])
    assert np.array_equal(after, base)  # bit-identical
    slot_text = f"a photo of {composer.slot_tokens[0]} person"
    emb = pipe.text_encoder.get_input_embeddings().weight
    assert torch.all(emb[composer.slot_ids] == 0)
    assert np.array_equal(run(pipe, [slot_text]), run(pipe, [slot_text]))


def test_restored_even_when_the_block_raises(pipe, composer, tiny_model_dir):
    base = run(pipe, ["a dog"])
    kit = FakeArtifact("kit", "lora", [], None, lora_state(2, tiny_model_dir))
    with pytest.raises(RuntimeError, match="boom"), composer.compose([[ConceptUse("k2", kit), ConceptUse("f", face_ti(3))]]):
        raise RuntimeError("boom")
    assert np.array_equal(run(pipe, ["a dog"]), base)
    assert torch.all(pipe.text_encoder.get_input_embeddings().weight[composer.slot_ids] == 0)


def test_two_users_ti_in_one_batch_get_their_own_vectors(pipe, composer):
    a, b = face_ti(10), face_ti(11)
    prompt = "a photo of {} person"
    with composer.compose([[ConceptUse("ua", a)], [ConceptUse("ub", b)]]) as c:
        ta, tb = c.rewrite(0, prompt.format(a.trigger)), c.rewrite(1, prompt.format(b.trigger))
        assert ta != tb
        batch = run(pipe, [ta, tb])
    with composer.compose([[ConceptUse("ua", a)]]) as c:
        alone_a = run(pipe, [c.rewrite(0, prompt.format(a.trigger))])
    with composer.compose([[ConceptUse("ub", b)]]) as c:
        alone_b = run(pipe, [c.rewrite(0, prompt.format(b.trigger))])
    np.testing.assert_allclose(batch[0], alone_a[0], atol=1e-4)
    np.testing.assert_allclose(batch[1], alone_b[0], atol=1e-4)
    assert np.abs(batch[0] - batch[1]).max() > 1e-2


def test_two_users_loras_in_one_batch_per_sample_adapters(pipe, composer, tiny_model_dir):
    """Mixed batch (hooks) equals each request alone (peft set_adapter path); a base row stays base."""
    la = FakeArtifact("face", "lora", [], None, lora_state(20, tiny_model_dir),
                      text_lora=lora_state(21, tiny_model_dir, part="text"))
    lb = FakeArtifact("kit", "lora", [], None, lora_state(22, tiny_model_dir))
    p = "a photo of a person"
    base = run(pipe, [p])
    with composer.compose([[ConceptUse("la", la)], [ConceptUse("lb", lb, 0.7)], []]) as c:
        assert c.mixed and c.text_lora
        batch = run(pipe, [p, p, p])
    with composer.compose([[ConceptUse("la", la)]]) as c:
        assert not c.mixed
        alone_a = run(pipe, [p])
    with composer.compose([[ConceptUse("lb", lb, 0.7)]]):
        alone_b = run(pipe, [p])
    np.testing.assert_allclose(batch[0], alone_a[0], atol=1e-4)
    np.testing.assert_allclose(batch[1], alone_b[0], atol=1e-4)
    np.testing.assert_allclose(batch[2], base[0], atol=1e-4)
    assert np.abs(alone_a - base).max() > 1e-2 and np.abs(alone_b - alone_a).max() > 1e-2
    assert np.array_equal(run(pipe, [p]), base)


def test_lru_keeps_resident_adapters_bounded(pipe, composer, tiny_model_dir):
    arts = {f"k{i}": FakeArtifact("kit", "lora", [], None, lora_state(30 + i, tiny_model_dir)) for i in range(4)}
    for key in ["k0", "k1", "k0", "k2", "k3"]:
        with composer.compose([[ConceptUse(key, arts[key])]]):
            pass
    assert composer.resident_adapters() == ["k2", "k3"]  # k0, k1 evicted (least recently used)
    names = {n for m in pipe.unet.modules() if isinstance(m, LoraLayer) for n in m.lora_A}
    assert len(names) == 2  # memory bounded: evicted adapters are deleted
    # A batch needing more than the cache exceeds it only for the call, then trims back.
    with composer.compose([[ConceptUse(k, a)] for k, a in arts.items()]) as c:
        assert c.mixed and len(composer.resident_adapters()) == 4
    assert len(composer.resident_adapters()) == 2


def test_compose_refuses_incompatible_artifacts(pipe, composer, tiny_model_dir):
    wide = FakeArtifact("face", "ti", ["<kb-face-0>"], torch.randn(1, 768), hidden_size=768)
    with pytest.raises(IncompatibleArtifact), composer.compose([[ConceptUse("w", wide)]]):
        pass
    sd = lora_state(40, tiny_model_dir)
    k = next(k for k in sd if k.endswith("lora_A.weight"))
    sd[k] = torch.randn(4, 768)
    bad = FakeArtifact("kit", "lora", [], None, sd)
    with pytest.raises(IncompatibleArtifact), composer.compose([[ConceptUse("bad", bad)]]):
        pass
    missing = FakeArtifact("kit", "lora", [], None, {"mid_block.nope.to_q.lora_A.weight": torch.zeros(4, 32),
                                                     "mid_block.nope.to_q.lora_B.weight": torch.zeros(32, 4)})
    with pytest.raises(IncompatibleArtifact), composer.compose([[ConceptUse("missing", missing)]]):
        pass
    assert composer.resident_adapters() == []  # validated before anything was mutated


def test_slot_pool_and_can_batch(composer):
    reqs = [[ConceptUse(f"u{i}", face_ti(i, n=3))] for i in range(3)]  # 9 slots > 8
    assert composer.can_batch(reqs[:2]) and not composer.can_batch(reqs)
    with pytest.raises(ValueError, match="slots"), composer.compose(reqs):
        pass


def test_multi_vector_trigger_written_by_first_token_expands(composer):
    art = FakeArtifact("style", "imported", ["charturner", "charturner_1"], torch.randn(2, HIDDEN))
    with composer.compose([[ConceptUse("s", art)]]) as c:
        a = c.rewrite(0, "in charturner style")
        b = c.rewrite(0, "in charturner charturner_1 style")
        assert a == b == "in <kb-slot-0> <kb-slot-1> style"
        assert c.rewrite(0, "charturnerx") == "charturnerx"


def test_compose_is_cheaper_than_a_denoising_step(pipe, composer, tiny_model_dir):
    uses = [[ConceptUse("cf", face_ti(50)),
             ConceptUse("ck", FakeArtifact("kit", "lora", [], None, lora_state(51, tiny_model_dir)))]]
    with composer.compose(uses):  # first use loads the adapter
        pass
    n = 20
    t = time.perf_counter()
    for _ in range(n):
        with composer.compose(uses):
            pass
    per_compose = (time.perf_counter() - t) / n
    pos = torch.randn(2, 77, HIDDEN)
    lat = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        pipe.unet(lat, 500, encoder_hidden_states=pos)
        t = time.perf_counter()
        for _ in range(n):
            pipe.unet(lat, 500, encoder_hidden_states=pos)
    per_step = (time.perf_counter() - t) / n
    print(f"compose enter+exit {per_compose * 1e3:.2f} ms, one UNet step (batch 2) {per_step * 1e3:.2f} ms")
    assert per_compose < per_step * 1.5  # generous: the machine is shared


def test_adapter_removed_behind_our_back_is_reloaded(pipe, composer, tiny_model_dir):
    kit = FakeArtifact("kit", "lora", [], None, lora_state(60, tiny_model_dir))
    with composer.compose([[ConceptUse("kv", kit)]]):
        first = run(pipe, ["a dog"])
    for m in pipe.unet.modules():  # e.g. someone's unload
        if isinstance(m, LoraLayer):
            for name in list(m.lora_A):
                m.delete_adapter(name)
    with composer.compose([[ConceptUse("kv", kit)]]):
        again = run(pipe, ["a dog"])
    np.testing.assert_array_equal(first, again)
