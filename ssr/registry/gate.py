"""The promotion gate: a challenger replaces the champion only if it is clearly better.

Both models are scored on the same test utterances, so the comparison is paired: McNemar's
exact test looks only at the utterances where exactly one model is right. Before any champion
is consulted, the challenger must beat the strong linear baseline (:mod:`ssr.baseline`) on the
same split by ``baseline_margin``: a network that a logistic regression on the envelope
outperforms is not worth serving, whatever the champion is. When the challenger's evaluation
has per-session scores, such a refusal names the sessions where it loses to the baseline.

For ``task: sentences`` (:func:`decide_sentences`) the same steps run on word error rates
(lower is better) with the paired bootstrap of :mod:`ssr.sentences.significance` over the
utterances in place of McNemar's test; margins are absolute WER points.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import binomtest

from ssr.sentences.significance import BootstrapResult, paired_bootstrap

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
        return _decision_tags(asdict(self), prefix, {"gain": self.gain})


def _decision_tags(fields: dict[str, Any], prefix: str, extra: dict[str, Any]) -> dict[str, str]:
    """``gate.decision``, the other fields and ``extra`` as tags (None left out; floats to 6
    significant digits) and the losing sessions comma-separated (capped)."""
    tags = {f"{prefix}decision": "promote" if fields["promote"] else "reject"}
    for key, value in [*fields.items(), *extra.items()]:
        if key == "promote" or value is None or key == "losing_sessions":
            continue
        tags[f"{prefix}{key}"] = f"{value:.6g}" if isinstance(value, float) else str(value)
    if fields["losing_sessions"]:
        names = ",".join(fields["losing_sessions"])
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


BOOTSTRAP_SAMPLES = 10000


def bootstrap_test(samples: int = BOOTSTRAP_SAMPLES) -> str:
    """The test's name as recorded in ``gate.test``."""
    return f"paired bootstrap (Bisani & Ney 2004), {samples} resamples"


@dataclass(frozen=True)
class SentenceGateDecision:
    """The sentence gate's decision; WERs are lower-is-better, ``margin`` and
    ``baseline_margin`` are absolute WER points, p-values one-sided paired bootstrap."""

    promote: bool
    reason: str
    wer: float  # the challenger's test WER
    max_wer: float
    margin: float
    p_threshold: float
    n: int  # utterances
    ref_words: int  # reference words in them
    test: str = bootstrap_test()
    champion_wer: float | None = None
    p_value: float | None = None  # challenger vs champion
    baseline_wer: float | None = None
    baseline_margin: float | None = None
    baseline_p_value: float | None = None  # challenger vs the baseline
    losing_sessions: tuple[str, ...] = ()  # worse than the baseline, when that refused it

    def to_tags(self, prefix: str = "gate.") -> dict[str, str]:
        """The decision as string tags, ``gate.task`` = sentences and ``gate.wer_reduction``
        (champion WER minus challenger WER); absent numbers are left out."""
        reduction = None if self.champion_wer is None else self.champion_wer - self.wer
        extra = {"task": "sentences", "wer_reduction": reduction}
        return _decision_tags(asdict(self), prefix, extra)


def sessions_worse_than_baseline(
    per_session: Mapping[str, Mapping[str, Any]],
) -> list[tuple[str, float, float]]:
    """``(session, WER, baseline WER)`` of the sessions where the WER is above the baseline's,
    by session name (a sentences ``metrics.json``'s ``per_session``)."""
    return [
        (name, float(s["wer"]), float(s["baseline_wer"]))
        for name, s in sorted(per_session.items())
        if s.get("baseline_wer") is not None and s["wer"] > s["baseline_wer"]
    ]


