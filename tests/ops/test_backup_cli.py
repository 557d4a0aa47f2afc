"""``kitbooth backup DIR`` then ``kitbooth restore DIR`` through the CLI: a database with rows (and the store's
objects, copied) comes back in a fresh data folder; a second restore over it is refused with one line."""

from __future__ import annotations

import pytest

from kitbooth.cli import main
from storage import LocalArtifactStore
from storage.database import Database
from tests.storage.test_backup import _fill, _rows


@pytest.fixture
def data_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no stray .env
    for var in ("KITBOOTH_DATABASE_PATH", "KITBOOTH_ARTIFACT_DIR", "KITBOOTH_STORE_URL"):
        monkeypatch.delenv(var, raising=False)

    def use(folder):
        monkeypatch.setenv("KITBOOTH_DATA_DIR", str(folder))
        return folder

    return use


async def test_backup_then_restore_round_trips_rows_and_objects(tmp_path, data_env, capsys):
    src = data_env(tmp_path / "old")
    db = await Database.open(src / "kitbooth.db")
    store = LocalArtifactStore(src / "artifacts")
    try:
        await _fill(db, store)
        before = await _rows(src / "kitbooth.db")
        assert main(["backup", str(tmp_path / "bk"), "--copy-objects"]) == 0  # the bot's connection is open
    finally:
        await db.close()
    out = capsys.readouterr().out
    assert "2 objects listed" in out and "copied" in out, out

    dst = data_env(tmp_path / "new")
    assert main(["restore", str(tmp_path / "bk")]) == 0
    out = capsys.readouterr().out
    assert "2 put back, 2 verified, 0 missing" in out, out
    assert await _rows(dst / "kitbooth.db") == before
    assert sorted(LocalArtifactStore(dst / "artifacts").list("")) == sorted(store.list(""))

    assert main(["restore", str(tmp_path / "bk")]) == 1  # it holds data now
    err = capsys.readouterr().err
    assert err.startswith("kitbooth restore: ") and "--force" in err and len(err.strip().splitlines()) == 1, err
    assert main(["backup", str(tmp_path / "bk")]) == 1
    assert "already holds a backup" in capsys.readouterr().err
