"""Docs that cannot rot: every ``bash`` block of README.md and docs/*.md runs, or says why not.

A block that cannot run on a CPU machine without a cluster (or takes minutes) has the line
``<!-- not-run: REASON -->`` right above its fence; the reason names what it needs and the test
that covers the same path. Every other block runs here with ``bash -euo pipefail`` in a scratch
copy of the project (``.venv`` linked to this interpreter's environment, ``.venv/bin`` first on
PATH, W&B offline, one thread), each block on its own, so blocks are self-contained and small.
Also checked: relative links and their anchors, and the pipeline DAG picture against a fresh
compile.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"^<!-- not-run: (\S.*\S) -->$")
FENCE = re.compile(r"^(\s*)```(\S*)")
SHELL_INFOS = {"sh", "shell", "console", "zsh", "shell-session"}
# What a block may use from the project; everything else stays out of the scratch copy.
COPIED = ["Makefile", "pyproject.toml", "constraints.txt", "README.md"]
COPIED_DIRS = ["configs", "components", "pipelines", "benchmarks", "docs", "k8s", "docker"]
BLOCK_TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    """A fenced code block: where it is, its info string, its text and its not-run reason."""

    path: Path
    line: int  # 1-based line of the opening fence
    info: str
    indent: str
    code: str
    not_run: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, with the marker line above it (if any)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        above = lines[start - 1] if start else ""
        marker = NOT_RUN.match(above)
        blocks.append(
            Block(
                path,
                start + 1,
                m.group(2),
                m.group(1),
                "\n".join(body) + "\n",
                marker.group(1) if marker else None,
            )
        )
        i += 1
    return blocks


BASH = [b for p in DOCS for b in code_blocks(p) if b.info == "bash"]
RUNNABLE = [b for b in BASH if b.not_run is None]


def test_doc_files_found() -> None:
    assert (REPO / "README.md") in DOCS and len(DOCS) > 5
    assert len(RUNNABLE) >= 4, "most runnable examples were marked not-run"


def test_shell_blocks_are_bash_at_column_zero_and_markers_stand_above_fences() -> None:
    """Other shell info strings or indented fences would escape the runner."""
    for path in DOCS:
        for block in code_blocks(path):
            assert block.info not in SHELL_INFOS, f"{block.where}: write shell as ```bash"
            if block.info == "bash":
                assert not block.indent, f"{block.where}: indented ```bash fence"
        lines = path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            if line.startswith("<!--") and "not-run" in line:
                assert NOT_RUN.match(line), f"{path.name}:{n + 1}: malformed marker {line!r}"
                nxt = lines[n + 1] if n + 1 < len(lines) else ""
                assert nxt == "```bash", f"{path.name}:{n + 1}: marker not above a ```bash fence"


def _scratch(root: Path) -> Path:
    work = root / "project"
    work.mkdir()
    for name in COPIED:
        shutil.copy2(REPO / name, work / name)
    ignore = shutil.ignore_patterns("__pycache__", "wheelhouse", "*.env", "*.crt")
    for name in COPIED_DIRS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, work / name, ignore=ignore)
    (work / ".venv").symlink_to(Path(sys.prefix))
    # `make` targets depend on setup (.venv/bin/ssr newer than these): never reinstall here.
    for name in ("pyproject.toml", "constraints.txt"):
        os.utime(work / name, (0, 0))
    return work


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.where for b in RUNNABLE])
def test_bash_block_runs(block: Block, tmp_path: Path) -> None:
    work = _scratch(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "WANDB_"))}
    env.update(
        PATH=f"{work / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        HOME=str(tmp_path),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        MPLBACKEND="Agg",
        SSR_PROGRESS="0",
    )
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.code],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, f"{block.where} exited {proc.returncode}:\n{block.code}\n{tail}"


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors, fenced = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"^#{1,6} ", line):
            anchors.add(github_anchor(line.lstrip("#")))
    return anchors


def test_relative_links_and_anchors_exist() -> None:
    link = re.compile(r"\]\(([^)\s]+)\)")
    for path in DOCS:
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
        for target in link.findall(text):
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            assert dest.exists(), f"{path.name}: link to missing {target}"
            if anchor and dest.suffix == ".md":
                assert anchor in _anchors(dest), f"{path.name}: no heading for {target}"


def test_pipeline_dag_picture_matches_a_fresh_compile(tmp_path: Path) -> None:
    """`make docs` output is checked in; a changed pipeline without `make docs` fails here."""
    from pipelines.compile import compile_pipeline
    from pipelines.dag import END, START, load_pipeline_spec, region

    compiled = compile_pipeline(tmp_path / "p.yaml", image="registry.example.com/ml/ssr:0.1.0")
    expected = region(load_pipeline_spec(compiled))
    assert "subgraph" in expected and "on exit" in expected
    for path in (REPO / "docs" / "pipeline-dag.md", REPO / "README.md"):
        text = path.read_text(encoding="utf-8")
        found = text[text.index(START) + len(START) + 1 : text.index(END)]
        assert found == expected, f"{path.name}: pipeline DAG is stale; run `make docs`"
