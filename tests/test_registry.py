"""Model Registry against a real MLflow server: register, gate, promote, rollback, serve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from ssr.cli import main
from ssr.config import Config, load_config
from ssr.data.preprocess import run_preprocess
from ssr.data.processed import ProcessedSplit, collate
from ssr.data.synth import SynthOptions, generate
from ssr.errors import RegistryError
from ssr.evaluation import evaluate
from ssr.model import build_model
from ssr.registry.promote import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    PromotionLock,
    alias_version,
    check_consistent,
    copy_version,
    promote,
    promote_across,
    read_history,
    rollback,
)
from ssr.registry.register import register_model
from ssr.storage import publish, upload_file
from ssr.training.checkpoint import save_checkpoint

pytestmark = pytest.mark.slow  # real MLflow + S3 servers, a few registrations

TINY = [
    "model.input_size=8",
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.max_frames=64",
    "model.dropout=0.0",
    "tracking.mlflow.experiment=registry-tests",
    "registry.log_pytorch_model=false",
]


def _config(root: Path, *extra: str) -> Config:
    raw = root / "raw"
    return load_config(
        None,
        [
            f"data.train_dir={raw / 'train'}",
            f"data.val_dir={raw / 'val'}",
            f"data.test_dir={raw / 'test'}",
            f"data.processed_dir={root / 'processed'}",
            *TINY,
            *extra,
        ],
    )


def _checkpoint(cfg: Config, out: Path, name: str, steps: int, seed: int) -> tuple[str, str]:
    """A checkpoint trained for ``steps`` full-batch steps (0 = random weights), evaluated."""
    train = ProcessedSplit(cfg.data.processed_dir, "train")
    torch.manual_seed(seed)
    model = build_model(cfg.model, len(train.label_names))
    batch = collate([train[i] for i in range(len(train))])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(batch.x, batch.padding_mask()), batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {
        "model": model.state_dict(),
        "config": cfg.model_dump(),
        "labels": train.label_names,
        "tracking": {"mlflow": "train-run", "wandb": "e/p/abc"},
    }
    path = save_checkpoint(state, str(out), f"{name}.pth")
    eval_dir = out / f"eval-{name}"
    evaluate(path, "test", cfg.data.processed_dir, str(eval_dir), device="cpu")
    return path, str(eval_dir)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Synthetic raw EMG, its processed data set and three evaluated checkpoints."""
    root = tmp_path_factory.mktemp("registry")
    generate(
        root / "raw",
        SynthOptions(
            vocab=3, per_word=20, sessions=5, train_sessions=3, min_duration=0.5, max_duration=0.8
        ),
    )
    cfg = _config(root)
    run_preprocess(cfg)
    ckpts = root / "ckpt"
    return {
        "root": root,
        "good": _checkpoint(cfg, ckpts, "good", steps=40, seed=0),
        "good2": _checkpoint(cfg, ckpts, "good2", steps=40, seed=1),
        "bad": _checkpoint(cfg, ckpts, "bad", steps=0, seed=3),
    }


@pytest.fixture
def registry(mlflow_server, s3_env, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_env.endpoint)
    return MlflowClient(mlflow_server.uri, mlflow_server.uri)


@pytest.fixture(scope="module")
def registered(world: dict, mlflow_server, s3_server) -> dict:
    """The three checkpoints registered once (good with the PyTorch flavour too)."""
    name = f"ssr-emg-src-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            **s3_server.env,
            "MLFLOW_TRACKING_URI": mlflow_server.uri,
            "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint,
        }.items():
            mp.setenv(key, value)
        cfg = _config(world["root"], f"registry.model_name={name}")
        versions = {
            "good": register_model(
                cfg.model_copy(
                    update={"registry": cfg.registry.model_copy(update={"log_pytorch_model": True})}
                ),
                *world["good"],
                pipeline_run_id="pipe-1",
            ),
            "bad": register_model(cfg, *world["bad"]),
            "good2": register_model(cfg, *world["good2"]),
        }
    return {"name": name, **versions}


