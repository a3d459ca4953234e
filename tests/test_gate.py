"""The promotion gate: McNemar's exact test and the decision table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from ssr.errors import DataError
from ssr.registry.gate import decide, mcnemar_exact


def paired(n01: int, n10: int, both: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Correctness vectors with the given discordant and concordant counts."""
    challenger = [True] * n01 + [False] * n10 + [True] * both + [False] * neither
    champion = [False] * n01 + [True] * n10 + [True] * both + [False] * neither
    return np.array(challenger), np.array(champion)


def test_mcnemar_known_value() -> None:
    a, b = paired(n01=10, n10=2, both=30, neither=8)
    result = mcnemar_exact(a, b)
    assert (result.n, result.n01, result.n10) == (50, 10, 2)
    # P(X >= 10 | X ~ Bin(12, 1/2)) = (C(12,10) + C(12,11) + C(12,12)) / 2^12 = 79 / 4096
    assert result.p_value == pytest.approx(79 / 4096)
    assert result.challenger_accuracy == pytest.approx(40 / 50)
    assert result.champion_accuracy == pytest.approx(32 / 50)


def test_mcnemar_is_one_sided() -> None:
    worse = mcnemar_exact(*paired(n01=2, n10=10, both=0, neither=0))
    # P(X >= 2 | X ~ Bin(12, 1/2)) = 1 - (1 + 12) / 4096
    assert worse.p_value == pytest.approx(1 - 13 / 4096)
    none = mcnemar_exact(*paired(n01=0, n10=0, both=5, neither=5))
    assert none.p_value == 1.0


def test_mcnemar_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar_exact(np.ones(3, bool), np.ones(4, bool))
    with pytest.raises(ValueError, match="boolean"):
        mcnemar_exact(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="no paired"):
        mcnemar_exact(np.zeros(0, bool), np.zeros(0, bool))


GATE = {"min_accuracy": 0.5, "margin": 0.02, "p_value": 0.05}


@pytest.mark.parametrize(
    ("counts", "promote", "reason"),
    [
        ((10, 2, 30, 8), True, "better by"),  # 0.80 vs 0.64, p=0.019
        ((3, 1, 30, 16), False, "not significantly"),  # 0.66 vs 0.62, p=0.31
        ((2, 10, 30, 8), False, "does not exceed"),  # worse
        ((1, 0, 40, 9), False, "not significantly"),  # gain 0.02 meets the margin, p=0.5
        ((10, 2, 5, 33), False, "below minimum"),  # 0.30, below 0.5 even though better
    ],
)
def test_decision_table(counts: tuple[int, int, int, int], promote: bool, reason: str) -> None:
    n01, n10, both, neither = counts
    decision = decide(*paired(n01, n10, both, neither), **GATE)
    assert decision.promote is promote
    assert reason in decision.reason
    tags = decision.to_tags()
    assert tags["gate.decision"] == ("promote" if promote else "reject")
    assert int(tags["gate.n01"]) == n01 and int(tags["gate.n10"]) == n10
    assert float(tags["gate.p_value"]) == pytest.approx(decision.p_value, rel=1e-5)


def test_margin_blocks_small_significant_gain() -> None:
    a, b = paired(n01=12, n10=0, both=380, neither=8)  # gain 0.03, p ~ 2.4e-4
    assert decide(a, b, **GATE).promote
    blocked = decide(a, b, min_accuracy=0.5, margin=0.05, p_value=0.05)
    assert not blocked.promote and "margin" in blocked.reason


def test_first_model_needs_only_minimum_accuracy() -> None:
    good = decide(np.array([True] * 6 + [False] * 4), None, **GATE)
    assert good.promote and good.champion_accuracy is None
    assert "gate.n01" not in good.to_tags()
    bad = decide(np.array([True] * 4 + [False] * 6), None, **GATE)
    assert not bad.promote and "below minimum" in bad.reason


def test_challenger_must_beat_the_linear_baseline() -> None:
    challenger = np.array([True] * 7 + [False] * 3)  # 0.7
    # worse than the baseline: refused even without a champion, and the tags say why
    worse = decide(challenger, None, **GATE, baseline_accuracy=0.8)
    assert not worse.promote and "linear baseline" in worse.reason
    assert worse.to_tags()["gate.baseline_accuracy"] == "0.8"
    # equal is not better; a margin the gain does not reach blocks too
    assert not decide(challenger, None, **GATE, baseline_accuracy=0.7).promote
    assert not decide(challenger, None, **GATE, baseline_accuracy=0.65, baseline_margin=0.1).promote
    assert decide(challenger, None, **GATE, baseline_accuracy=0.6, baseline_margin=0.1).promote
    # with a champion the baseline is checked first
    champion = np.array([False] * 10)
    assert not decide(challenger, champion, **GATE, baseline_accuracy=0.9).promote
    assert decide(challenger, champion, **GATE, baseline_accuracy=0.5).promote


