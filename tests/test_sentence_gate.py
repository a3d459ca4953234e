"""The promotion gate for ``task: sentences``: WER with the paired bootstrap, the baseline from
the registered evaluation, and one promotion round against a real MLflow server."""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from ssr.commands.promote import format_result
from ssr.config import load_config
from ssr.data.processed import SplitArrays, write_processed
from ssr.errors import DataError, RegistryError
from ssr.registry.gate import decide_sentences
from ssr.registry.gating import baseline_word_errors, version_task
from ssr.registry.register import describe, evaluation_scores
from ssr.sentences.units import output_labels

GATE: dict[str, Any] = {"max_wer": 0.5, "margin": 0.0, "p_value": 0.05}
N = 40
REF = np.full(N, 5)  # 40 utterances of 5 words: 200 reference words


def errors(*counts: tuple[int, int]) -> np.ndarray:
    """Per-utterance word errors: ``(utterances, errors each)`` runs, N in all."""
    out = np.concatenate([np.full(n, e) for n, e in counts])
    assert out.size == N
    return out


def test_worse_challenger_is_refused_on_wer() -> None:
    challenger = errors((N, 2))  # WER 0.40
    champion = errors((N, 1))  # WER 0.20
    decision = decide_sentences(challenger, REF, champion, **GATE)
    assert not decision.promote
    assert (
        decision.reason == "WER 0.4000 does not improve on the champion's 0.2000 by margin 0.0000"
    )
    assert decision.p_value == 1.0 and decision.champion_wer == pytest.approx(0.2)
    tags = decision.to_tags()
    assert tags["gate.decision"] == "reject" and tags["gate.task"] == "sentences"
    assert tags["gate.wer"] == "0.4" and tags["gate.champion_wer"] == "0.2"
    assert tags["gate.wer_reduction"] == "-0.2" and tags["gate.p_value"] == "1"
    assert tags["gate.test"] == "paired bootstrap (Bisani & Ney 2004), 10000 resamples"
    assert "gate.baseline_wer" not in tags and "gate.losing_sessions" not in tags


def test_clearly_better_challenger_is_promoted() -> None:
    challenger = errors((30, 0), (10, 1))  # WER 0.05
    champion = errors((10, 0), (30, 2))  # WER 0.30
    decision = decide_sentences(challenger, REF, champion, **GATE)
    assert decision.promote, decision.reason
    assert decision.p_value is not None and decision.p_value < 0.001
    assert decision.reason.startswith("WER 0.0500 below the champion's 0.3000, paired bootstrap p=")
    assert decision.to_tags()["gate.decision"] == "promote"
    # a margin in absolute WER points that the reduction (0.25) does not reach blocks it
    blocked = decide_sentences(challenger, REF, champion, **{**GATE, "margin": 0.3})
    assert not blocked.promote and "by margin 0.3000" in blocked.reason
    # a reduction equal to the margin passes
    assert decide_sentences(challenger, REF, champion, **{**GATE, "margin": 0.25}).promote


def test_better_but_not_significant_is_refused() -> None:
    champion = errors((N, 1))  # WER 0.200
    challenger = errors((20, 0), (19, 2), (1, 1))  # WER 0.195: lower, but by chance
    decision = decide_sentences(challenger, REF, champion, **GATE)
    assert not decision.promote
    assert decision.reason.startswith("not significantly better: paired bootstrap p=")
    assert decision.p_value is not None and decision.p_value > 0.3


def test_above_max_wer_is_refused_even_without_a_champion() -> None:
    high = decide_sentences(errors((N, 3)), REF, None, **GATE)  # WER 0.6
    assert not high.promote and high.reason == "WER 0.6000 above maximum 0.5000"
    # also when it beats the champion
    assert not decide_sentences(errors((N, 3)), REF, errors((N, 5)), **GATE).promote
    first = decide_sentences(errors((N, 2)), REF, None, **GATE)  # WER 0.4
    assert first.promote and first.reason == "no champion yet; WER 0.4000 within maximum 0.5000"
    assert "gate.champion_wer" not in first.to_tags()


PER_SESSION = {
    "session08": {"num_samples": 20, "wer": 0.30, "cer": 0.1, "baseline_wer": 0.25},
    "session07": {"num_samples": 20, "wer": 0.20, "cer": 0.1, "baseline_wer": 0.35},
    "session09": {"num_samples": 5, "wer": 0.90, "cer": 0.5},  # no baseline there
}


