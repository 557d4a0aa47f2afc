"""/generate: happy path, autocomplete, and every refusal (no face, unknown kit, prompt checks, quotas)."""

from __future__ import annotations

import pytest

from gpu_worker import contract
from storage import keys
from tests.bot.conftest import assert_acknowledged_first, make_ready_face, queued


async def test_generate_happy_path_enqueues_own_face_kit_and_style(arena):
    s = arena.services
    face = await make_ready_face(s, arena.alice.id)
    await s.db.add_kit(guild_id=arena.guild.id, name="Test United Home", description="red shirt, white shorts")
    start = len(arena.env.http_requests)
    result = await arena.alice.slash(arena.channel, "generate", prompt="celebrating a goal",
                                     kit="Test United Home", count=2, seed=7, shape="portrait")
    assert_acknowledged_first(arena.env, start)
    assert not result.response.ephemeral
    assert "queue" in result.response.content and "Test United Home" in result.response.content
    ((func, payload),) = await queued(s)
    assert func == contract.GENERATE_JOB
    p = contract.GeneratePayload.from_dict(payload)
    (job,) = await s.db.list_jobs(user_id=arena.alice.id)
    assert p.job_id == job.id and job.kind == "generate" and job.status == "queued"
    assert p.face.key == face.artifact_key and p.face.kind == "face"
    assert p.kit_words == "red shirt, white shorts" and p.kit is None
    assert (p.count, p.seed, p.width, p.height) == (2, 7, 512, 768)
    assert p.output_prefix == keys.outputs_prefix(arena.alice.id, job.id)
    assert p.prompt == "celebrating a goal" and p.allow_nsfw is False
    assert p.target.interaction_token and p.target.channel_id == arena.channel.id


async def test_generate_without_a_face_says_what_to_do(arena):
    result = await arena.alice.slash(arena.channel, "generate", prompt="a goal")
    assert result.response.ephemeral
    assert "run /train" in result.response.content
    assert await queued(arena.services) == []


async def test_face_of_another_user_is_never_used(arena):
    s = arena.services
    await make_ready_face(s, arena.alice.id, tokens=["ohwx"])
    # bob has no face: alice's face is unreachable for him, by name or trigger word
    result = await arena.bob.slash(arena.channel, "generate", prompt="ohwx person scoring")
    assert result.response.ephemeral
    assert await queued(s) == []
    await make_ready_face(s, arena.bob.id, tokens=["zkbob"])
    result = await arena.bob.slash(arena.channel, "generate", prompt="ohwx person scoring")
    assert "another member's trigger word" in result.response.content
    result = await arena.bob.slash(arena.channel, "generate", prompt="zkbob scoring")  # his own: fine
    ((_, payload),) = await queued(s)
    assert payload["face"]["key"].startswith(keys.user_prefix(arena.bob.id))


async def test_unknown_kit_is_refused_with_a_hint(arena):
    await make_ready_face(arena.services, arena.alice.id)
    result = await arena.alice.slash(arena.channel, "generate", prompt="a goal", kit="Nonexistent FC")
    assert result.response.ephemeral
    assert "/kits" in result.response.content
    assert await queued(arena.services) == []


@pytest.mark.parametrize("prompt, expected", [
    ("a goal <|endoftext|> more", "reserved"),
    ("me as <kb-face-3> person", "reserved"),
    ("<lora:someone:1> at the stadium", "reserved"),
    ("me as \uff1ckb-slot-0\uff1e person", "reserved"),  # fullwidth brackets (NFKC: the worker refuses it too)
])
async def test_prompt_checks(arena, prompt, expected):
    await make_ready_face(arena.services, arena.alice.id)
    result = await arena.alice.slash(arena.channel, "generate", prompt=prompt)
    assert expected in result.response.content and result.response.ephemeral
    assert await queued(arena.services) == []


