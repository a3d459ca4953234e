"""Smoke tests: every benchmark script's quick mode runs, exits 0 and prints its Markdown table."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def run_bench(script: str, *args: str, timeout: int = 300) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout


def table(stdout: str, header_start: str) -> list[list[str]]:
    """The rows (cells) of the Markdown table whose header starts with ``header_start``."""
    lines = stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(f"| {header_start}")]
    assert starts, f"no table with header {header_start!r} in:\n{stdout}"
    i = starts[0]
    assert re.fullmatch(r"\|(-{3}:?\|)+", lines[i + 1].replace(":-", "-")), lines[i + 1]
    rows = []
    for line in lines[i + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    assert rows, "table has no rows"
    return rows


def test_machine_line_and_table_helpers() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from common import Timing, machine_info, markdown_table
    finally:
        sys.path.remove(str(BENCH))
    info = machine_info()
    assert info["cores"] >= 1 and info["torch"]
    text = markdown_table(["a", "b"], [["x", 1.5]])
    assert text.splitlines() == ["| a | b |", "|---|---:|", "| x | 1.5 |"]
    timing = Timing([1.0, 2.0, 3.0, 4.0])
    assert timing.percentile(50) == 2.5 and timing.percentile(100) == 4.0


def test_dataloader_quick() -> None:
    out = run_bench("bench_dataloader.py", "--quick")
    assert out.startswith("machine: ")
    rows = table(out, "num_workers")
    assert {r[0] for r in rows} == {"0", "2"}
    assert all(float(r[4].rstrip("x").replace(",", "")) > 0 for r in rows)


def test_inference_quick() -> None:
    out = run_bench("bench_inference.py", "--quick")
    rows = table(out, "model | batch")
    single = next(r for r in rows if r[1] == "1")
    assert 0 < float(single[2]) <= float(single[3])  # p50 <= p95
    http = table(out, "model | rows per request")  # the same model behind ssr serve
    assert [r[1] for r in http] == ["1", "8"]
    assert 0 < float(http[0][2]) <= float(http[0][3])


def test_quality_quick() -> None:
    out = run_bench("bench_quality.py", "--quick", "--jobs", "2", "--tune-seeds")
    rows = table(out, "profile | data seed | role")
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("displaced", "1", "held out"), ("speaker", "1", "held out")
    ]  # fmt: skip
    for r in rows:
        assert all(0.0 <= float(v) <= 100.0 for v in r[3:6])  # plain, strong, small
        assert float(r[6]) == pytest.approx(float(r[5]) - float(r[4]), abs=0.11)  # worst gain
        assert r[7] == "0.0"  # one training seed: no spread
    summary = table(out, "data sets | count")
    assert [r[0] for r in summary] == ["held out", "all"] and summary[1][1] == "2"


def test_quality_sentences_quick(tmp_path: Path) -> None:
    out = run_bench(
        "bench_quality.py", "--task", "sentences", "--quick", "--seeds", "1", "2", "--jobs", "2",
        "--decoding", "decoding.beam_size=8", "--json", str(tmp_path / "q.json"),
    )  # fmt: skip
    assert out.startswith("machine: ")
    rows = table(out, "data seed | role")
    assert [(r[0], r[1]) for r in rows] == [("1", "tuned"), ("2", "held out")]
    for r in rows:
        numbers = [float(v) for v in r[2:12] if v != "n/a"]
        assert numbers and all(v >= 0 for v in numbers)
    summary = table(out, "measure | target")
    assert len(summary) == 10 and summary[0][1] == "<= 15"
    assert all(
        c.endswith(("PASS", "MISS"))
        for r in summary
        if r[1] != "reported"
        for c in r[2:]
        if c[0].isdigit()
    )
    kept = json.loads((tmp_path / "q.json").read_text())
    assert [r["seed"] for r in kept["runs"]] == [1, 2]
    assert kept["runs"][0]["metrics"]["decoding"]["beam_size"] == 8


def test_train_quick() -> None:
    out = run_bench("bench_train.py", "--quick")
    assert "machine: " in out
    rows = table(out, "device")
    assert rows[0][0].startswith("cpu") and float(rows[0][3]) > 0


def test_preprocess_short() -> None:
    out = run_bench("bench_preprocess.py", "--minutes", "0.2")
    rows = table(out, "implementation")
    assert len(rows) == 2
    rates = table(out, "features | window / hop")
    assert [r[0] for r in rates] == ["configured", "sentence presets"]
    assert rates[1][1] == "32 / 10" and 95 < float(rates[1][3]) <= 100  # 100 frames/s
    assert all(float(r[4].rstrip("x").replace(",", "")) > 0 for r in rates)
    assert rates[1][5].split()[0] in ("PASS", "MISS")
    runs = table(out, "data set")
    assert len(runs) == 2 and float(runs[1][0]) > float(runs[0][0])
    assert all(float(r[3]) > 50 for r in runs)  # peak RSS in MiB of a real process


def test_tune_quick(tmp_path: Path) -> None:
    out = run_bench("bench_tune.py", "--quick", "--threads", "1", "--workdir", str(tmp_path))
    rows = table(out, "data seed")
    assert [r[1] for r in rows] == ["tuned", "held out"]
    for row in rows:
        complete, pruned, failed = (int(x) for x in row[3].split(" / "))
        assert complete + pruned == 3 and failed == 0
        # the study includes the preset's own values, so it is never worse on validation
        assert float(row[6]) <= float(row[7]) + 1e-9


@pytest.mark.slow
def test_pipeline_quick(tmp_path: Path) -> None:
    out = run_bench("bench_pipeline.py", "--quick", "--workdir", str(tmp_path), timeout=900)
    rows = table(out, "step")
    assert [r[0] for r in rows][:4] == ["preprocess", "train", "evaluate", "register"]
    assert float(rows[-1][1]) > 0
