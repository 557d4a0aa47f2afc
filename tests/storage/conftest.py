"""A real S3 server on loopback for the store tests: moto's server mode, a subprocess per session.

``s3_server`` accepts any credentials (the conformance suite); ``s3_auth_server`` checks them (IAM on), so a
wrong key or secret is refused the way AWS, MinIO and R2 refuse it. Each test gets its own bucket.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from storage import S3ArtifactStore

_POLICY = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}'


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key_id: str
    secret_access_key: str

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key)

    def new_bucket(self) -> str:
        name = f"kb-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def store(self, bucket: str, prefix: str = "", **options) -> S3ArtifactStore:
        options = {"access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key,
                   "timeout_s": 10.0, "retries": 1, **options}
        return S3ArtifactStore(bucket, prefix, endpoint=self.endpoint, **options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_moto(log: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2):
                return proc, endpoint
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"moto server did not start within 60 s: {log.read_text(errors='replace')[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    proc, endpoint = _start_moto(tmp_path_factory.mktemp("moto") / "moto.log", {})
    try:
        yield S3Server(endpoint, "kitbooth-test", "kitbooth-test-secret")
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def s3_auth_server(tmp_path_factory) -> Iterator[S3Server]:
    # The first 3 requests are let through unsigned: they create the IAM user, its key and its policy.
    proc, endpoint = _start_moto(tmp_path_factory.mktemp("moto-auth") / "moto.log",
                                 {"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    try:
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="kitbooth")
        key = iam.create_access_key(UserName="kitbooth")["AccessKey"]
        iam.put_user_policy(UserName="kitbooth", PolicyName="s3", PolicyDocument=_POLICY)
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        _stop(proc)


@pytest.fixture
def s3_bucket(s3_server) -> str:
    return s3_server.new_bucket()


@pytest.fixture
def s3_store(s3_server, s3_bucket) -> S3ArtifactStore:
    """A store under a prefix of a fresh bucket (the prefix proves keys are relative to it)."""
    return s3_server.store(s3_bucket, "kitbooth/test")
