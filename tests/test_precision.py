"""training.precision: which autocast dtype each setting picks, and the fp16 gradient scaler
(checkpointed, restored, and its skipped overflow steps are not divergence). Runs on CPU: the
CUDA cases monkeypatch torch.cuda's capability queries; nothing here measures a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers_data import tiny_overrides

from ssr.config import load_config
from ssr.errors import ConfigError
from ssr.training.checkpoint import load_checkpoint
from ssr.training.runtime import autocast_dtype, grad_scaler, precision_name
from ssr.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("precision", "device", "bf16_ok", "expected"),
    [
        ("auto", CPU, True, None),
        ("auto", CUDA, True, torch.bfloat16),
        ("auto", CUDA, False, torch.float16),
        ("fp32", CUDA, True, None),
        ("bf16", CPU, False, torch.bfloat16),
        ("fp16", CPU, True, torch.float16),
        ("fp16", CUDA, True, torch.float16),
    ],
)
def test_precision_selection(
    monkeypatch: pytest.MonkeyPatch,
    precision: str,
    device: torch.device,
    bf16_ok: bool,
    expected: torch.dtype | None,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: device.type == "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    dtype = autocast_dtype(precision, device)
    assert dtype is expected
    # the scaler is on exactly for fp16
    assert grad_scaler(CPU, dtype).is_enabled() == (expected is torch.float16)
    assert precision_name(dtype) == {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(
        expected, "fp32"
    )


def test_fp16_is_a_valid_setting_and_others_are_not() -> None:
    assert load_config(None, ["training.precision=fp16"]).training.precision == "fp16"
    with pytest.raises(ConfigError, match=r"training\.precision"):
        load_config(None, ["training.precision=fp8"])


class HugeLossScale(Trainer):
    """fp16 with a loss scale so large that every scaled gradient overflows: the scaler skips
    every step (and halves the scale), as it does while it calibrates on a GPU."""

    def _build(self) -> None:
        super()._build()
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, growth_interval=10_000)
        self.initial = {k: v.clone() for k, v in self.model.state_dict().items()}


def test_fp16_scaler_skips_overflowing_steps_and_is_checkpointed(
    processed: Path, tmp_path: Path
) -> None:
    args = tiny_overrides(
        processed, tmp_path, training__num_epochs=1, training__viz_interval=100
    ) + ["training.precision=fp16"]
    trainer = HugeLossScale(load_config(None, args))
    result = trainer.fit()  # no "training loss became inf": the loss itself is finite
    assert result.epochs_run == 1 and trainer.global_step == 6
    for name, tensor in trainer.initial.items():  # every step was skipped
        assert torch.equal(trainer.model.state_dict()[name], tensor), name
    state = load_checkpoint(str(tmp_path / "checkpoints" / "last.pth"))
    assert state["scaler"]["scale"] == 2.0**127 / 2**6  # halved at each of the 6 skips

    # resumed: the scaler continues from the stored scale (a fresh one would start at 2**16)
    args2 = [a for a in args if not a.startswith("training.num_epochs")]
    resumed = Trainer(load_config(None, [*args2, "training.num_epochs=2"]))
    resumed.fit(resume=str(tmp_path / "checkpoints" / "last.pth"))
    assert resumed.scaler.is_enabled()
    after = load_checkpoint(str(tmp_path / "checkpoints" / "last.pth"))
    assert after["epoch"] == 2 and after["scaler"]["scale"] == 2.0**127 / 2**12


def test_fp32_checkpoint_has_an_empty_scaler_state(processed: Path, tmp_path: Path) -> None:
    args = tiny_overrides(processed, tmp_path, training__num_epochs=1, training__viz_interval=100)
    trainer = Trainer(load_config(None, args))
    trainer.fit()
    assert not trainer.scaler.is_enabled() and trainer.amp_dtype is None
    assert load_checkpoint(str(tmp_path / "checkpoints" / "last.pth"))["scaler"] == {}
