"""Session augmentation on padded batches: lengths, padding, determinism, the off switch."""

from __future__ import annotations

import torch

from ssr.config import AugmentConfig
from ssr.data.processed import collate
from ssr.training.augment import augment_batch


def _batch():  # -> Batch
    g = torch.Generator().manual_seed(0)
    items = [(torch.randn(n, 4, 8, generator=g), i % 2) for i, n in enumerate((5, 9, 12))]
    return collate(items)


def test_disabled_returns_the_batch_unchanged() -> None:
    batch = _batch()
    assert augment_batch(batch, AugmentConfig(enabled=False), max_frames=64) is batch


def test_augmented_batch_keeps_labels_pads_with_zeros_and_is_seeded() -> None:
    batch, cfg = _batch(), AugmentConfig(stretch=0.5)
    torch.manual_seed(3)
    first = augment_batch(batch, cfg, max_frames=64)
    torch.manual_seed(3)
    again = augment_batch(batch, cfg, max_frames=64)
    assert torch.equal(first.x, again.x) and torch.equal(first.lengths, again.lengths)
    assert torch.equal(first.labels, batch.labels)
    assert not torch.equal(first.lengths, batch.lengths)  # a 50 % rate change moves lengths
    assert first.x.shape[1] == int(first.lengths.max())
    for row, n in zip(first.x, first.lengths.tolist(), strict=True):
        assert torch.all(row[n:] == 0) and torch.isfinite(row[:n]).all()
    assert not torch.allclose(first.x[0, :5], batch.x[0, :5])


def test_stretch_never_exceeds_max_frames() -> None:
    out = augment_batch(_batch(), AugmentConfig(stretch=0.9), max_frames=10)
    assert int(out.lengths.max()) <= 10


def test_electrode_shift_mixes_power_of_the_neighbour_only() -> None:
    x = torch.full((1, 6, 4, 2), -10.0)
    x[0, :, 1] = 0.0  # only electrode 1 carries power
    cfg = AugmentConfig(
        gain_std=0, shift=0.5, stretch=0, time_shift=0, time_masks=0, freq_masks=0, noise_std=0
    )
    torch.manual_seed(0)
    out = augment_batch(collate([(x[0], 0)]), cfg, max_frames=64).x[0]
    power = out.exp().mean(dim=(0, 2))
    leaked = [c for c in range(4) if c != 1 and power[c] > 2 * torch.exp(torch.tensor(-10.0))]
    assert leaked in ([0], [2])  # into one neighbour, on the side drawn
    assert power[1] < 1.0  # and the electrode itself keeps the rest
