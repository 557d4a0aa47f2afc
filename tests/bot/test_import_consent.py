"""Consent through the real commands: a KitBooth face file offered to ``/kit import`` or ``/style import`` is
refused in one sentence, and nothing is stored (no kit row, no concept row, no file)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save

from tests.bot.test_catalog import _text, admin_of

H = 32  # the test bot's base width (bot_settings: base_hidden_size=32)


@pytest.fixture
def bot_cogs():
    return ["bot.cogs.catalog"]


def own_face() -> bytes:
    """A KitBooth face file (our own format, kind face), renamed by whoever uploads it."""
    meta = {"format": "kitbooth.concept", "format_version": "1", "kind": "face", "method": "ti", "base_model": "x",
            "hidden_size": str(H), "tokens": json.dumps(["<kb-face-0>", "<kb-face-1>"]), "rank": "", "alpha": "",
            "steps": "10"}
    return save({"embeddings": np.zeros((2, H), np.float16)}, metadata=meta)


def exported_face() -> bytes:
    """The kohya export of a face (emb_params + our kind), renamed."""
    return save({"emb_params": np.zeros((2, H), np.float16)},
                metadata={"kitbooth_kind": "face", "kitbooth_trigger": "alice-kb-face"})


@pytest.mark.parametrize("command", ["kit import", "style import"])
@pytest.mark.parametrize("data", [own_face(), exported_face(), save({"<kb-face-0>": np.zeros((2, H), np.float16)})],
                         ids=["own", "export", "face token"])
async def test_a_face_file_is_refused_as_a_kit_or_style(arena, command, data):
    carol = admin_of(arena)
    r = await carol.slash(arena.channel, command, name="Hometown away", file=("arsenal-away.safetensors", data))
    text = _text(r)
    assert "face can only be used by the person it belongs to" in text and "Imported" not in text
    s = arena.services
    assert await s.db.get_kit(arena.guild.id, "Hometown away", command.split()[0]) is None
    assert await s.db.list_concepts() == [] and s.store.list("") == []


async def test_a_plain_kit_file_is_still_imported(arena):
    carol = admin_of(arena)
    data = save({"emb_params": np.zeros((2, H), np.float16)})
    r = await carol.slash(arena.channel, "kit import", name="Hometown away", file=("arsenal-away.safetensors", data))
    assert "Imported the kit **Hometown away**" in _text(r)
