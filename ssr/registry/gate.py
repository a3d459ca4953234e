"""The promotion gate: a challenger replaces the champion only if it is clearly better.

Both models are scored on the same test utterances, so the comparison is paired: McNemar's
exact test looks only at the utterances where exactly one model is right. Before any champion
is consulted, the challenger must beat the strong linear baseline (:mod:`ssr.baseline`) on the
same split by ``baseline_margin``: a network that a logistic regression on the envelope
outperforms is not worth serving, whatever the champion is. When the challenger's evaluation
has per-session scores, such a refusal names the sessions where it loses to the baseline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import binomtest

_EPS = 1e-9  # accuracies are ratios of counts: a gain equal to the margin must pass
MAX_NAMED_SESSIONS = 20  # a reason (a version tag) names at most this many losing sessions
MAX_SESSIONS_TAG = 1000  # characters of the gate.losing_sessions tag


@dataclass(frozen=True)
class McNemarResult:
    """Paired comparison counts and the one-sided exact p-value.

    ``n01``: challenger right, champion wrong; ``n10``: challenger wrong, champion right.
    ``p_value`` tests H1 "the challenger is right more often" (``binomtest(n01, n01 + n10)``).
    """

    n: int
    n01: int
    n10: int
    p_value: float
    challenger_accuracy: float
    champion_accuracy: float


def _as_bool_vector(values: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of booleans, got shape {arr.shape}")
    if arr.dtype != bool:
        raise ValueError(f"{name} must be boolean, got dtype {arr.dtype}")
    return arr


def mcnemar_exact(challenger_correct: np.ndarray, champion_correct: np.ndarray) -> McNemarResult:
    """McNemar's exact test on paired per-utterance correctness (one-sided, challenger better)."""
    a = _as_bool_vector(challenger_correct, "challenger_correct")
    b = _as_bool_vector(champion_correct, "champion_correct")
    if a.shape != b.shape:
        raise ValueError(
            f"paired predictions differ in length: challenger {a.size}, champion {b.size}"
        )
    if a.size == 0:
        raise ValueError("no paired predictions to compare")
    n01 = int(np.sum(a & ~b))
    n10 = int(np.sum(~a & b))
    discordant = n01 + n10
    p = 1.0 if discordant == 0 else float(binomtest(n01, discordant, 0.5, "greater").pvalue)
    return McNemarResult(
        n=int(a.size),
        n01=n01,
        n10=n10,
        p_value=p,
        challenger_accuracy=float(a.mean()),
        champion_accuracy=float(b.mean()),
    )


@dataclass(frozen=True)
class GateDecision:
    """Whether to promote, why, and the numbers behind it (recorded as version tags)."""

    promote: bool
    reason: str
    challenger_accuracy: float
    min_accuracy: float
    margin: float
    p_threshold: float
    champion_accuracy: float | None = None
    baseline_accuracy: float | None = None
    baseline_margin: float | None = None
    n: int | None = None
    n01: int | None = None
    n10: int | None = None
    p_value: float | None = None
    losing_sessions: tuple[str, ...] = ()  # below the baseline, when that refused it

    @property
    def gain(self) -> float | None:
        """Challenger accuracy minus champion accuracy (None without a champion)."""
        if self.champion_accuracy is None:
            return None
        return self.challenger_accuracy - self.champion_accuracy

    def to_tags(self, prefix: str = "gate.") -> dict[str, str]:
        """The decision as string tags; absent numbers are left out."""
        tags = {f"{prefix}decision": "promote" if self.promote else "reject"}
        for key, value in asdict(self).items():
            if key == "promote" or value is None or key == "losing_sessions":
                continue
            tags[f"{prefix}{key}"] = f"{value:.6g}" if isinstance(value, float) else str(value)
        if self.gain is not None:
            tags[f"{prefix}gain"] = f"{self.gain:.6g}"
        if self.losing_sessions:
            names = ",".join(self.losing_sessions)
            if len(names) > MAX_SESSIONS_TAG:
                names = names[: MAX_SESSIONS_TAG - 15] + "...[truncated]"
            tags[f"{prefix}losing_sessions"] = names
        return tags


