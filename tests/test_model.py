"""The spatiotemporal transformer: shapes, padding invariance, limits, stable parameter names."""

from __future__ import annotations

import pytest
import torch

from ssr.config import ModelConfig
from ssr.errors import DataError
from ssr.model import SpatiotemporalTransformer, build_model, parameter_count

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = ModelConfig(hidden_size=16, num_layers=2, num_heads=2, input_size=8, max_frames=32)


def test_logits_shape_and_gradients() -> None:
    torch.manual_seed(0)
    model = build_model(CFG, num_classes=5)
    assert isinstance(model, SpatiotemporalTransformer)
    x = torch.randn(3, 7, 8, 8)
    logits = model(x)
    assert logits.shape == (3, 5)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_padding_does_not_change_outputs() -> None:
    torch.manual_seed(0)
    model = build_model(CFG, num_classes=4).eval()
    short, long = torch.randn(1, 5, 8, 8), torch.randn(1, 11, 8, 8)
    alone = model(short)
    garbage = 100 * torch.randn(1, 6, 8, 8)  # whatever sits in the padding must not matter
    batch = torch.cat([torch.cat([short, garbage], dim=1), long])
    mask = torch.zeros(2, 11, dtype=torch.bool)
    mask[0, 5:] = True
    batched = model(batch, mask)
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[1], model(long)[0], atol=1e-5, rtol=1e-5)


def test_too_long_utterance_is_a_clear_error() -> None:
    model = build_model(CFG, num_classes=4)
    with pytest.raises(DataError, match="max_frames=32"):
        model(torch.randn(1, 33, 8, 8))


def test_wrong_channel_count_is_a_clear_error() -> None:
    model = build_model(CFG, num_classes=4)
    with pytest.raises(DataError, match="8 channels"):
        model(torch.randn(1, 5, 6, 8))


def test_state_dict_keys_are_named() -> None:
    keys = list(build_model(CFG, num_classes=4).state_dict())
    for name in (
        "input_proj.weight",
        "electrode_embedding.weight",
        "final_norm.weight",
        "classifier.weight",
        "blocks.0.spatial.qkv.weight",
        "blocks.1.temporal.ff_out.bias",
    ):
        assert name in keys
    assert not any(k.split(".")[0].isdigit() for k in keys)
    assert "position_encoding" not in keys  # derived, not a parameter


def test_seed_sized_model_parameter_count() -> None:
    model = build_model(ModelConfig(), num_classes=10)
    # 6 factorised blocks x 2 pre-norm layers x ~12 h^2 weights, h=256: ~9.5 M parameters.
    assert 9_000_000 < parameter_count(model) < 10_000_000


def test_electrode_gain_offset_does_not_change_outputs() -> None:
    # A session's electrode gain is an additive per-channel offset in log power: removed.
    torch.manual_seed(0)
    model = build_model(CFG, num_classes=4).eval()
    x = torch.randn(2, 6, 8, 8)
    offset = 3 * torch.randn(1, 1, 8, 1)
    torch.testing.assert_close(model(x + offset), model(x), atol=1e-4, rtol=1e-4)


def test_band_centring_removes_each_electrodes_spectral_shape() -> None:
    # centring=band (the default): a static offset per electrode and band (a session's spectral
    # shape) is removed too; centring=electrode removes only one offset per electrode.
    torch.manual_seed(0)
    x = torch.randn(2, 6, 8, 8)
    shape = 2 * torch.randn(1, 1, 8, 8)
    band = build_model(CFG, num_classes=4).eval()  # the default
    torch.testing.assert_close(band(x + shape), band(x), atol=1e-4, rtol=1e-4)
    electrode = build_model(CFG.model_copy(update={"centring": "electrode"}), 4).eval()
    assert not torch.allclose(electrode(x + shape), electrode(x), atol=1e-3)


def test_classifier_sees_each_electrode() -> None:
    # Pooled per electrode and concatenated: swapping two electrodes' features is visible.
    torch.manual_seed(0)
    model = build_model(CFG, num_classes=4).eval()
    assert model.classifier.in_features == CFG.segments * CFG.num_channels * CFG.hidden_size
    x = torch.randn(1, 6, 8, 8)
    swapped = x[:, :, [1, 0, 2, 3, 4, 5, 6, 7]]
    assert not torch.allclose(model(x), model(swapped), atol=1e-4)


def test_model_arch_picks_a_registered_architecture() -> None:
    from torch import nn

    from ssr.errors import ConfigError
    from ssr.model import ARCHITECTURES, register_architecture

    assert isinstance(build_model(CFG, num_classes=3), SpatiotemporalTransformer)

    @register_architecture("test_linear")
    class Linear(nn.Module):
        def __init__(self, cfg, num_classes: int) -> None:
            super().__init__()
            self.out = nn.Linear(cfg.num_channels * cfg.input_size, num_classes)

        def forward(self, x, padding_mask=None):
            return self.out(x.mean(dim=1).flatten(1))

    try:
        model = build_model(CFG.model_copy(update={"arch": "test_linear"}), num_classes=3)
        assert isinstance(model, Linear)
        assert model(torch.zeros(2, 5, CFG.num_channels, CFG.input_size)).shape == (2, 3)
        with pytest.raises(ConfigError, match=r"model.arch='nope'.*test_linear, transformer"):
            build_model(CFG.model_copy(update={"arch": "nope"}), num_classes=3)
    finally:
        ARCHITECTURES.pop("test_linear")
