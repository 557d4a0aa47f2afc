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


def _stages() -> dict[str, str]:
    """Dockerfile stage name -> its lines (the base stage included)."""
    text = (ROOT / "Dockerfile").read_text()
    parts = re.split(r"^FROM \S+ AS (\w+)\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_images_and_test_venvs_install_each_process_with_the_same_recipe():
    """The Dockerfile's targets and scripts/test-processes both run scripts/install-process, and nothing else
    installs packages: CI's .venv-bot / .venv-worker are built exactly as the images are."""
    stages = _stages()
    for target in ("bot", "worker"):
        runs = re.findall(r"^RUN (.+)$", stages[target], re.M)
        assert len(runs) == 1 and re.search(rf"\bsh scripts/install-process {target}$", runs[0]), runs
    assert "pip" not in "".join(re.findall(r"^RUN .+$", "".join(stages.values()), re.M))
    assert "COPY scripts/install-process ./scripts/install-process" in stages["base"]
    # The worker image pins the same torch release as the CPU venvs of the test command.
    docker_torch = re.search(r"^ARG TORCH_VERSION=(\S+)$", stages["worker"], re.M).group(1)
    assert 'TORCH_SPEC="torch==${TORCH_VERSION}"' in stages["worker"]
    for script in ("scripts/test", "scripts/test-processes"):
        cpu = re.search(r"torch==([\w.]+)\+cpu", (ROOT / script).read_text())
        assert cpu and cpu.group(1) == docker_torch, f"{script} pins another torch than the worker image"
    tests = (ROOT / "scripts" / "test-processes").read_text()
    assert re.search(r'quiet sh scripts/install-process "\$1"', tests)
    assert 'docker_context "$context"' in tests  # built from the files the Dockerfile copies
    assert "process_venv bot" in tests and "process_venv worker" in tests
    recipe = (ROOT / "scripts" / "install-process").read_text()
    assert not re.search(r"install\s+(-e|--editable)\b", recipe), "the images install kitbooth non-editable"
    assert '$PIP install ".[bot]"' in recipe and '$PIP install ".[worker]"' in recipe


def test_process_venvs_are_ignored_by_git_and_docker():
    gitignore = (ROOT / ".gitignore").read_text().split()
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    for venv in (".venv-bot", ".venv-worker"):
        assert f"/{venv}/" in gitignore and venv in dockerignore


def test_compose_healthchecks_volumes_replicas_and_the_s3_profile(compose):
    services = compose["services"]
    for name in ("redis", "bot", "worker", "minio"):
        check = services[name]["healthcheck"]["test"]
        assert check[0] == "CMD", (name, check)
    for name in ("bot", "worker"):  # the process's own /readyz, on the port its settings serve it on
        svc = services[name]
        port = svc["environment"]["KITBOOTH_HEALTH_PORT"]
        assert svc["healthcheck"]["test"][1:] == ["kitbooth", "health", "--probe", f"http://127.0.0.1:{port}/readyz"]
        assert svc["env_file"] == [{"path": ".env", "required": False}]  # one .env for every service
        assert "kitbooth-data:/data" in svc["volumes"]
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "redis-data:/data" in services["redis"]["volumes"]
    worker = services["worker"]
    assert "hf-cache:/models" in worker["volumes"] and "replicas" in worker["deploy"]
    assert worker["environment"]["KITBOOTH_DEVICE"] == "cuda"
    assert "profiles" not in worker and "profiles" not in services["bot"]
    for name in ("minio", "minio-bucket"):  # optional: only with `--profile s3`
        assert services[name]["profiles"] == ["s3"]
    assert "minio-data:/data" in services["minio"]["volumes"]


def test_each_image_runs_as_non_root_and_installs_only_its_own_extra():
    stages = _stages()
    assert re.search(r"^RUN useradd .*\bkitbooth\b", stages["base"], re.M)
    recipe = (ROOT / "scripts" / "install-process").read_text()
    branches = dict(re.findall(r"^  (bot|worker)\)\n(.*?);;", recipe, re.M | re.S))
    assert '".[worker]"' not in branches["bot"] and "torch" not in branches["bot"].lower()  # the bot: no torch
    assert '".[bot]"' not in branches["worker"]
    for target in ("bot", "worker"):
        users = re.findall(r"^USER (\S+)$", stages[target], re.M)
        assert users == ["kitbooth"], (target, users)
        lines = stages[target].splitlines()
        assert lines.index("USER kitbooth") > next(i for i, ln in enumerate(lines) if ln.startswith("RUN "))
    assert "TORCH" not in stages["bot"] and "HF_HOME" not in stages["bot"]
