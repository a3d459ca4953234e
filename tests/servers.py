"""Real servers on loopback for tests: the S3-compatible moto server and an MLflow server."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import boto3

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(
    url: str, proc: subprocess.Popen, timeout: float = 60.0, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            detail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(
                f"server exited with {proc.returncode} before {url} answered\n{detail}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class S3Server:
    """A running ``python -m moto.server``."""

    endpoint: str
    proc: subprocess.Popen
    env: dict[str, str] = field(default_factory=dict)

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, **_boto_kwargs())

    def keys(self, bucket: str, contains: str = "") -> list[str]:
        """Every key in ``bucket`` (all pages: one listing stops at 1,000) that has
        ``contains`` in it; the session's buckets fill up with every test's artifacts."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [
            o["Key"] for page in pages for o in page.get("Contents", []) if contains in o["Key"]
        ]

    def create_bucket(self, name: str) -> str:
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)
        return name


def _boto_kwargs() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }


def start_s3(workdir: Path, port: int | None = None) -> S3Server:
    port = port or free_port()
    log = workdir / f"moto-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **S3_ENV},
    )
    endpoint = f"http://127.0.0.1:{port}"
    wait_http(f"{endpoint}/moto-api/", proc, log=log)
    env = {**S3_ENV, "AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint}
    return S3Server(endpoint=endpoint, proc=proc, env=env)


@dataclass
class MlflowServer:
    """A running ``mlflow server`` (SQLite backend, artifacts proxied to S3)."""

    uri: str
    proc: subprocess.Popen
    port: int
    backend: str
    artifacts: str
    env: dict[str, str]
    log: Path

    def restart(self) -> None:
        """Start the server again on the same port and store (after :func:`stop`)."""
        self.proc = _launch_mlflow(self.port, self.backend, self.artifacts, self.env, self.log)


def _launch_mlflow(
    port: int, backend: str, artifacts: str, env: dict[str, str], log: Path
) -> subprocess.Popen:
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            artifacts,
            "--workers",
            "1",
        ],
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
        start_new_session=True,
    )
    wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=120, log=log)
    return proc


def start_mlflow(workdir: Path, s3: S3Server, bucket: str = "mlflow-artifacts") -> MlflowServer:
    s3.create_bucket(bucket)
    port = free_port()
    backend = f"sqlite:///{workdir / f'mlflow-{port}.db'}"
    artifacts = f"s3://{bucket}/artifacts"
    env = {**S3_ENV, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint}
    log = workdir / f"mlflow-{port}.log"
    proc = _launch_mlflow(port, backend, artifacts, env, log)
    return MlflowServer(f"http://127.0.0.1:{port}", proc, port, backend, artifacts, env, log)


def stop_mlflow(server: MlflowServer) -> None:
    """Stop the server and its workers (it runs in its own process group)."""
    if server.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, 15)
        try:
            server.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, 9)
            server.proc.wait(10)
