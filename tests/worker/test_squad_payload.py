"""The worker's own check of a SquadPayload (issue 15): every face must be an approved member's own, the approval
set must be exactly the members, and the usual prompt, kit and folder rules hold."""

from __future__ import annotations

import pytest

from gpu_worker import contract
from gpu_worker.validation import validate_squad
from kitbooth.errors import InvalidInput, NotAllowed
from storage import keys

ALICE, BOB, CAROL, DAVE, GUILD = 1001, 1002, 1003, 1004, 77


def _face(uid: int, owner: int | None = None) -> contract.SquadFace:
    return contract.SquadFace(user_id=uid, face=contract.ConceptRef(key=keys.concept_key(owner or uid, 1), kind="face"),
                              reference_key=keys.reference_key(owner or uid, 1))


def _p(**kw) -> contract.SquadPayload:
    base = dict(job_id=9, user_id=ALICE, squad_id=3, prompt="lifting the cup", output_prefix=keys.outputs_prefix(ALICE, 9),
                target=contract.DiscordTarget(channel_id=1, user_id=ALICE), guild_id=GUILD,
                members=[_face(ALICE), _face(BOB), _face(CAROL)], approved=[ALICE, BOB, CAROL])
    base.update(kw)
    return contract.SquadPayload(**base)


def test_a_squad_everyone_approved_passes_and_round_trips():
    p = _p()
    validate_squad(p)
    assert contract.SquadPayload.from_json(p.to_json()) == p


@pytest.mark.parametrize("change", [
    dict(members=[_face(ALICE), _face(BOB), _face(DAVE)]),  # Dave never approved
    dict(members=[_face(ALICE), _face(BOB), _face(CAROL, owner=DAVE)]),  # Carol's slot, Dave's face key
    dict(approved=[ALICE, BOB]),  # Carol did not approve
    dict(members=[_face(ALICE), _face(BOB), _face(BOB)], approved=[ALICE, BOB]),  # one member twice
    dict(members=[_face(BOB), _face(ALICE), _face(CAROL)]),  # the requester must be in it, first
    dict(members=[_face(ALICE), _face(BOB), contract.SquadFace(user_id=CAROL, face=contract.ConceptRef(
        key=f"users/{CAROL}/../{DAVE}/concepts/1.safetensors", kind="face"))]),  # escapes the prefix
    dict(members=[_face(ALICE), _face(BOB), contract.SquadFace(user_id=CAROL, face=contract.ConceptRef(
        key=keys.concept_key(CAROL, 1), kind="face"), reference_key=keys.reference_key(DAVE, 1))]),
    dict(output_prefix=keys.outputs_prefix(BOB, 9)),  # results only under the requester's folder
    dict(kit=contract.ConceptRef(key=keys.concept_key(DAVE, 1), kind="kit")),  # a face smuggled in as the kit
])
def test_a_face_nobody_approved_is_refused(change):
    with pytest.raises(NotAllowed):
        validate_squad(_p(**change))


@pytest.mark.parametrize("change", [dict(members=[_face(ALICE)], approved=[ALICE]), dict(prompt="a <kb-slot-0>"),
                                    dict(members=[_face(u) for u in range(1, 7)], approved=list(range(1, 7)),
                                         user_id=1, output_prefix=keys.outputs_prefix(1, 9))])
def test_size_and_prompt_rules(change):
    with pytest.raises(InvalidInput):
        validate_squad(_p(**change))