def test_losing_to_the_baseline_is_refused_naming_the_sessions() -> None:
    challenger = errors((N, 1))  # WER 0.20
    baseline = errors((30, 0), (10, 2))  # WER 0.10
    decision = decide_sentences(
        challenger, REF, None, **GATE, baseline_errors=baseline, per_session=PER_SESSION
    )
    assert not decision.promote
    assert decision.reason == (
        "WER 0.2000 is not below the linear baseline's (0.1000) by margin 0.0000; "
        "loses to it on sessions session08 (0.3000 vs 0.2500)"
    )
    assert decision.losing_sessions == ("session08",)
    tags = decision.to_tags()
    assert tags["gate.baseline_wer"] == "0.1" and tags["gate.losing_sessions"] == "session08"
    assert float(tags["gate.baseline_p_value"]) == pytest.approx(1.0)
    # the baseline is checked before the champion, which it would have beaten
    assert not decide_sentences(
        challenger, REF, errors((N, 2)), **GATE, baseline_errors=baseline
    ).promote


def test_baseline_must_be_beaten_by_the_margin_and_significantly() -> None:
    challenger = errors((30, 0), (10, 1))  # WER 0.05
    clear = errors((10, 0), (30, 2))  # WER 0.30
    assert decide_sentences(challenger, REF, None, **GATE, baseline_errors=clear).promote
    margin = decide_sentences(
        challenger, REF, None, **GATE, baseline_errors=clear, baseline_margin=0.3
    )
    assert not margin.promote and "by margin 0.3000" in margin.reason
    close = errors((29, 0), (11, 1))  # WER 0.055: above the challenger's, by chance
    noisy = decide_sentences(
        challenger, REF, None, **GATE, baseline_errors=close, per_session=PER_SESSION
    )
    assert not noisy.promote
    assert noisy.reason.startswith(
        "WER 0.0500 is not significantly below the linear baseline's (0.0550): paired bootstrap p="
    )
    assert noisy.reason.endswith("; loses to it on sessions session08 (0.3000 vs 0.2500)")


def test_decision_is_deterministic_and_checks_its_input() -> None:
    a, b = errors((20, 0), (20, 2)), errors((N, 1))
    assert decide_sentences(a, REF, b, **GATE) == decide_sentences(a, REF, b, **GATE)
    with pytest.raises(ValueError, match="one length"):
        decide_sentences(a[:-1], REF, None, **GATE)


def test_promote_table_shows_wer() -> None:
    decision = decide_sentences(errors((N, 2)), REF, errors((N, 1)), **GATE)
    result: Any = SimpleNamespace(
        model_name="ssr-sentences",
        action="reject",
        candidate="4",
        champion_before="3",
        champion_after="3",
        dry_run=False,
        source=None,
        decision=decision,
    )
    table = format_result(result)
    rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in table.splitlines()[1:])
    assert rows["challenger WER"] == "0.4000" and rows["champion WER"] == "0.2000"
    assert rows["WER reduction (margin)"] == "-0.2000 (0.0000)"
    assert rows["bootstrap p (threshold)"] == "1 (0.05)" and rows["baseline WER"] == "-"
    assert rows["test"] == (
        "paired bootstrap (Bisani & Ney 2004), 10000 resamples on 40 utterances (200 words)"
    )
    assert "accuracy" not in table and "McNemar" not in table


SENTENCE_METRICS = {
    "task": "sentences",
    "split": "test",
    "num_samples": 3,
    "loss": 1.5,
    "wer": 0.25,
    "cer": 0.125,
    "greedy": {"wer": 0.5, "cer": 0.25},
    "baseline": {"name": "linear", "wer": 0.75, "cer": 0.5, "greedy_wer": 0.8},
}


def test_registered_scores_and_description_for_sentences() -> None:
    scores = evaluation_scores(SENTENCE_METRICS)
    assert scores == {
        "wer": 0.25,
        "cer": 0.125,
        "loss": 1.5,
        "greedy_wer": 0.5,
        "baseline_wer": 0.75,
    }
    text = describe("sentences", scores, 3)
    assert text == (
        "task sentences; test WER 0.2500, CER 0.1250 (beam search with lexicon and language "
        "model), greedy WER 0.5000, linear baseline WER 0.7500 on 3 utterances"
    )
    words = evaluation_scores({"accuracy": 0.75, "macro_f1": 0.5, "loss": 1})
    assert words == {"accuracy": 0.75, "macro_f1": 0.5, "loss": 1.0}
    assert "accuracy 0.7500" in describe("words", words, 8)


