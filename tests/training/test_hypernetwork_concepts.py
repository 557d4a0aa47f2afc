"""Hypernetworks as concepts: the one validator (A1111 .pt read torch-free, the twin, our own file), composition
with a face and a LoRA kit in one image, exact removal, per-row strengths, export and re-import."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from kitbooth.errors import IncompatibleArtifact
from tests.training.concepts import load_pipe, make_artifact, synthetic_images
from tests.training.test_hypernetwork import DIM, _a1111_file, _assert_same, _generate, _net, _snapshot
from training.artifact import load_artifact, save_artifact
from training.base_layers import from_pipeline
from training.compose import Composer, ConceptUse
from training.composition import Composition
from training.concept_file import FACE_REFUSED, read_concept
from training.config import default_config
from training.exports import export
from training.formats import import_file, load_concept
from training.generate import GenerationRequest, generate
from training.hypernetwork import ACTIVATIONS, Hypernetwork, HypernetworkConfig, structure_of
from training.hypernetwork_files import load_a1111, save_a1111, save_safetensors
from training.hypernetwork_layout import ACTIVATION_NAMES, module_shapes, read_structure
from training.torch_pickle import REFUSED
from training.trainers import make_trainer

torch.set_num_threads(1)
SMALL = dict(width=64, height=64, steps=3)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipe(tiny_model_dir)


@pytest.fixture(scope="module")
def base(pipe):
    return from_pipeline(pipe)


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def test_torch_free_shapes_match_the_real_modules():
    assert set(ACTIVATION_NAMES) == set(ACTIVATIONS) - {"glu"}
    for kw in (dict(), dict(activation_func="relu", is_layer_norm=True, use_dropout=True, layer_structure=(1, 2, 2, 1)),
               dict(activation_func="prelu", activate_output=True, layer_structure=(1, 1.5, 1)),
               dict(activation_func="tanh", use_dropout=True, last_layer_dropout=True, layer_structure=(1, 2, 2, 1))):
        net = Hypernetwork(HypernetworkConfig(sizes=(DIM,), **kw))
        structure = read_structure(structure_of(net.config))
        real = {k: tuple(v.shape) for k, v in net.pair(DIM)[0].state_dict().items()}
        assert module_shapes(DIM, structure) == real, kw


def test_a1111_pt_imports_as_a_kit_torch_free_and_composes_with_a_face(pipe, base):
    data, _seqs = _a1111_file(DIM)
    # The bot's path: the validator alone, in a process without torch.
    probe = ("import sys; from training.concept_file import read_concept; from training.base_layers import TINY; "
             "cf = read_concept(sys.stdin.buffer.read(), TINY, filename='net.pt', kind='kit'); "
             "print(cf.kind, cf.tokens, cf.summary()); assert 'torch' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", probe], input=data, capture_output=True, check=True).stdout.decode()
    assert out.startswith("hypernetwork ('a1111net',) hypernetwork 1,2,2,1 relu on widths 32")
    kit = load_concept(data, base=base, kind="kit", filename="net.pt")
    assert kit.method == "imported" and kit.hyper_structure["is_layer_norm"] and kit.tokens == ["a1111net"]
    assert torch.equal(kit.hypernetwork["32.1.linear.2.weight"], load_a1111(data).pair(DIM)[1].linear[2].weight)

    composer = Composer(pipe, slots=4, lora_cache=2)
    face = make_artifact(pipe, method="pivotal", kind="face", seed=1)
    lora_kit = make_artifact(pipe, method="lora", kind="kit", seed=2)

    def picture(*uses: ConceptUse):
        return generate(pipe, composer, [GenerationRequest("on the pitch", list(uses), seed=3, **SMALL)])[0][0]

    face_only = picture(ConceptUse("face", face), ConceptUse("kits/lora", lora_kit))  # the LoRAs are resident now
    before = _snapshot(pipe)
    base_img = picture()
    both = picture(ConceptUse("face", face), ConceptUse("kits/net", kit, 1.0), ConceptUse("kits/lora", lora_kit))
    weak = picture(ConceptUse("face", face), ConceptUse("kits/net", kit, 0.3), ConceptUse("kits/lora", lora_kit))
    assert "a1111net" in both.prompt and "<kb-face-0>" in both.prompt
    assert np.abs(_arr(both.image) - _arr(weak.image)).max() > 5  # the weight is the hypernetwork's strength
    plain = _generate(pipe)
    with composer.compose([[ConceptUse("kits/net", kit, 0.0)]]):
        assert np.array_equal(_generate(pipe), plain)  # strength 0: exactly no hypernetwork
    assert not np.array_equal(_arr(face_only.image), _arr(base_img.image))
    # Removed afterwards: parameters, processors and hooks as before, the output bit-identical.
    _assert_same(before, _snapshot(pipe))
    assert picture().png == base_img.png


def test_a_mixed_batch_applies_each_hypernetwork_to_its_own_rows(pipe):
    net = _net(seed=2)
    comp = Composition([[], []])
    comp.hypernets = [{"n": 0.5}, {}]
    x = torch.randn(4, 3, DIM)  # CFG: [uncond a, uncond b, cond a, cond b]
    out = comp.hyper_hook({"n": net}, 1)(None, (x,))[0]
    assert torch.equal(out[[1, 3]], x[[1, 3]])
    assert torch.allclose(out[[0, 2]], net.transform(x[[0, 2]], 1, 0.5), atol=1e-6)
    composer = Composer(pipe, slots=4, lora_cache=2)
    kit = load_concept(_a1111_file(DIM)[0], base=from_pipeline(pipe), kind="kit", filename="net.pt")
    ra = GenerationRequest("at the stadium", [ConceptUse("kits/net", kit, 0.8)], seed=5, **SMALL)
    rb = GenerationRequest("at the stadium", [], seed=6, **SMALL)
    batch = generate(pipe, composer, [ra, rb])
    alone_a, alone_b = generate(pipe, composer, [ra])[0][0], generate(pipe, composer, [rb])[0][0]
    assert np.abs(_arr(batch[0][0].image) - _arr(alone_a.image)).max() <= 2  # uint8 rounding of batch numerics
    assert np.abs(_arr(batch[1][0].image) - _arr(alone_b.image)).max() <= 2


def test_trained_hypernetwork_is_a_concept_that_exports_and_reimports(pipe, base, tmp_path):
    cfg = default_config("kit", method="hypernetwork", resolution=64, batch_size=2, steps=2, checkpoint_every=0,
                         hyper_activation="relu", lr_hyper=1e-3)
    with make_trainer(pipe, synthetic_images(), cfg, base_model_id="tiny") as trainer:
        trainer.run()
        art = trainer.artifact()
    data = save_artifact(art)
    cf = read_concept(data, base, kind="kit")
    assert (cf.layout, cf.own["method"], cf.tokens) == ("kitbooth", "hypernetwork", ("zwkit",))
    back = load_artifact(data)
    assert back.hyper_structure == art.hyper_structure and back.steps == 2
    assert all(torch.equal(back.hypernetwork[k], art.hypernetwork[k].half().float()) for k in art.hypernetwork)

    files = export(back, "a1111", tmp_path / "a1111", name="Club") + export(back, "kohya", tmp_path / "kohya")
    assert [f.name for f in files] == ["club-kb-kit.pt", "kb-kit-hypernetwork.safetensors"]
    pt = load_a1111(files[0])
    assert (pt.name, pt.step, pt.config.activation_func) == ("club-kb-kit", 2, "relu")
    for f in files:
        again = import_file(f, kind="kit", pipe=pipe)
        assert again.hyper_structure == back.hyper_structure
        assert all(torch.equal(again.hypernetwork[k], back.hypernetwork[k]) for k in back.hypernetwork)
        kept = load_artifact(save_artifact(again))  # `kitbooth import`: an imported hypernetwork as our own file
        assert (kept.method, kept.hyper_structure) == ("imported", back.hyper_structure)


class _Boom:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malformed_and_foreign_hypernetworks_are_refused_with_one_sentence(pipe, base, tmp_path):
    twin = save_safetensors(_net())
    read_concept(twin, base, filename="twin.safetensors", kind="style")
    state = torch.load(io.BytesIO(_a1111_file(DIM)[0]), weights_only=True)
    cases = {
        "activation": ({**state, "activation_func": "wiggle"}, "activation KitBooth does not know"),
        "shapes": ({**state, DIM: (state[DIM][0], {"linear.0.weight": torch.zeros(3, 3)})}, "do not match"),
        "width": (torch.load(io.BytesIO(save_a1111(Hypernetwork(HypernetworkConfig(  # an SD 2 file
            sizes=(1024,), layer_structure=(1, 0.01, 1))))), weights_only=True), "context widths [1024]"),
        "face": ({**state, "name": "alice-kb-face"}, FACE_REFUSED),
        "layers": ({**state, "layer_structure": [2, 1]}, "start and end with 1"),
    }
    for what, (bad, message) in cases.items():
        buf = io.BytesIO()
        torch.save(bad, buf)
        with pytest.raises(IncompatibleArtifact) as err:
            read_concept(buf.getvalue(), base, filename="net.pt", kind="kit")
        assert message in str(err.value), what
        assert str(err.value).count(". ") == 0 and "\n" not in str(err.value), what  # one sentence
    marker = tmp_path / "pickle-ran"
    evil = io.BytesIO()  # a torch zip whose pickle would run code: refused by the allow-list, never run
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(_Boom(str(marker)), protocol=2))
    with pytest.raises(IncompatibleArtifact) as err:
        read_concept(evil.getvalue(), base, filename="evil.pt", kind="kit")
    assert str(err.value) == REFUSED and not marker.exists()
    buf = io.BytesIO()
    torch.save({"emb_params": torch.zeros(1, DIM)}, buf)  # a .pt that is not a hypernetwork stays refused
    with pytest.raises(IncompatibleArtifact, match="pickle file"):
        read_concept(buf.getvalue(), base, filename="emb.pt", kind="kit")
