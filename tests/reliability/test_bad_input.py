"""Bad input, by class: every generated case of ``bad_input_cases`` through its real entry point — refused with a
clear message (no traceback, no incident id) or, at a limit, accepted — then ``kitbooth doctor``'s scan finds
nothing (after each prompt, which goes through the real bot and could leave a row or a queued job behind; after
each class for the pure checks). ``docs/bad-input.md`` is the table of the same cases."""

from __future__ import annotations

import pytest

from gpu_worker import contract
from kitbooth.errors import PayloadError, UserFacingError
from tests.bot.conftest import make_ready_face
from tests.conftest import ROOT
from tests.reliability import bad_input_cases as cases
from tests.reliability.conftest import scan_findings
from tests.reliability.figures import count

SUITE = "bad_input"
DOC = ROOT / "docs" / "bad-input.md"


def _clear(name: str, message: str) -> str:
    assert message and message.strip(), f"{name}: no message"
    low = message.lower()
    assert "traceback" not in low and "incident" not in low and "error." not in message[:7], (name, message)
    return message


def _tally(case: cases.Case, outcome: str, message: str = "") -> None:
    assert outcome == case.expect, (case.klass, case.name, outcome, message)
    if outcome == "refused":
        _clear(case.name, message)
    count(SUITE, cases=1, **{outcome: 1}, clear_messages=int(outcome == "refused"))


def test_the_doc_table_is_generated_from_the_cases():
    assert len(cases.all_cases()) >= 60
    assert len({(c.klass, c.name) for c in cases.all_cases()}) == len(cases.all_cases())
    assert DOC.read_text() == cases.render_table(), "regenerate: python -m tests.reliability.bad_input_cases > " \
                                                     "docs/bad-input.md"


# --- the pure checks -----------------------------------------------------------------------------------------
def _photo(case):
    from training.images import ImageRejected, load_image

    try:
        load_image(case.args["data"], name=case.args["name"])
    except ImageRejected as exc:
        return "refused", exc.reason
    return "accepted", ""


def _option(case):
    from gpu_worker.validation import validate_generate

    base = dict(job_id=5, user_id=9, prompt="me at the stadium", output_prefix="users/9/outputs/5/",
                target=contract.DiscordTarget(channel_id=1, user_id=9), count=1, steps=20)
    try:
        validate_generate(contract.GeneratePayload(**{**base, **case.args}))
    except UserFacingError as exc:
        return "refused", exc.message
    return "accepted", ""


def _imported(case):
    from bot.imports import check_import
    from kitbooth import limits

    try:
        check_import(case.args["data"], case.args["filename"], hidden_size=32, max_bytes=limits.CONCEPT_FILE_BYTES)
    except UserFacingError as exc:
        return "refused", exc.message
    return "accepted", ""


def _payload(case):
    from gpu_worker.runner import UNREADABLE_REASON, parse
    from gpu_worker.validation import validate_generate

    try:
        validate_generate(parse(contract.GENERATE_JOB, case.args["raw"]))
    except PayloadError:
        return "refused", UNREADABLE_REASON  # what the runner posts for a payload it cannot read
    except UserFacingError as exc:
        return "refused", exc.message
    return "accepted", ""


RUNNERS = {"photos": _photo, "options": _option, "imported files": _imported, "job payloads": _payload}


@pytest.mark.parametrize("klass", list(RUNNERS))
async def test_each_case_of_a_class_is_answered_clearly(klass, arena, doctor_clean):
    for case in [c for c in cases.all_cases() if c.klass == klass]:
        outcome, message = RUNNERS[klass](case)
        _tally(case, outcome, message)
    await doctor_clean(arena.services.settings, SUITE)


def test_each_cli_case_is_answered_clearly(tmp_path, capsys, monkeypatch):
    from kitbooth.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KITBOOTH_DATA_DIR", str(tmp_path / "data"))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00garbage" * 100)
    for case in cases.cli_cases():
        argv = [str(garbage) if a == "{garbage}" else a for a in case.args["argv"]]
        if argv[0] in ("generate", "convert"):
            argv += ["--out", str(tmp_path / "out")]
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse: usage and one line of error, exit 2
            rc = exc.code
        err = capsys.readouterr().err
        _tally(case, "refused" if rc else "accepted", err.strip().splitlines()[-1] if err.strip() else "")


# --- prompts, through the real bot ----------------------------------------------------------------------------
async def test_each_prompt_case_is_answered_clearly_by_the_bot(arena):
    s, alice = arena.services, arena.alice
    await make_ready_face(s, alice.id, tokens=("ohwxalice",))
    await make_ready_face(s, arena.bob.id, tokens=("ohwxbob",))
    for case in cases.prompt_cases():
        before = {j.id for j in await s.db.list_jobs(user_id=alice.id)}
        r = await alice.slash(arena.channel, "generate", prompt=case.args["prompt"])
        text = "\n".join(m.content for m in [r.response, *r.followups] if m is not None)
        new = [j for j in await s.db.list_jobs(user_id=alice.id) if j.id not in before]
        outcome = "accepted" if new else "refused"
        if outcome == "refused":
            assert r.response is not None and r.response.ephemeral, (case.name, text)
        _tally(case, outcome, text)
        for job in new:  # the member cancels it (so the queue limit never answers the next case)
            await s.db.update_job(job.id, status="cancelled")
            await s.arq.zrem(s.settings.queue_name, contract.arq_job_id(job.id))
        found = await scan_findings(s.settings)
        count(SUITE, doctor_scans=1, doctor_findings=len(found))
        assert found == [], (case.name, found)
