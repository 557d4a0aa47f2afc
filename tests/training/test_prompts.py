"""Prompt template, explicit truncation, reserved tokens, torch-free import."""

from __future__ import annotations

import subprocess
import sys

import pytest
from transformers import CLIPTokenizer

from training.prompts import DEFAULT_NEGATIVE, MAX_TOKENS, build_prompt, count_tokens, find_reserved


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer", local_files_only=True)


def test_template_face_kit_style():
    p = build_prompt("on the pitch at night", face_trigger="<kb-face-0> <kb-face-1>",
                     kit_words="Arsenal home kit", style_words=None)
    assert p.text == "a photo of <kb-face-0> <kb-face-1> person wearing Arsenal home kit, on the pitch at night"
    assert p.negative == DEFAULT_NEGATIVE and not p.truncated and p.notice is None
    s = build_prompt("", face_trigger="<kb-face-0>", kit_words=None, style_words="oil painting")
    assert s.text == "<kb-face-0> person, oil painting"


@pytest.mark.parametrize("with_tok", [True, False])
def test_long_prompt_truncated_with_notice_face_and_kit_survive(with_tok, request):
    tok = request.getfixturevalue("tokenizer") if with_tok else None
    user = " ".join(f"word{i} celebrating" for i in range(60))
    p = build_prompt(user, face_trigger="<kb-face-0> <kb-face-1>", kit_words="Liverpool away kit",
                     style_words="cinematic lighting", tokenizer=tok)
    assert p.truncated and p.notice and "dropped" in p.notice and "word59" in p.notice
    assert p.text.startswith("<kb-face-0> <kb-face-1> person wearing Liverpool away kit, word0")
    assert p.text.endswith(", cinematic lighting")
    assert count_tokens(p.text, tok) <= MAX_TOKENS
    if tok is not None:  # exact: uses the window, and the real tokenizer agrees
        assert p.tokens >= MAX_TOKENS - 4
        ids = tok(p.text.replace("<kb-face-0> <kb-face-1>", "sks sks")).input_ids
        assert len(ids) <= 77


def test_estimate_is_conservative(tokenizer):
    texts = ["a photo of a person in a red football shirt, stadium lights, 4k, highly detailed",
             "ünïcödé façade — naïve café 😀😀", "1234567890 !!!??? supercalifragilisticexpialidocious",
             "Manchester United 2024/25 home kit"]
    for t in texts:
        assert count_tokens(t) >= count_tokens(t, tokenizer), t


def test_short_prompt_not_truncated(tokenizer):
    p = build_prompt("celebrating a goal", face_trigger="<kb-face-0>", kit_words="Celtic home kit",
                     style_words=None, tokenizer=tokenizer)
    assert not p.truncated and p.notice is None


def test_long_negative_is_cut_with_notice():
    p = build_prompt("x", face_trigger=None, kit_words=None, style_words=None, negative="ugly " * 200)
    assert p.truncated and "negative" in p.notice


@pytest.mark.parametrize("text,expected", [
    ("hello <|endoftext|> there", ["<|endoftext|>"]),
    ("<|startoftext|>me", ["<|startoftext|>"]),
    ("me as <kb-slot-3>", ["<kb-slot-3>"]),
    ("someone else <kb-face-12>", ["<kb-face-12>"]),
    ("an <lora:foo:1> trick", ["<lora:foo:1>"]),
    ("a <ti-token> here", ["<ti-token>"]),
    ("a normal prompt with 1 < 2 and 3 > 2", []),
    ("just a dog", []),
])
def test_find_reserved(text, expected):
    assert find_reserved(text) == expected


def test_prompts_module_is_torch_free():
    code = ("import sys, training.prompts as p; p.build_prompt('x', face_trigger='<kb-a>', kit_words='k', "
            "style_words=None); assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