def test_version_task() -> None:
    def version(**tags: str) -> Any:
        return SimpleNamespace(tags=tags)

    assert version_task(version(task="sentences")) == "sentences"
    assert version_task(version(config=json.dumps({"task": "sentences"}))) == "sentences"
    assert version_task(version(config='{"task": "sent...[truncated]')) == "words"
    assert version_task(version()) == "words"


class _Artifacts:
    """The two MlflowClient calls the registered evaluation is read with, over a folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def list_artifacts(self, run_id: str, path: str) -> list[SimpleNamespace]:
        folder = self.root / run_id / path
        files = sorted(folder.iterdir()) if folder.is_dir() else []
        return [SimpleNamespace(path=f"{path}/{f.name}") for f in files]

    def download_artifacts(self, run_id: str, path: str, dst_path: str) -> str:
        return shutil.copy(self.root / run_id / path, dst_path)


def test_baseline_errors_come_from_the_registered_predictions(tmp_path: Path) -> None:
    client: Any = _Artifacts(tmp_path)
    version: Any = SimpleNamespace(name="ssr-sentences", version="2", run_id="r1")
    ids, ref = ["test/s1/a.npz", "test/s1/b.npz"], np.array([3, 2])
    with pytest.raises(RegistryError, match="registry.baseline_margin=null"):
        baseline_word_errors(client, version, ids, ref)
    path = tmp_path / "r1" / "evaluation" / "predictions.json"
    path.parent.mkdir(parents=True)
    rows = [  # in another order than the split: matched by id
        {"id": "test/s1/b.npz", "ref_words": 2, "baseline_word_errors": 1},
        {"id": "test/s1/a.npz", "ref_words": 3, "baseline_word_errors": 2},
    ]
    path.write_text(json.dumps({"split": "test", "predictions": rows}))
    assert baseline_word_errors(client, version, ids, ref).tolist() == [2, 1]
    path.write_text(json.dumps({"predictions": rows[:1]}))
    with pytest.raises(DataError, match=r"^runs:/r1/evaluation/predictions.json: no prediction"):
        baseline_word_errors(client, version, ids, ref)
    path.write_text(json.dumps({"predictions": [rows[0], {**rows[1], "ref_words": 4}]}))
    with pytest.raises(DataError, match="4 reference words, the test split has 3"):
        baseline_word_errors(client, version, ids, ref)
    path.write_text(
        json.dumps({"predictions": [rows[0], {**rows[1], "baseline_word_errors": None}]})
    )
    with pytest.raises(DataError, match="'baseline_word_errors' None is not a count"):
        baseline_word_errors(client, version, ids, ref)


# ---- one promotion round against a real MLflow server --------------------------------------

TEXTS = [
    "the cat sat on the mat",
    "a big dog ran home",
    "the dog sat",
    "a cat ran on the mat",
] * 6  # 24 utterances, two sessions
IDS = [f"test/session{7 + i % 2:02d}/utt{i:03d}.npz" for i in range(len(TEXTS))]


def _processed(root: Path) -> Path:
    labels = output_labels()
    frames = 4
    index = np.array([(i * frames, frames, 0) for i in range(len(TEXTS))], dtype=np.int64)
    test = SplitArrays(
        features=np.zeros((frames * len(TEXTS), 8, 16), np.float32),
        index=index,
        ids=IDS,
        texts=TEXTS,
    )
    manifest = {
        "task": "sentences",
        "labels": labels,
        "num_channels": 8,
        "input_size": 16,
        "fingerprint": "sentence-gate-test",
    }
    return write_processed(root / "processed", manifest, {"test": test})


def _drop_word(text: str) -> str:
    return " ".join(text.split()[1:])


def _register(
    client: MlflowClient, name: str, hyps: list[str], baseline: list[str], tmp: Path
) -> str:
    """A version by hand as ``ssr register`` tags and logs it (evaluation files in its run);
    what the model says on the test split is the patched scoring function's business."""
    from ssr.sentences.scoring import score_texts

    scores, base = score_texts(TEXTS, hyps), score_texts(TEXTS, baseline)
    rows = [
        {
            "index": i,
            "id": IDS[i],
            "reference": TEXTS[i],
            "hypothesis": hyps[i],
            "word_errors": int(scores.word_errors[i]),
            "ref_words": int(scores.ref_words[i]),
            "baseline": baseline[i],
            "baseline_word_errors": int(base.word_errors[i]),
        }
        for i in range(len(TEXTS))
    ]
    per_session: dict[str, dict[str, float]] = {}
    for session in ("session07", "session08"):
        keep = [i for i, s in enumerate(IDS) if f"/{session}/" in s]
        sub, sub_base = scores.word_errors[keep].sum(), base.word_errors[keep].sum()
        words = scores.ref_words[keep].sum()
        per_session[session] = {
            "num_samples": len(keep),
            "wer": float(sub / words),
            "cer": 0.0,
            "baseline_wer": float(sub_base / words),
        }
    metrics = {
        **SENTENCE_METRICS,
        "num_samples": len(TEXTS),
        "wer": scores.wer,
        "per_session": per_session,
    }
    folder = tmp / uuid.uuid4().hex
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "predictions.json").write_text(json.dumps({"split": "test", "predictions": rows}))
    mlflow.set_experiment("sentence-gate-tests")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(folder / "metrics.json"), "evaluation")
        mlflow.log_artifact(str(folder / "predictions.json"), "evaluation")
        mlflow.log_text("stand-in for the pyfunc", "model/README.txt")
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(name)
    tags = {
        "task": "sentences",
        "data.fingerprint": "sentence-gate-test",
        "test.wer": f"{scores.wer:.6g}",
    }
    mv = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id, tags)
    return str(mv.version)


