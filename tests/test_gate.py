"""The promotion gate: McNemar's exact test and the decision table."""

from __future__ import annotations

import numpy as np
import pytest

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