def _baseline_refusal(
    wer: float,
    test: BootstrapResult,
    baseline_margin: float,
    p_value: float,
    per_session: Mapping[str, Mapping[str, Any]] | None,
) -> tuple[str, tuple[str, ...]] | None:
    """Why the challenger does not beat the baseline, and the sessions it loses; or None."""
    base = test.wer_b
    if (below := base - wer) <= 0 or below < baseline_margin - _EPS:
        reason = (
            f"WER {wer:.4f} is not below the linear baseline's ({base:.4f}) "
            f"by margin {baseline_margin:.4f}"
        )
    elif test.p_value >= p_value:
        reason = (
            f"WER {wer:.4f} is not significantly below the linear baseline's ({base:.4f}): "
            f"paired bootstrap p={test.p_value:.4g} >= {p_value:g}"
        )
    else:
        return None
    losing = sessions_worse_than_baseline(per_session or {})
    return reason + (_losing_clause(losing) if losing else ""), tuple(n for n, _, _ in losing)


def decide_sentences(
    challenger_errors: np.ndarray,
    ref_words: np.ndarray,
    champion_errors: np.ndarray | None,
    *,
    max_wer: float,
    margin: float,
    p_value: float,
    baseline_errors: np.ndarray | None = None,
    baseline_margin: float = 0.0,
    per_session: Mapping[str, Mapping[str, Any]] | None = None,
    samples: int = BOOTSTRAP_SAMPLES,
) -> SentenceGateDecision:
    """The gate for ``task: sentences`` on per-utterance word errors of the same utterances.

    The challenger's WER must be <= ``max_wer``; with ``baseline_errors``, below the
    baseline's by more than 0 and at least ``baseline_margin`` WER points, and significantly
    (paired bootstrap p < ``p_value``). Without a champion that promotes it; with one, its
    WER must be lower by more than 0 and at least ``margin`` points, with p < ``p_value``.
    """
    ref = np.asarray(ref_words)
    errors = np.asarray(challenger_errors)
    if errors.ndim != 1 or errors.shape != ref.shape or errors.size == 0:
        raise ValueError("challenger_errors and ref_words must be 1-D, non-empty, of one length")
    wer = float(errors.sum() / max(ref.sum(), 1))
    common: dict[str, Any] = {
        "max_wer": max_wer,
        "margin": margin,
        "p_threshold": p_value,
        "n": int(ref.size),
        "ref_words": int(ref.sum()),
        "test": bootstrap_test(samples),
    }
    vs_base = vs_champ = None
    if baseline_errors is not None:
        vs_base = paired_bootstrap(errors, baseline_errors, ref, samples)
        common.update(
            baseline_wer=vs_base.wer_b,
            baseline_margin=baseline_margin,
            baseline_p_value=vs_base.p_value,
        )
    if champion_errors is not None:  # the paired numbers are recorded whatever decides
        vs_champ = paired_bootstrap(errors, champion_errors, ref, samples)
        common.update(champion_wer=vs_champ.wer_b, p_value=vs_champ.p_value)
    if wer > max_wer + _EPS:
        return SentenceGateDecision(
            False, f"WER {wer:.4f} above maximum {max_wer:.4f}", wer, **common
        )
    if vs_base is not None:
        refusal = _baseline_refusal(wer, vs_base, baseline_margin, p_value, per_session)
        if refusal is not None:
            return SentenceGateDecision(
                False, refusal[0], wer, **common, losing_sessions=refusal[1]
            )
    if vs_champ is None:
        reason = f"no champion yet; WER {wer:.4f} within maximum {max_wer:.4f}"
        return SentenceGateDecision(True, reason, wer, **common)
    champ, p = vs_champ.wer_b, vs_champ.p_value
    if (reduction := champ - wer) <= 0 or reduction < margin - _EPS:
        reason = (
            f"WER {wer:.4f} does not improve on the champion's {champ:.4f} by margin {margin:.4f}"
        )
    elif p >= p_value:
        reason = f"not significantly better: paired bootstrap p={p:.4g} >= {p_value:g}"
    else:
        reason = f"WER {wer:.4f} below the champion's {champ:.4f}, paired bootstrap "
        reason += f"p={p:.4g} < {p_value:g}"
        return SentenceGateDecision(True, reason, wer, **common)
    return SentenceGateDecision(False, reason, wer, **common)