def sessions_below_baseline(
    per_session: Mapping[str, Mapping[str, Any]],
) -> list[tuple[str, float, float]]:
    """``(session, accuracy, baseline accuracy)`` of the sessions where the accuracy is below
    the baseline's, by session name (``metrics.json``'s ``per_session``)."""
    return [
        (name, float(s["accuracy"]), float(s["baseline_accuracy"]))
        for name, s in sorted(per_session.items())
        if s.get("baseline_accuracy") is not None and s["accuracy"] < s["baseline_accuracy"]
    ]


def _losing_clause(losing: list[tuple[str, float, float]]) -> str:
    named = [f"{n} ({a:.4f} vs {b:.4f})" for n, a, b in losing[:MAX_NAMED_SESSIONS]]
    more = len(losing) - len(named)
    return f"; loses to it on sessions {', '.join(named)}" + (
        f" and {more} more" if more > 0 else ""
    )


def decide(
    challenger_correct: np.ndarray,
    champion_correct: np.ndarray | None,
    *,
    min_accuracy: float,
    margin: float,
    p_value: float,
    baseline_accuracy: float | None = None,
    baseline_margin: float = 0.0,
    per_session: Mapping[str, Mapping[str, Any]] | None = None,
) -> GateDecision:
    """Apply the gate: minimum accuracy, the baseline, then (with a champion) margin and
    McNemar significance.

    The challenger must reach ``min_accuracy`` and, when ``baseline_accuracy`` is given, be
    strictly more accurate than the baseline by at least ``baseline_margin``. Without a
    champion that promotes it. With one, it must also be strictly more accurate, by at least
    ``margin``, and significantly better.
    """
    challenger = _as_bool_vector(challenger_correct, "challenger_correct")
    if challenger.size == 0:
        raise ValueError("no test predictions for the challenger")
    acc = float(challenger.mean())
    common: dict[str, Any] = {
        "min_accuracy": min_accuracy,
        "margin": margin,
        "p_threshold": p_value,
    }
    if baseline_accuracy is not None:
        common.update(baseline_accuracy=baseline_accuracy, baseline_margin=baseline_margin)
    if champion_correct is not None:  # the paired numbers are recorded whatever decides
        test = mcnemar_exact(challenger, champion_correct)
        common.update(
            champion_accuracy=test.champion_accuracy,
            n=test.n,
            n01=test.n01,
            n10=test.n10,
            p_value=test.p_value,
        )
    over = None if baseline_accuracy is None else acc - baseline_accuracy
    if acc < min_accuracy:
        reason = f"accuracy {acc:.4f} below minimum {min_accuracy:.4f}"
        promote = False
    elif over is not None and (over <= 0 or over < baseline_margin - _EPS):
        reason = (
            f"accuracy {acc:.4f} does not beat the linear baseline ({baseline_accuracy:.4f}) "
            f"by margin {baseline_margin:.4f}"
        )
        losing = sessions_below_baseline(per_session or {})
        if losing:
            reason += _losing_clause(losing)
            common["losing_sessions"] = tuple(n for n, _, _ in losing)
        promote = False
    elif champion_correct is None:
        reason = "no champion yet; minimum accuracy reached"
        promote = True
    elif (gain := acc - test.champion_accuracy) <= 0 or gain < margin - _EPS:
        reason = f"accuracy gain {gain:+.4f} does not exceed the champion by margin {margin:.4f}"
        promote = False
    elif test.p_value >= p_value:
        reason = f"not significantly better: McNemar p={test.p_value:.4g} >= {p_value:g}"
        promote = False
    else:
        reason = f"better by {gain:+.4f}, McNemar p={test.p_value:.4g} < {p_value:g}"
        promote = True
    return GateDecision(promote, reason, acc, **common)