async def test_prompt_length_is_one_limit_in_the_range_and_the_check(arena):
    # The slash command's range and the bot's own check both say kitbooth.limits.PROMPT_CHARS (1000).
    from bot.generate_request import validate_prompt
    from kitbooth import limits
    from kitbooth.errors import InvalidInput

    # What Discord is told (and enforces before the bot sees the interaction):
    options = {o["name"]: o for o in arena.bot.tree.get_command("generate").to_dict(arena.bot.tree)["options"]}
    assert options["prompt"]["max_length"] == limits.PROMPT_CHARS
    assert (options["count"]["min_value"], options["count"]["max_value"]) == (limits.COUNT_MIN, limits.COUNT_MAX)
    assert options["seed"]["max_value"] == limits.SEED_MAX
    assert options["kit"]["max_length"] == options["style"]["max_length"] == limits.NAME_CHARS
    await make_ready_face(arena.services, arena.alice.id)
    ok = await arena.alice.slash(arena.channel, "generate", prompt="y" * limits.PROMPT_CHARS, count=1)
    assert not ok.response.ephemeral, ok.response.content  # exactly the limit is accepted
    with pytest.raises(InvalidInput, match="keep it to 1000"):
        await validate_prompt(arena.services, arena.alice.id, "x" * (limits.PROMPT_CHARS + 1))


async def test_daily_quota_exceeded(arena):
    s = arena.services
    await make_ready_face(s, arena.alice.id)
    await s.db.update_guild_settings(arena.guild.id, daily_quota=5)
    r1 = await arena.alice.slash(arena.channel, "generate", prompt="one", count=4)
    assert not r1.response.ephemeral
    await s.db.update_job(1, status="done")
    r2 = await arena.alice.slash(arena.channel, "generate", prompt="two", count=4)
    assert "Only 1 of today's 5 images left" in r2.response.content and r2.response.ephemeral
    r3 = await arena.alice.slash(arena.channel, "generate", prompt="three", count=1)
    assert not r3.response.ephemeral
    await s.db.update_job(2, status="done")
    r4 = await arena.alice.slash(arena.channel, "generate", prompt="four", count=1)
    assert "used all 5" in r4.response.content
    assert len(await s.db.list_jobs(user_id=arena.alice.id)) == 2


@pytest.mark.parametrize("bot_setting_overrides", [{"rate_limit_s": 30}])
@pytest.mark.parametrize("bot_seams", [{"clock": lambda: 1000.0}])
async def test_rate_limit(arena):
    await make_ready_face(arena.services, arena.alice.id)
    await arena.alice.slash(arena.channel, "generate", prompt="one", count=1)
    r = await arena.alice.slash(arena.channel, "generate", prompt="two", count=1)
    assert "Slow down" in r.response.content
    assert len(await queued(arena.services)) == 1


async def test_nsfw_policy_per_channel(arena):
    s = arena.services
    await make_ready_face(s, arena.alice.id)
    await s.db.update_guild_settings(arena.guild.id, nsfw_policy={str(arena.channel.id): "allow"})
    await arena.alice.slash(arena.channel, "generate", prompt="beach day", count=1)
    ((_, payload),) = await queued(s)
    assert payload["allow_nsfw"] is True


async def test_kit_autocomplete_from_this_guild(arena):
    s = arena.services
    await s.db.add_kit(guild_id=arena.guild.id, name="Manchester Test Home", description="sky blue")
    await s.db.add_kit(guild_id=arena.guild.id, name="Comic", description="comic book", kind="style")
    await s.db.add_kit(guild_id=999, name="Manchester Elsewhere", description="other guild")
    choices = await arena.alice.autocomplete(arena.channel, "generate", "kit", "manchester t", prompt="x")
    names = [c["name"] for c in choices]
    assert "Manchester Test Home" in names and "Manchester Elsewhere" not in names
    choices = await arena.alice.autocomplete(arena.channel, "generate", "style", "comi", prompt="x")
    assert "Comic" in [c["name"] for c in choices]


async def test_a_trigger_word_shared_with_another_member_is_still_your_own(arena):
    # Pure-LoRA faces all use the same trigger word: neither owner may be refused for typing their own.
    s = arena.services
    await make_ready_face(s, arena.alice.id, tokens=["ohwx"])
    await make_ready_face(s, arena.bob.id, tokens=["ohwx"])
    for member in (arena.alice, arena.bob):
        result = await member.slash(arena.channel, "generate", prompt="ohwx person scoring")
        assert not result.response.ephemeral, result.response.content
    assert len(await queued(s)) == 2
