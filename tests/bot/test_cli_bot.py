"""``kitbooth bot`` / ``doctor``: the token message, the checks table."""

from __future__ import annotations

import pytest

from kitbooth.cli import main


@pytest.fixture
def clean_env(tmp_path, monkeypatch, redis_url):
    monkeypatch.chdir(tmp_path)  # no stray .env
    for var in ("KITBOOTH_DISCORD_TOKEN", "KITBOOTH_DATABASE_PATH", "KITBOOTH_ARTIFACT_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KITBOOTH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KITBOOTH_REDIS_URL", redis_url)
    return tmp_path


def test_bot_without_token_says_how_to_get_one(clean_env, capsys):
    assert main(["bot"]) == 2
    err = capsys.readouterr().err
    assert "developers/applications" in err and "Reset Token" in err and "KITBOOTH_DISCORD_TOKEN" in err


def test_up_without_token_exits_2_before_starting_anything(clean_env, capsys):
    assert main(["up"]) == 2
    assert not (clean_env / "data" / "kitbooth.db").exists()


def test_doctor_table(clean_env, capsys, monkeypatch):
    assert main(["doctor", "--no-torch"]) == 1  # no token
    out = capsys.readouterr().out
    assert "✅ Redis reachable" in out and "✅ Database migrates" in out and "✅ Artifact store writable" in out
    assert "❌ Discord token set" in out
    monkeypatch.setenv("KITBOOTH_DISCORD_TOKEN", "MTIzNDU2Nzg5MDEyMzQ1Njc4.abcdef.secretsecretsecretsecretsecret12")
    assert main(["doctor", "--no-torch"]) == 0
    out = capsys.readouterr().out
    assert "secretsecret" not in out and "3/4" not in out and "4/4 checks passed" in out


def test_doctor_reports_unreachable_redis_and_missing_model(clean_env, capsys, monkeypatch):
    monkeypatch.setenv("KITBOOTH_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("KITBOOTH_BASE_MODEL", str(clean_env / "no-such-model"))
    monkeypatch.setenv("KITBOOTH_OFFLINE", "true")
    from bot.cli import _check_model, _check_redis
    from kitbooth.settings import load_settings

    s = load_settings()
    ok, detail = _check_redis(s)
    assert not ok and "127.0.0.1:1" in detail
    ok, detail = _check_model(s)
    assert not ok
    (clean_env / "model").mkdir()
    (clean_env / "model" / "model_index.json").write_text("{}")
    ok, _ = _check_model(s.model_copy(update={"base_model": str(clean_env / "model")}))
    assert ok


def test_up_fails_when_a_child_fails_and_stops_the_other(clean_env, monkeypatch, capsys):
    """A child that cannot start (here: Redis unreachable for both) makes `kitbooth up` exit non-zero."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("KITBOOTH_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    monkeypatch.setenv("KITBOOTH_DISCORD_TOKEN", "not-a-real-token")
    monkeypatch.setenv("KITBOOTH_BASE_MODEL", str(clean_env / "no-model"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["up"]) != 0
    assert "stopping the rest" in capsys.readouterr().err
