"""The worker's own checks of a GeneratePayload: it must not trust the bot (or anything that can write to Redis)
to keep one user's face, photos or concept slots away from another user's request."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gpu_worker import contract
from gpu_worker.validation import check_concept_tokens, validate_generate
from kitbooth.errors import IncompatibleArtifact, InvalidInput, NotAllowed
from storage import keys

ALICE, BOB, GUILD, OTHER_GUILD = 1001, 1002, 77, 78


def _p(**kw) -> contract.GeneratePayload:
    base = dict(job_id=5, user_id=BOB, prompt="at the stadium", output_prefix=keys.outputs_prefix(BOB, 5),
                target=contract.DiscordTarget(channel_id=1, user_id=BOB), guild_id=GUILD,
                face=contract.ConceptRef(key=keys.concept_key(BOB, 1), kind="face"))
    base.update(kw)
    return contract.GeneratePayload(**base)


def test_a_well_formed_payload_passes():
    validate_generate(_p(kit=contract.ConceptRef(key=keys.guild_concept_key(GUILD, 3), kind="kit"),
                         kit_words="red shirt", style_words="comic book"))


@pytest.mark.parametrize("field", ["prompt", "kit_words", "style_words", "negative_prompt"])
@pytest.mark.parametrize("text", ["<kb-slot-0> person", "a <KB-SLOT-1> b", "<|endoftext|>", "x <kb-face-0> y",
                                  "\uff1ckb-slot-0\uff1e fullwidth", "<\u200bkb-slot-0>"])
def test_slot_and_special_tokens_are_refused_in_every_prompt_part(field, text):
    with pytest.raises(InvalidInput, match="reserved"):
        validate_generate(_p(**{field: text}))


@pytest.mark.parametrize("face", [
    contract.ConceptRef(key=keys.concept_key(ALICE, 1), kind="face"),  # someone else's face
    contract.ConceptRef(key=f"users/{BOB}/../{ALICE}/concepts/1.safetensors", kind="face"),  # escapes the prefix
    contract.ConceptRef(key=keys.concept_key(BOB, 1), kind="kit"),  # own file, wrong kind
])
def test_face_must_be_the_requesters_own(face):
    with pytest.raises(NotAllowed):
        validate_generate(_p(face=face))


@pytest.mark.parametrize("slot", ["kit", "style"])
@pytest.mark.parametrize("key, guild_id", [
    (keys.concept_key(ALICE, 1), GUILD),  # another user's face smuggled in as a kit/style
    (keys.concept_key(BOB, 1), GUILD),  # even the requester's own face file: not a catalogue concept
    (keys.guild_concept_key(OTHER_GUILD, 3), GUILD),  # another server's catalogue
    (keys.guild_concept_key(GUILD, 3), None),  # no server at all
    (f"guilds/{GUILD}/../../users/{ALICE}/concepts/1.safetensors", GUILD),
])
def test_kit_and_style_must_be_this_servers(slot, key, guild_id):
    ref = contract.ConceptRef(key=key, kind=slot)
    with pytest.raises(NotAllowed):
        validate_generate(_p(guild_id=guild_id, **{slot: ref}))


def test_kit_ref_with_the_wrong_kind_is_refused():
    with pytest.raises(NotAllowed):
        validate_generate(_p(kit=contract.ConceptRef(key=keys.guild_concept_key(GUILD, 3), kind="face")))


def test_variation_source_must_be_own_and_a_plain_key():
    with pytest.raises(NotAllowed):
        validate_generate(_p(variation_of=keys.output_key(ALICE, 9, 0)))
    with pytest.raises(NotAllowed):
        validate_generate(_p(variation_of=f"users/{BOB}/../{ALICE}/outputs/9/0.png"))


@pytest.mark.parametrize("tokens", [["<kb-slot-0>"], ["<KB-SLOT-3>"], ["x<kb-slot-1>y"], ["<|endoftext|>"],
                                    ["\uff1ckb-slot-0\uff1e"]])
def test_concept_whose_trigger_names_a_slot_token_is_refused(tokens):
    # e.g. an imported KitBooth-format LoRA whose metadata says its trigger is "<kb-slot-0>": with no vectors of
    # its own it is never rewritten, and in a mixed batch slot 0 holds ANOTHER user's face vectors.
    with pytest.raises(IncompatibleArtifact):
        check_concept_tokens(SimpleNamespace(tokens=tokens))


@pytest.mark.parametrize("tokens", [["<kb-face-0>", "<kb-face-1>"], ["ohwx"], ["<arsenal-0>"], []])
def test_ordinary_triggers_pass(tokens):
    check_concept_tokens(SimpleNamespace(tokens=tokens))


def test_a_payload_from_a_newer_release_is_refused_by_its_version_and_an_older_one_still_reads():
    from kitbooth.errors import PayloadError

    data = _p().to_dict()
    assert data["version"] == contract.CONTRACT_VERSION
    newer = {**data, "version": contract.CONTRACT_VERSION + 1, "some_new_field": 1}
    with pytest.raises(PayloadError, match="contract version .* newer than this process's .*upgrade"):
        contract.GeneratePayload.from_dict(newer)
    older = {**data, "version": 1}
    del older["target"]["locale"]  # version 1 had no locale: it reads as English
    assert contract.GeneratePayload.from_dict(older).target.locale == "en-US"
