"""/train: the modal, the attachment options, the selfie checks and every refusal."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from gpu_worker import contract
from storage import keys
from tests.bot.conftest import (
    assert_acknowledged_first,
    callbacks_so_far,
    fake_checker,
    requests_since,
    selfies,
)


async def queued_payloads(services):
    jobs = await services.arq.queued_jobs(queue_name=services.settings.queue_name)
    return [(j.function, j.args[0]) for j in jobs]


async def test_train_command_opens_modal_with_upload_and_consent(arena):
    shown = await arena.alice.slash(arena.channel, "train")
    assert shown.modal is not None
    text = str(shown.modal)
    assert "photos" in text and "consent" in text


@pytest.mark.slow
async def test_train_modal_happy_path_real_photo_checks(arena):
    shown = await arena.alice.slash(arena.channel, "train")
    result = await arena.alice.submit_modal(shown, {"photos": selfies(5), "consent": ["yes"]})
    msg = result.response
    assert msg is not None and msg.ephemeral
    assert "✅ photo 1: ok" in msg.content and "queue" in msg.content and "ETA" in msg.content
    s = arena.services
    (job,) = await s.db.list_jobs(user_id=arena.alice.id)
    assert job.kind == "train" and job.status == "queued"
    concept = await s.db.get_concept(job.concept_id)
    assert concept.kind == "face" and concept.status == "training" and concept.owner_id == arena.alice.id
    user = await s.db.get_user(arena.alice.id)
    assert user.consent_at is not None
    # Only the crops (PNG) and their face masks are stored, under the photo keys, and the face's reference
    # identity (the mean selfie descriptor, 1024 bytes) that the worker's best-of-N reads.
    stored = s.store.list(keys.user_prefix(arena.alice.id))
    crops = [keys.photo_key(arena.alice.id, concept.id, i) for i in range(5)]
    reference = keys.reference_key(arena.alice.id, concept.id)
    assert stored == sorted(crops + [keys.mask_key(k) for k in crops] + [reference])
    assert len(s.store.get_bytes(reference)) == 1024
    stored.remove(reference)
    mask = Image.open(io.BytesIO(s.store.get_bytes(keys.mask_key(crops[0]))))
    assert mask.mode == "L" and mask.size == Image.open(io.BytesIO(s.store.get_bytes(crops[0]))).size
    assert all(s.store.get_bytes(k).startswith(b"\x89PNG") for k in stored)
    ((func, payload),) = await queued_payloads(s)
    assert func == contract.TRAIN_JOB
    p = contract.TrainPayload.from_dict(payload)
    assert p.job_id == job.id and p.concept_id == concept.id and p.photo_keys == crops
    assert p.target.channel_id == arena.channel.id and p.target.user_id == arena.alice.id
    assert p.target.interaction_token
    assert await s.arq.exists("arq:job:" + contract.arq_job_id(job.id, 0)) or await s.arq.exists(
        "arq:job:" + contract.arq_job_id(job.id))


@pytest.mark.parametrize("bot_seams", [{"photo_checker": fake_checker()}])
async def test_train_attachment_options_share_the_flow(arena):
    photos = dict(zip([f"photo{i}" for i in range(1, 5)], selfies(4), strict=True))
    start = len(arena.env.http_requests)
    result = await arena.alice.slash(arena.channel, "train", consent=True, **photos)
    assert_acknowledged_first(arena.env, start)
    assert requests_since(arena.env, start)[0].json["type"] == 5  # deferred
    assert "queue" in result.response.content
    (job,) = await arena.services.db.list_jobs(user_id=arena.alice.id)
    assert job.status == "queued"


@pytest.mark.parametrize("bot_seams", [{"photo_checker": fake_checker()}])
async def test_no_consent_is_refused_and_nothing_stored(arena):
    shown = await arena.alice.slash(arena.channel, "train")
    result = await arena.alice.submit_modal(shown, {"photos": selfies(4), "consent": ["no"]})
    assert "consent" in result.response.content and result.response.ephemeral
    assert await arena.services.db.list_jobs(user_id=arena.alice.id) == []
    assert arena.services.store.list("users/") == []
    # attachment path without the consent option
    result = await arena.alice.slash(arena.channel, "train", **{f"photo{i}": p for i, p in enumerate(selfies(4), 1)})
    assert "consent" in result.response.content


@pytest.mark.parametrize("bot_seams", [{"photo_checker": fake_checker()}])
async def test_too_few_photos(arena):
    shown = await arena.alice.slash(arena.channel, "train")
    result = await arena.alice.submit_modal(shown, {"photos": selfies(2), "consent": ["yes"]})
    assert "Only 2 photos" in result.response.content
    assert await arena.services.db.list_jobs(user_id=arena.alice.id) == []


@pytest.mark.parametrize("bot_seams", [{"photo_checker": fake_checker()}])
async def test_second_training_while_one_runs_is_refused(arena):
    shown = await arena.alice.slash(arena.channel, "train")
    await arena.alice.submit_modal(shown, {"photos": selfies(4), "consent": ["yes"]})
    again = await arena.alice.slash(arena.channel, "train")
    assert again.modal is None
    assert "already have a training" in again.response.content and again.response.ephemeral
    again = await arena.alice.slash(arena.channel, "train", consent=True,
                                    **{f"photo{i}": p for i, p in enumerate(selfies(4), 1)})
    assert "already have a training" in again.response.content
    assert len(await arena.services.db.list_jobs(user_id=arena.alice.id)) == 1


def _checker_that_needs_an_ack(env_box, seen):
    inner = fake_checker()

    def check(kind, photos):
        seen.append(callbacks_so_far(env_box[0]))  # slow work starts only after the acknowledgement
        return inner(kind, photos)

    return check


_ENV: list = []
_SEEN: list = []


@pytest.mark.parametrize("bot_seams", [{"photo_checker": _checker_that_needs_an_ack(_ENV, _SEEN)}])
async def test_defer_before_slow_work_modal_and_options(arena):
    _ENV[:] = [arena.env]
    _SEEN.clear()
    shown = await arena.alice.slash(arena.channel, "train")
    start = len(arena.env.http_requests)
    await arena.alice.submit_modal(shown, {"photos": selfies(4), "consent": ["yes"]})
    assert_acknowledged_first(arena.env, start)
    before = callbacks_so_far(arena.env)
    assert [before] == _SEEN  # the checker ran after the defer callback had been sent
    await arena.services.db.update_job(1, status="done")
    start = len(arena.env.http_requests)
    await arena.bob.slash(arena.channel, "train", consent=True,
                          **{f"photo{i}": p for i, p in enumerate(selfies(4), 1)})
    assert_acknowledged_first(arena.env, start)
    assert _SEEN[-1] == callbacks_so_far(arena.env)


# --- refusals with the real selfie checks (training.faces, dlib) --------------------------------------------
def _bad(kind: str) -> tuple[str, bytes]:
    from tests.training import photos

    return {
        "not an image": ("notes.png", photos.text_file()),
        "no face": ("wall.jpg", photos.no_face()),
        "two faces": ("friends.jpg", photos.two_faces()),
        "empty": ("empty.jpg", photos.empty()),
    }[kind]


@pytest.mark.parametrize("bad, expected", [
    ("not an image", "photo 4: "),
    ("no face", "photo 4: no face found"),
    ("two faces", "photo 4: two people"),
    ("empty", "photo 4: the file is empty"),
])
async def test_bad_photo_is_named_and_too_few_good_ones_refuse(arena, bad, expected):
    shown = await arena.alice.slash(arena.channel, "train")
    result = await arena.alice.submit_modal(shown, {"photos": selfies(3) + [_bad(bad)], "consent": ["yes"]})
    text = result.response.content
    assert result.response.ephemeral
    assert "✅ photo 1: ok" in text and f"❌ {expected}" in text and "Only 3 usable photos" in text
    assert await arena.services.db.list_jobs(user_id=arena.alice.id) == []
    assert arena.services.store.list("users/") == []


async def test_a_bad_photo_among_enough_good_ones_is_skipped(arena):
    shown = await arena.alice.slash(arena.channel, "train")
    result = await arena.alice.submit_modal(shown, {"photos": selfies(4) + [_bad("no face")], "consent": ["yes"]})
    assert "❌ photo 5: no face found" in result.response.content and "queue" in result.response.content
    (job,) = await arena.services.db.list_jobs(user_id=arena.alice.id)
    assert len(job.payload["photo_keys"]) == 4


async def test_too_big_photo(arena):
    from tests.training import photos

    big = ("huge.png", photos.astronaut_png())
    arena.services.settings.max_upload_bytes = len(big[1]) - 1
    shown = await arena.alice.slash(arena.channel, "train")
    result = await arena.alice.submit_modal(shown, {"photos": selfies(3) + [big], "consent": ["yes"]})
    assert "❌ photo 4: too big" in result.response.content
    assert await arena.services.db.list_jobs(user_id=arena.alice.id) == []


async def test_different_person_is_refused(arena, monkeypatch):
    """No second bundled face exists: photo 4 becomes someone else at the descriptor seam."""
    import numpy as np

    from training import faces

    real = faces._descriptor
    calls = {"n": 0}

    def other_person_on_4th(work, rect):
        calls["n"] += 1
        d = real(work, rect)
        return d + np.float64(0.3) if calls["n"] == 4 else d

    monkeypatch.setattr(faces, "_descriptor", other_person_on_4th)
    shown = await arena.alice.slash(arena.channel, "train")
    result = await arena.alice.submit_modal(shown, {"photos": selfies(4), "consent": ["yes"]})
    assert "❌ photo 4: looks like a different person" in result.response.content
    assert await arena.services.db.list_jobs(user_id=arena.alice.id) == []


async def test_no_photos_with_attachment_path_opens_the_form_and_roles_gate_training(arena):
    role = arena.guild.create_role("Trainer")
    await arena.services.db.update_guild_settings(arena.guild.id, train_role_ids=[role.id])
    r = await arena.alice.slash(arena.channel, "train")
    assert r.modal is None and "only some roles" in r.response.content
    r = await arena.alice.slash(arena.channel, "train", consent=True, photo1=selfies(1)[0])
    assert "only some roles" in r.response.content


async def test_one_photo_only_is_too_few(arena):
    r = await arena.alice.slash(arena.channel, "train", consent=True, photo1=selfies(1)[0])
    assert "Only 1 photo" in r.response.content and "4-10" in r.response.content
