"""The advanced training method (``/train method:``, ``/kit train method:``), DreamBooth for faces only where a
server admin allowed it, and ``/kit import`` of an A1111 hypernetwork ``.pt`` (through the one validator)."""

from __future__ import annotations

import io

import discord
import pytest
import torch

from bot.training_methods import DREAMBOOTH_OFF
from gpu_worker import contract
from tests.bot.conftest import fake_checker, selfies
from tests.training.test_hypernetwork import DIM, _a1111_file


@pytest.fixture
def bot_cogs():
    return ["bot.cogs.admin", "bot.cogs.train", "bot.cogs.catalog"]


def admin_of(arena):
    role = arena.guild.create_role("Mods", permissions=discord.Permissions(manage_guild=True))
    return arena.guild.add_member(arena.env.create_user("carol"), roles=[role])


def _choices(arena, command: str) -> list[str]:
    cmd = next(c for c in arena.bot.tree.walk_commands() if c.qualified_name == command)
    return [c.value for c in next(p for p in cmd.parameters if p.name == "method").choices]


def _text(r) -> str:
    return "\n".join(m.content for m in [r.response, *r.followups] if m is not None)


async def _payloads(services) -> list[contract.TrainPayload]:
    jobs = await services.arq.queued_jobs(queue_name=services.settings.queue_name)
    return [contract.TrainPayload.from_dict(j.args[0]) for j in jobs if j.function == contract.TRAIN_JOB]


def test_method_choices_are_listed_per_kind(arena):
    assert _choices(arena, "train") == ["pivotal", "lora", "ti", "hypernetwork", "dreambooth"]
    assert _choices(arena, "kit train") == _choices(arena, "style train") == [
        "lora", "pivotal", "ti", "hypernetwork", "dreambooth"]


@pytest.mark.parametrize("bot_seams", [{"photo_checker": fake_checker()}])
async def test_dreambooth_face_is_refused_until_an_admin_allows_it(arena):
    s, alice = arena.services, arena.alice
    photos = dict(zip([f"photo{i}" for i in range(1, 5)], selfies(4), strict=True))
    refused = await alice.slash(arena.channel, "train", consent=True, method="dreambooth", **photos)
    assert DREAMBOOTH_OFF in _text(refused)
    assert await s.db.list_jobs(user_id=alice.id) == [] and await s.db.list_concepts() == []
    assert s.store.list("") == [] and await _payloads(s) == []
    form = await alice.slash(arena.channel, "train", method="dreambooth")  # the upload form is refused too
    assert form.modal is None and DREAMBOOTH_OFF in form.response.content

    shown = await admin_of(arena).slash(arena.channel, "kitbooth settings", allow_dreambooth=True)
    assert shown.response.ephemeral and len(shown.response.embeds[0].fields) >= 5  # the settings, DreamBooth's too
    assert (await s.db.guild_settings(arena.guild.id)).allow_dreambooth is True

    accepted = await alice.slash(arena.channel, "train", consent=True, method="dreambooth", **photos)
    assert "queue" in accepted.response.content
    (job,) = await s.db.list_jobs(user_id=alice.id)
    (payload,) = await _payloads(s)
    assert payload.job_id == job.id and payload.method == "dreambooth" and payload.kind == "face"
    assert (await s.db.get_concept(job.concept_id)).method == "dreambooth"


@pytest.mark.parametrize("bot_seams", [{"photo_checker": fake_checker()}])
async def test_kit_train_with_a_hypernetwork_needs_no_allowance(arena):
    carol = admin_of(arena)
    r = await carol.slash(arena.channel, "kit train", name="Away", method="hypernetwork",
                          photo1=selfies(1)[0])
    assert "queue" in _text(r)
    (payload,) = await _payloads(arena.services)
    assert (payload.kind, payload.method) == ("kit", "hypernetwork")


async def test_kit_import_of_an_a1111_hypernetwork_pt(arena):
    carol = admin_of(arena)
    data, _ = _a1111_file(DIM)
    r = await carol.slash(arena.channel, "kit import", name="Retro", file=("retro.pt", data))
    assert "Imported the kit **Retro** — hypernetwork 1,2,2,1 relu on widths 32" in _text(r)
    s = arena.services
    kit = await s.db.get_kit(arena.guild.id, "Retro")
    assert s.store.get_bytes((await s.db.get_concept(kit.concept_id)).artifact_key) == data
    # A face's hypernetwork (its name says so) is refused as a kit, and nothing is stored.
    state = torch.load(io.BytesIO(data), weights_only=True)
    buf = io.BytesIO()
    torch.save({**state, "name": "alice-kb-face"}, buf)
    r = await carol.slash(arena.channel, "kit import", name="Stolen", file=("stolen.pt", buf.getvalue()))
    assert "a face can only be used by the person it belongs to" in _text(r)
    assert await s.db.get_kit(arena.guild.id, "Stolen") is None