PER_SESSION = {
    "session10": {"num_samples": 8, "accuracy": 0.5, "baseline_accuracy": 0.625},
    "session09": {"num_samples": 8, "accuracy": 0.75, "baseline_accuracy": 0.875},
    "session11": {"num_samples": 4, "accuracy": 1.0, "baseline_accuracy": 0.75},
    "session12": {"num_samples": 4, "accuracy": 0.75},  # no baseline there: never named
}


def test_baseline_refusal_names_the_losing_sessions() -> None:
    challenger = np.array([True] * 7 + [False] * 3)  # 0.7
    worse = decide(challenger, None, **GATE, baseline_accuracy=0.8, per_session=PER_SESSION)
    assert not worse.promote
    assert worse.reason == (
        "accuracy 0.7000 does not beat the linear baseline (0.8000) by margin 0.0000; "
        "loses to it on sessions session09 (0.7500 vs 0.8750), session10 (0.5000 vs 0.6250)"
    )
    assert worse.losing_sessions == ("session09", "session10")
    tags = worse.to_tags()
    assert tags["gate.losing_sessions"] == "session09,session10"
    assert tags["gate.reason"] == worse.reason
    # without per-session scores (an older evaluation) the reason stays as it was
    plain = decide(challenger, None, **GATE, baseline_accuracy=0.8)
    assert plain.reason == (
        "accuracy 0.7000 does not beat the linear baseline (0.8000) by margin 0.0000"
    )
    assert plain.losing_sessions == () and "gate.losing_sessions" not in plain.to_tags()
    # per-session scores change no decision and explain only a refusal for the baseline
    passed = decide(challenger, None, **GATE, baseline_accuracy=0.6, per_session=PER_SESSION)
    assert passed.promote and "session" not in passed.reason
    assert "gate.losing_sessions" not in passed.to_tags()
    low = decide(
        challenger,
        None,
        min_accuracy=0.9,
        margin=0.0,
        p_value=0.05,
        baseline_accuracy=0.8,
        per_session=PER_SESSION,
    )
    assert not low.promote and "below minimum" in low.reason and "session" not in low.reason


def test_many_losing_sessions_are_capped_in_the_reason() -> None:
    per = {
        f"s{i:03d}": {"num_samples": 2, "accuracy": 0.0, "baseline_accuracy": 1.0}
        for i in range(25)
    }
    decision = decide(
        np.array([False, True]),
        None,
        min_accuracy=0.0,
        margin=0.0,
        p_value=0.05,
        baseline_accuracy=1.0,
        per_session=per,
    )
    assert "s019 (0.0000 vs 1.0000) and 5 more" in decision.reason
    assert "s020" not in decision.reason and len(decision.losing_sessions) == 25


class _Artifacts:
    """The two MlflowClient calls ``evaluation_per_session`` makes, over a local folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def list_artifacts(self, run_id: str, path: str) -> list[SimpleNamespace]:
        folder = self.root / run_id / path
        files = sorted(folder.iterdir()) if folder.is_dir() else []
        return [SimpleNamespace(path=f"{path}/{f.name}") for f in files]

    def download_artifacts(self, run_id: str, path: str, dst_path: str) -> str:
        return shutil.copy(self.root / run_id / path, dst_path)


def test_per_session_comes_from_the_registered_evaluation(tmp_path: Path) -> None:
    from ssr.registry.promote import evaluation_per_session

    metrics = {
        "accuracy": 0.7,
        "macro_f1": 0.7,
        "loss": 1.0,
        "labels": ["a"],
        "confusion_matrix": [[1]],
    }
    client: Any = _Artifacts(tmp_path)
    version: Any = SimpleNamespace(name="ssr-emg", version="4", run_id="r1")
    (tmp_path / "r1" / "evaluation").mkdir(parents=True)
    assert evaluation_per_session(client, version) is None  # no metrics.json in the run
    path = tmp_path / "r1" / "evaluation" / "metrics.json"
    path.write_text(json.dumps(metrics))
    assert evaluation_per_session(client, version) is None  # an evaluation from before
    path.write_text(json.dumps({**metrics, "per_session": PER_SESSION}))
    assert evaluation_per_session(client, version) == PER_SESSION
    path.write_text(json.dumps({**metrics, "per_session": {"s1": {"accuracy": "high"}}}))
    with pytest.raises(DataError, match=r"^runs:/r1/evaluation/metrics.json: per_session"):
        evaluation_per_session(client, version)
