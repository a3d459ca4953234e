"""Build the CPU image with podman and run the preprocess component in it on host data.

Slow: the base image comes from Debian packages the first time (kept for later runs), then the
dependency install. Needs podman; making the base image also needs root and debootstrap unless
the base image already exists. With podman's vfs driver every cached layer is a full copy of the
file system (about 2 GB each here), so the build keeps no intermediate layers and the test image
is removed afterwards: a few runs would otherwise fill the disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"  # docker/Dockerfile's BASE_IMAGE
# Another tag lets two checkouts run this test side by side on one podman store.
IMAGE = os.environ.get("SSR_TEST_IMAGE", "localhost/ssr/ssr:container-test")
# Flags that let podman run inside an unprivileged CI container (no overlayfs, no systemd).
PODMAN = os.environ.get(
    "SSR_TEST_PODMAN", "podman --storage-driver=vfs --runtime runc --cgroup-manager=cgroupfs"
)
PODMAN_FLAGS = os.environ.get(
    "SSR_TEST_PODMAN_FLAGS", "--network=host --ulimit nofile=20000:20000 --ulimit nproc=1000:1000"
)
SSR = [sys.executable, "-m", "ssr"]

pytestmark = [
    pytest.mark.container,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman not on PATH"),
]


def run(cmd: list[str], timeout: float = 3000, **kwargs: object) -> subprocess.CompletedProcess:
    """Run a command; on failure, fail the test with the tail of its output."""
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    if out.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {out.returncode}\n{(out.stdout + out.stderr)[-4000:]}")
    return out


def podman(*args: str) -> list[str]:
    return [*PODMAN.split(), *args]


def make(*args: str) -> list[str]:
    bin_dir = str(Path(sys.executable).parent)
    return [
        "make",
        "--no-print-directory",
        f"DOCKER={PODMAN}",
        f"BIN={bin_dir}",
        *args,
    ]


def ensure_base_image() -> None:
    exists = subprocess.run(podman("image", "exists", BASE_IMAGE), check=False).returncode == 0
    if exists:
        return
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        pytest.skip(f"base image {BASE_IMAGE} missing and cannot debootstrap (needs root)")
    run([str(REPO / "docker/build-base.sh"), BASE_IMAGE], env={**os.environ, "DOCKER": PODMAN})


def trust_local_ca() -> None:
    """Behind a TLS-intercepting proxy pip needs the host's CA bundle inside the build."""
    for var in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        bundle = os.environ.get(var)
        if bundle and Path(bundle).is_file():
            shutil.copy(bundle, REPO / "docker/ca-certificates/local-ca.crt")
            return


@pytest.fixture(scope="module")
def built_commit() -> str:
    """The commit the image is labelled with (HEAD when the build starts)."""
    return run(["git", "rev-parse", "HEAD"], cwd=REPO).stdout.strip()


def remove_test_image() -> None:
    subprocess.run(podman("rmi", "--force", "--ignore", IMAGE), capture_output=True, check=False)


def require_free_disk(gigabytes: float) -> None:
    """Fail early, saying why, when podman's storage cannot hold a build."""
    info = json.loads(run(podman("info", "--format", "json")).stdout)
    root = Path(info["store"]["graphRoot"])
    while not root.exists():
        root = root.parent
    free = shutil.disk_usage(root).free / 1e9
    if free < gigabytes:
        need = f"the image build needs about {gigabytes:.0f} GB"
        pytest.fail(f"podman storage {root} has {free:.1f} GB free; {need}")


@pytest.fixture(scope="module")
def image(built_commit: str) -> Iterator[str]:
    ensure_base_image()
    trust_local_ca()
    run(make("wheelhouse"), cwd=REPO)
    remove_test_image()
    require_free_disk(12)
    # --layers=false: one commit per stage instead of a full vfs copy per instruction.
    flags = f"{PODMAN_FLAGS} --layers=false"
    build = make("image-cpu", f"IMAGE={IMAGE}", f"DOCKER_BUILD_FLAGS={flags}")
    try:
        run([*build, "VERSION=9.9.9", f"GIT_COMMIT={built_commit}"], cwd=REPO)
        yield IMAGE
    finally:
        remove_test_image()


def test_image_metadata_and_contents(image: str, built_commit: str) -> None:
    info = json.loads(run(podman("image", "inspect", image)).stdout)[0]
    config = info["Config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == "9.9.9"
    assert labels["org.opencontainers.image.revision"] == built_commit
    assert config["User"] == "1000:1000"
    assert config["Entrypoint"] == ["ssr-entrypoint"]
    flags = PODMAN_FLAGS.split()
    # A program as first argument runs as is (how kfp.local.DockerRunner starts components).
    probe = "id -u; test -w $HOME && echo home-writable; "
    probe += "python3 -c 'import torch; print(torch.__version__)'"
    uid, writable, torch_version = run(
        podman("run", "--rm", *flags, image, "sh", "-c", probe)
    ).stdout.split()
    assert uid == "1000", "the image runs as uid 1000 by default"
    assert writable == "home-writable"
    assert torch_version.endswith("+cpu"), f"CPU image got torch {torch_version}"
    # No build tools, apt lists or pip caches left behind (looked at as root to see everything).
    leftovers = (
        "for t in gcc cc g++ make; do command -v $t; done; "
        "ls /var/lib/apt/lists; find / -xdev -type d -path '*/.cache/pip' 2>/dev/null; true"
    )
    out = run(podman("run", "--rm", *flags, "--user", "0", image, "sh", "-c", leftovers))
    assert out.stdout.split() == [], f"left in the image: {out.stdout.split()}"
    version = run(podman("run", "--rm", *flags, image, "--version"))
    assert version.stdout.strip().startswith("ssr ")


def test_preprocess_component_in_image(image: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    outputs = tmp_path / "outputs"
    synth = [*SSR, "data", "synth", "--out", str(data), "--vocab", "3", "--per-word", "4"]
    synth += ["--sessions", "3", "--train-sessions", "1", "--duration", "0.5", "1.0"]
    run(synth)
    run(["chmod", "-R", "a+rX", str(data)])  # the container user reads it

    run(
        make(
            "component-local",
            "COMPONENT=preprocess",
            f"IMAGE={image}",
            f"DATA_DIR={data}",
            f"OUTPUTS_DIR={outputs}",
            f"DOCKER_RUN_FLAGS={PODMAN_FLAGS}",
        ),
        cwd=REPO,
    )

    processed = outputs / "processed"
    manifest = json.loads((processed / "manifest.json").read_text())
    assert len(manifest["labels"]) == 3
    for split in ("train", "val", "test"):
        features = np.load(processed / f"{split}_features.npy", mmap_mode="r")
        index = np.load(processed / f"{split}_index.npy")
        assert features.ndim == 3 and features.shape[1] == 8
        assert len(index) > 0 and int((index[:, 0] + index[:, 1]).max()) <= len(features)
        assert np.isfinite(features).all()
    if os.geteuid() == 0:
        # The component ran as the image's non-root user: its files belong to uid 1000.
        assert (processed / "manifest.json").stat().st_uid == 1000

    # Same code, same data: the container's features equal the host's.
    host = tmp_path / "host_processed"
    run(
        [
            *SSR,
            "preprocess",
            f"data.train_dir={data}/train",
            f"data.val_dir={data}/val",
            f"data.test_dir={data}/test",
            f"data.processed_dir={host}",
        ]
    )
    for split in ("train", "val", "test"):
        np.testing.assert_allclose(
            np.load(processed / f"{split}_features.npy"),
            np.load(host / f"{split}_features.npy"),
            rtol=1e-5,
            atol=1e-5,
        )
