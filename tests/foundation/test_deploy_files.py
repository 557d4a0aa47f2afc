"""``docker compose config``-style checks of the deployment files (no Docker engine here), and that the
configuration is documented everywhere a newcomer looks (.env.example, README)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from kitbooth.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
ENV_VARS = {f"KITBOOTH_{name.upper()}" for name in Settings.model_fields}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services_and_references(compose):
    services = compose["services"]
    assert {"redis", "bot", "worker"} <= set(services)
    declared_volumes = set(compose.get("volumes", {}))
    targets = set(re.findall(r"^FROM \S+ AS (\w+)", (ROOT / "Dockerfile").read_text(), re.M))
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            assert source in declared_volumes or source.startswith((".", "/")), f"{name}: undeclared {source}"
        if "build" in svc:
            assert svc["build"]["target"] in targets, f"{name}: Dockerfile has no target {svc['build']['target']}"
        for var in svc.get("environment", {}):
            assert var in ENV_VARS, f"{name}: {var} is not a KitBooth setting"
    assert "--appendonly" in services["redis"]["command"]  # the queue must survive a Redis restart
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert "gpu" in gpu["capabilities"]


def test_dockerfile_copies_existing_paths():
    for src in re.findall(r"^COPY (\S+) ", (ROOT / "Dockerfile").read_text(), re.M):
        assert (ROOT / src).exists(), src


def test_env_example_documents_every_setting():
    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"\b(KITBOOTH_[A-Z0-9_]+)=", text))
    assert documented == ENV_VARS


def test_readme_config_table_lists_every_setting():
    text = (ROOT / "README.md").read_text()
    missing = sorted(v for v in ENV_VARS if f"`{v}`" not in text)
    assert not missing, f"README configuration table misses {missing}"
