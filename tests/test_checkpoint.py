"""Checkpoint IO: atomic writes, safe loading, clear errors for missing or damaged files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from ssr.errors import CheckpointError
from ssr.training.checkpoint import load_checkpoint, save_checkpoint


class _Payload:
    """Unpickling this runs ``os.mkdir(marker)``: what a hostile checkpoint could do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.mkdir, (self.marker,))


def test_roundtrip_plain_containers(tmp_path: Path) -> None:
    state = {
        "model": {"w": torch.arange(4.0)},
        "epoch": 3,
        "labels": ["a", "b"],
        "rng": {"python": [3, [1, 2], None]},
    }
    path = save_checkpoint(state, str(tmp_path / "ck"), "last.pth")
    assert path == str(tmp_path / "ck" / "last.pth")
    assert sorted(os.listdir(tmp_path / "ck")) == ["last.pth"]  # no temp files left
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], torch.arange(4.0))
    assert loaded["epoch"] == 3 and loaded["labels"] == ["a", "b"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nope.pth: checkpoint not found"):
        load_checkpoint(str(tmp_path / "nope.pth"))


def test_truncated_file(tmp_path: Path) -> None:
    path = save_checkpoint({"model": {"w": torch.randn(256, 256)}}, str(tmp_path), "a.pth")
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"a\.pth: corrupt or truncated"):
        load_checkpoint(path)


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_checkpoint(str(path))


def test_non_dict_checkpoint(tmp_path: Path) -> None:
    path = save_checkpoint([1, 2, 3], str(tmp_path), "list.pth")  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="not an ssr checkpoint"):
        load_checkpoint(path)


def test_code_in_checkpoint_is_refused_and_not_run(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(str(probe))))
    assert probe.is_dir(), "the payload really executes when unpickled unsafely"

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="evil.pth: refused.*unsafe unpickling"):
        load_checkpoint(str(path))
    assert not marker.exists()


def _training_state(**changes: object) -> dict:
    from ssr.config import Config, ModelConfig
    from ssr.model import build_model

    cfg = Config(
        model=ModelConfig(input_size=8, hidden_size=16, num_layers=1, num_heads=2, max_frames=64)
    )
    state = {
        "model": build_model(cfg.model, 3).state_dict(),
        "config": cfg.model_dump(),
        "labels": ["a", "b", "c"],
    }
    state.update(changes)
    return state


def _bigger_weights() -> dict:
    from ssr.config import ModelConfig
    from ssr.model import build_model

    model = ModelConfig(input_size=8, hidden_size=32, num_layers=3, num_heads=2, max_frames=64)
    return build_model(model, 3).state_dict()


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"model": [1, 2, 3]}, "'model' is not a state dict"),
        ({"model": {"w": "text"}}, "'model' is not a state dict"),
        ({"labels": "abc"}, "'labels' must be a non-empty list of strings, got str"),
        ({"labels": [1, 2, 3]}, "'labels' must be a non-empty list of strings"),
        ({"labels": ["a", "a", "b"]}, "'labels' holds duplicates"),
        ({"config": "model: x"}, "'config' is missing or not a mapping"),
        ({"config": {"training": {"batch_size": True}}}, "training.batch_size"),
        (
            {"labels": ["a", "b"]},
            r"2 shape mismatch\(es\) \(checkpoint vs model: classifier.bias \[3\] vs \[2\]",
        ),
        ({"model": _bigger_weights()}, r"unexpected key\(s\) \(.*\.\.\. \(\+\d+\)\)"),
    ],
)
def test_bad_training_checkpoint_is_one_line(tmp_path: Path, changes: dict, problem: str) -> None:
    from ssr.training.checkpoint import restore_model

    path = save_checkpoint(_training_state(**changes), str(tmp_path), "c.pth")
    with pytest.raises(CheckpointError, match=problem) as info:
        restore_model(load_checkpoint(path), path)
    message = str(info.value)
    assert message.startswith(path) and "\n" not in message and len(message) < 700, message


def test_a_checkpoint_from_before_band_centring_is_the_model_it_was() -> None:
    from ssr.config import Config
    from ssr.errors import CheckpointError
    from ssr.model import build_model
    from ssr.training.checkpoint import RESUME_KEYS, check_resumable, restore_model

    cfg = Config().model_dump()
    cfg["model"].update(hidden_size=16, num_heads=2, num_layers=1, input_size=8)
    weights = build_model(Config.model_validate(cfg).model, 2).state_dict()
    del cfg["model"]["centring"]  # written before model.centring existed
    state = {k: {} for k in RESUME_KEYS}
    state.update(model=weights, labels=["a", "b"], config=cfg)
    model, stored, _ = restore_model(state, "old.pth")
    assert stored.model.centring == "electrode" and model.cfg.centring == "electrode"
    current = {**cfg["model"], "centring": "band"}  # today's default: another model
    with pytest.raises(CheckpointError, match="model.centring: electrode -> band"):
        check_resumable(state, "old.pth", ["a", "b"], current)


def test_a_checkpoint_from_before_model_arch_still_resumes() -> None:
    from ssr.config import ModelConfig
    from ssr.errors import CheckpointError
    from ssr.training.checkpoint import RESUME_KEYS, check_resumable

    model = ModelConfig().model_dump()
    legacy = {k: v for k, v in model.items() if k != "arch"}  # written before model.arch
    state = {k: {} for k in RESUME_KEYS}
    state.update(labels=["a", "b"], config={"model": legacy})
    check_resumable(state, "old.pth", ["a", "b"], model)
    other = {**model, "arch": "something_else"}
    with pytest.raises(CheckpointError, match="model.arch: transformer -> something_else"):
        check_resumable(state, "old.pth", ["a", "b"], other)