@pytest.mark.slow
def test_promote_refuses_a_worse_sentence_challenger(
    tmp_path: Path, mlflow_server: Any, s3_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssr.registry.pyfunc_model as pyfunc_model
    from ssr.registry.promote import CHAMPION, alias_version, promote

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_env.endpoint)
    mlflow.set_tracking_uri(mlflow_server.uri)
    client = MlflowClient(mlflow_server.uri, mlflow_server.uri)
    processed = _processed(tmp_path)
    name = f"ssr-sentences-{uuid.uuid4().hex[:8]}"
    perfect = list(TEXTS)
    sloppy = [_drop_word(t) if i % 3 else t for i, t in enumerate(TEXTS)]  # 16 of 24 lose a word
    worst = [""] * len(TEXTS)  # the baseline says nothing
    good = _register(client, name, perfect, worst, tmp_path)
    bad = _register(client, name, sloppy, worst, tmp_path)
    behind_baseline = _register(client, name, sloppy, perfect, tmp_path)
    transcripts = {f"models:/{name}/{good}": perfect, f"models:/{name}/{bad}": sloppy}
    transcripts[f"models:/{name}/{behind_baseline}"] = sloppy
    seen: list[tuple[str, str | None]] = []

    def fake(
        model_uri: str,
        processed_dir: Any,
        test_dir: Any = "data/test",
        expected_fingerprint: str | None = None,
    ) -> list[str]:
        seen.append((model_uri, expected_fingerprint))
        return transcripts[model_uri]

    monkeypatch.setattr(pyfunc_model, "transcripts_on_test_split", fake, raising=False)
    cfg = load_config(
        None,
        [
            "task=sentences",
            f"data.processed_dir={processed}",
            f"registry.model_name={name}",
            "registry.max_wer=0.5",
        ],
    )

    first = promote(cfg, client=client, version=good)
    assert first.action == "promote", first.decision
    assert alias_version(client, name, CHAMPION) == good

    worse = promote(cfg, client=client, version=bad)
    assert worse.action == "reject" and alias_version(client, name, CHAMPION) == good
    assert worse.decision is not None
    assert "does not improve on the champion's 0.0000" in worse.decision.reason
    assert seen[-2:] == [
        (f"models:/{name}/{bad}", "sentence-gate-test"),
        (f"models:/{name}/{good}", None),
    ]
    tags = client.get_model_version(name, bad).tags
    assert tags["gate.decision"] == "reject" and tags["gate.task"] == "sentences"
    assert float(tags["gate.wer"]) == pytest.approx(16 / 120, abs=1e-5)
    assert tags["gate.champion_wer"] == "0" and tags["gate.p_value"] == "1"
    assert float(tags["gate.baseline_wer"]) == 1.0
    assert tags["gate.test"] == "paired bootstrap (Bisani & Ney 2004), 10000 resamples"
    assert client.get_model_version(name, good).tags[f"gate.vs_v{bad}.decision"] == "reject"

    behind = promote(cfg, client=client, version=behind_baseline, dry_run=True)
    assert behind.action == "reject" and behind.decision is not None
    assert "is not below the linear baseline's (0.0000)" in behind.decision.reason
    assert "loses to it on sessions session07" in behind.decision.reason