def _accuracy(eval_dir: str) -> float:
    return json.loads((Path(eval_dir) / "metrics.json").read_text())["accuracy"]


def _new_model(registry: MlflowClient, registered: dict, *keys: str) -> tuple[str, list[str]]:
    """A fresh registered model holding copies of the given registered versions."""
    name = f"ssr-emg-{uuid.uuid4().hex[:8]}"
    src = registered["name"]
    return name, [copy_version(registry, src, registered[k].version, name) for k in keys]


def test_register_records_tags_and_artifacts(
    world: dict, registered: dict, registry: MlflowClient
) -> None:
    name, good = registered["name"], registered["good"]
    assert alias_version(registry, name, CHALLENGER) == registered["good2"].version
    mv = registry.get_model_version(name, good.version)
    assert float(mv.tags["test.accuracy"]) == pytest.approx(_accuracy(world["good"][1]), abs=1e-5)
    assert {
        "test.macro_f1",
        "test.loss",
        "data.fingerprint",
        "data.feature_hash",
        "config",
        "git_commit",
        "mlflow.run_id",
        "mlflow.run_url",
    } <= set(mv.tags)
    assert mv.tags["pipeline_run_id"] == "pipe-1" and mv.tags["train.wandb_run"] == "e/p/abc"
    assert mv.tags["mlflow.run_url"].startswith(registry.tracking_uri)
    assert mv.run_id == good.run_id
    run_artifacts = {a.path for a in registry.list_artifacts(good.run_id, "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/predictions.json"} <= run_artifacts
    experiment = registry.get_run(good.run_id).info.experiment_id
    logged = registry.search_logged_models(
        experiment_ids=[experiment], filter_string="name = 'pytorch-model'"
    )
    assert good.run_id in {m.source_run_id for m in logged}
    assert registered["bad"].run_id not in {m.source_run_id for m in logged}


def test_gate_promotes_better_rejects_worse_and_rolls_back(
    world: dict, registered: dict, registry: MlflowClient
) -> None:
    name, (v_good, v_bad) = _new_model(registry, registered, "good", "bad")
    cfg = _config(world["root"], f"registry.model_name={name}")
    good, bad = world["good"], world["bad"]
    assert _accuracy(good[1]) > _accuracy(bad[1])

    first = promote(cfg, client=registry, version=v_good)
    assert first.action == "promote" and first.champion_after == v_good
    assert alias_version(registry, name, CHAMPION) == v_good
    assert registry.get_model_version(name, v_good).tags["gate.compared_against"] == "none"

    dry = promote(cfg, client=registry, version=v_bad, dry_run=True)
    assert dry.action == "reject"
    assert "gate.decision" not in registry.get_model_version(name, v_bad).tags
    second = promote(cfg, client=registry, version=v_bad)
    assert second.action == "reject" and alias_version(registry, name, CHAMPION) == v_good
    decision = second.decision
    cand = registry.get_model_version(name, v_bad).tags
    champ = registry.get_model_version(name, v_good).tags
    assert cand["gate.decision"] == "reject" and cand["gate.compared_against"] == v_good
    assert int(cand["gate.n01"]) == decision.n01 and int(cand["gate.n10"]) == decision.n10
    assert float(cand["gate.challenger_accuracy"]) == pytest.approx(_accuracy(bad[1]), abs=1e-5)
    assert float(cand["gate.champion_accuracy"]) == pytest.approx(_accuracy(good[1]), abs=1e-5)
    assert champ[f"gate.vs_v{v_bad}.decision"] == "reject"
    assert champ[f"gate.vs_v{v_bad}.p_value"] == cand["gate.p_value"]
    with pytest.raises(RegistryError, match="no previous champion"):
        rollback(cfg, client=registry)

    # environments: copy the champion to prod, then a bad release, then roll back
    prod = f"{name}-prod"
    promote_across(cfg, client=registry, source=name, target=prod)
    bad_release = promote_across(cfg, client=registry, source=name, target=prod, version=v_bad)
    assert alias_version(registry, prod, CHAMPION) == bad_release.candidate
    assert alias_version(registry, prod, PREVIOUS) == bad_release.champion_before
    assert registry.get_model_version(prod, bad_release.candidate).tags["promoted_from"] == (
        f"{name}/{v_bad}"
    )
    back = rollback(cfg, client=registry, model_name=prod)
    assert alias_version(registry, prod, CHAMPION) == back.champion_after != bad_release.candidate
    assert read_history(registry, prod) == [back.champion_after]
    assert alias_version(registry, prod, PREVIOUS) is None

    # the champion serves raw EMG from a fresh process with only the package installed
    recording = sorted(Path(cfg.data.test_dir).rglob("*.npz"))[0]
    code = (
        "import sys, numpy as np, pandas as pd, mlflow.pyfunc\n"
        "emg = np.load(sys.argv[2])['emg']\n"
        "m = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "out = m.predict(pd.DataFrame({'emg': [emg.tolist(), emg[:400].tolist()]}))\n"
        "print(out.to_json(orient='records'))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry.tracking_uri}
    proc = subprocess.run(
        [sys.executable, "-c", code, f"models:/{prod}@champion", str(recording)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=world["root"],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    labels = ProcessedSplit(cfg.data.processed_dir, "test").label_names
    assert len(rows) == 2
    assert set(rows[0]) == {"label", "confidence", *(f"p_{lab}" for lab in labels)}
    assert rows[0]["label"] in labels
    assert sum(rows[0][f"p_{lab}"] for lab in labels) == pytest.approx(1.0, abs=1e-5)
    assert rows[0]["confidence"] == pytest.approx(max(rows[0][f"p_{lab}"] for lab in labels))


def test_concurrent_promotions_stay_consistent(
    world: dict, registered: dict, registry: MlflowClient
) -> None:
    name, (base, *versions) = _new_model(registry, registered, "bad", "good", "good2")
    # lenient gate: any strictly better model is promoted, so both orders are possible
    cfg = _config(
        world["root"],
        f"registry.model_name={name}",
        "registry.min_accuracy=0.0",
        "registry.p_value=1.0",
        "registry.baseline_margin=null",  # the untrained base could not beat the baseline
    )
    promote(cfg, client=registry, version=base)

    errors: list[BaseException] = []

    def run(version: str) -> None:
        try:
            promote(cfg, client=registry, version=version)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    history = check_consistent(registry, name)
    champion = alias_version(registry, name, CHAMPION)
    assert champion in versions and history[0] == base and history[-1] == champion
    assert alias_version(registry, name, PREVIOUS) == history[-2]
    for version in versions:
        tags = registry.get_model_version(name, version).tags
        assert tags["gate.compared_against"] in history
        assert (tags["gate.decision"] == "promote") == (version in history)
        # each was gated against the champion of its turn, never a stale one
        if version in history:
            assert tags["gate.compared_against"] == history[history.index(version) - 1]
    assert not registry.search_registered_models(f"name = '{name}.promotion-lock'")


def test_cli_register_from_object_storage(
    world: dict, registry: MlflowClient, s3_env, tmp_path: Path
) -> None:
    """Checkpoint, evaluation and data set all in S3, as the pipeline's outputs would be."""
    bucket = s3_env.create_bucket(f"reg-{uuid.uuid4().hex[:8]}")
    name = f"ssr-emg-{uuid.uuid4().hex[:8]}"
    ckpt, eval_dir = world["good"]
    base = f"s3://{bucket}/run1"
    publish(world["root"] / "processed", f"{base}/processed")
    publish(eval_dir, f"{base}/evaluation")
    upload_file(ckpt, f"{base}/checkpoints/best_model.pth")
    args = ["register", "--checkpoint", f"{base}/checkpoints/best_model.pth"]
    args += ["--eval-dir", f"{base}/evaluation", *TINY, f"registry.model_name={name}"]
    args += [f"data.processed_dir={base}/processed", f"storage.cache_dir={tmp_path / 'cache'}"]
    assert main(args) == 0
    version = registry.get_model_version(name, "1")
    local = ProcessedSplit(world["root"] / "processed", "test").manifest["fingerprint"]
    assert version.tags["data.fingerprint"] == local
    assert version.tags["checkpoint"] == "best_model.pth"
    metrics = json.loads((Path(eval_dir) / "metrics.json").read_text())
    assert float(version.tags["test.accuracy"]) == pytest.approx(metrics["accuracy"], abs=1e-5)
    assert alias_version(registry, name, CHALLENGER) == "1"


def test_lock_is_exclusive_and_expires(registry: MlflowClient) -> None:
    name = f"ssr-lock-{uuid.uuid4().hex[:8]}"
    holder = PromotionLock(registry, name, ttl_s=1.0)
    holder.acquire()
    waiter = PromotionLock(registry, name, wait_s=0.5, poll_s=0.1)
    with pytest.raises(RegistryError, match="another promotion holds the lock"):
        waiter.acquire()
    # the holder crashes; once the lease expires the next promoter breaks it
    breaker = PromotionLock(registry, name, wait_s=10, poll_s=0.2)
    breaker.acquire()
    with pytest.raises(RegistryError, match="lost the promotion lock"):
        holder.verify()
    breaker.verify()
    breaker.release()


def test_cli_promote_and_predict(
    world: dict, registry: MlflowClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"ssr-emg-{uuid.uuid4().hex[:8]}"
    root = world["root"]
    raw = root / "raw"
    overrides = [
        f"data.train_dir={raw / 'train'}",
        f"data.val_dir={raw / 'val'}",
        f"data.test_dir={raw / 'test'}",
        f"data.processed_dir={root / 'processed'}",
        *TINY,
        f"registry.model_name={name}",
    ]
    ckpt, eval_dir = world["good"]
    missing = str(tmp_path / "no-eval")
    assert main(["register", "--checkpoint", ckpt, "--eval-dir", missing, *overrides]) == 2
    assert "no-eval/metrics.json: missing" in capsys.readouterr().err
    assert main(["register", "--checkpoint", ckpt, "--eval-dir", eval_dir, *overrides]) == 0
    assert main(["promote", "--dry-run", *overrides]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "accuracy" in out
    # a rejection has its own exit status, with the reason on stdout
    strict = ["registry.min_accuracy=1.0", "registry.baseline_margin=1.0"]
    assert main(["promote", "--dry-run", *overrides, *strict]) == 3
    out = capsys.readouterr().out
    assert "keep the champion (rejected)" in out and "reason" in out
    assert alias_version(registry, name, CHAMPION) is None
    assert main(["promote", *overrides]) == 0
    assert alias_version(registry, name, CHAMPION) == "1"
    files = [str(p) for p in sorted((raw / "test").rglob("*.npz"))[:2]]
    capsys.readouterr()
    assert main(["predict", "--model", f"models:/{name}@champion", "--json", *files]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in rows] == files and all(0 < r["confidence"] <= 1 for r in rows)
    assert main(["predict", "--model", f"models:/{name}@champion", str(tmp_path / "nope.npz")]) == 2
    assert "nope.npz" in capsys.readouterr().err
    assert main(["promote", "--rollback", *overrides]) == 2


def test_gate_refuses_a_challenger_worse_than_the_linear_baseline(
    world: dict, registered: dict, registry: MlflowClient
) -> None:
    name, (bad,) = _new_model(registry, registered, "bad")
    metrics = json.loads((Path(world["bad"][1]) / "metrics.json").read_text())
    assert metrics["accuracy"] < metrics["baseline"]["accuracy"]  # untrained vs fitted baseline
    cfg = _config(world["root"], f"registry.model_name={name}", "registry.min_accuracy=0.0")
    result = promote(cfg, client=registry, version=bad)
    assert result.action == "reject" and alias_version(registry, name, CHAMPION) is None
    assert "linear baseline" in result.decision.reason
    tags = registry.get_model_version(name, bad).tags
    assert tags["gate.decision"] == "reject"
    assert float(tags["gate.baseline_accuracy"]) == pytest.approx(
        metrics["baseline"]["accuracy"], abs=1e-5
    )
