"""What the repository must not carry: package-index or mirror hosts in defaults and docs.

pip and apt use what the building machine is configured with; a host written into a default
(Makefile, Dockerfile, scripts) or a doc would send builds somewhere the user did not choose.
The hosts below are spelt in pieces so that ``git grep`` for any of them finds nothing here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Package indexes and Debian archives (the well-known ones and their usual mirror names).
HOSTS = [
    "pypi" + ".org",
    "pythonhosted" + ".org",
    "download" + ".pytorch" + ".org",
    "deb" + ".debian" + ".org",
    "security" + ".debian" + ".org",
    "ftp" + ".debian" + ".org",
    "archive" + ".ubuntu" + ".com",
    "anaconda" + ".org",
]
# A URL whose path looks like a package index or a Debian archive, whatever its host.
INDEX_PATH = re.compile(r"https?://[^\s\"')]+/(simple|whl|debian|ubuntu)(/|\b)", re.I)


def tracked_text_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60
    )
    files = []
    for name in out.stdout.decode().split("\0"):
        path = REPO / name
        if name and path.is_file() and path.stat().st_size < 2_000_000:
            files.append(path)
    return files


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="no git")
def test_no_package_index_or_mirror_host_in_the_repository() -> None:
    found = []
    for path in tracked_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            lowered = line.lower()
            hits = [h for h in HOSTS if h in lowered] + INDEX_PATH.findall(line)
            if hits:
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
    assert found == [], "package-index or mirror hosts:\n" + "\n".join(found)


def test_the_check_finds_a_host() -> None:
    """The patterns are live: each flags a line that names such a host."""
    for host in HOSTS:
        assert host in f"pip install --extra-index-url https://{host}/x torch"
    mirror = "https://mirror.example" + ".net"  # in pieces, so the scan above passes this file
    assert INDEX_PATH.search(f"--index-url {mirror}/pypi/simple")
    assert INDEX_PATH.search(f"deb {mirror}/debian bookworm main")
    assert not INDEX_PATH.search("https://github.com/ssr-emg/ssr")
