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
        gain_std=0, shift=0.5, stretch=0, time_shift=0, time_masks=0, freq_masks=0, noise_std=0,
        electrode_shift=0, channel_dropout=0, spectral_warp=0,
    )  # fmt: skip
    torch.manual_seed(0)
    out = augment_batch(collate([(x[0], 0)]), cfg, max_frames=64).x[0]
    power = out.exp().mean(dim=(0, 2))
    leaked = [c for c in range(4) if c != 1 and power[c] > 2 * torch.exp(torch.tensor(-10.0))]
    assert leaked in ([0], [2])  # into one neighbour, on the side drawn
    assert power[1] < 1.0  # and the electrode itself keeps the rest


_ONLY = {
    "gain_std": 0, "shift": 0, "stretch": 0, "time_shift": 0, "time_masks": 0, "freq_masks": 0,
    "noise_std": 0, "electrode_shift": 0, "channel_dropout": 0, "spectral_warp": 0,
}  # fmt: skip


def test_whole_electrode_shift_moves_the_array_by_one() -> None:
    x = torch.arange(6.0).repeat(3, 1)[:, :, None].expand(3, 6, 4).clone()  # electrode c = c
    cfg = AugmentConfig(**{**_ONLY, "electrode_shift": 1.0})
    seen = set()
    for seed in range(8):
        torch.manual_seed(seed)
        out = augment_batch(collate([(x, 0)]), cfg, max_frames=64).x[0, 0, :, 0].tolist()
        seen.add(tuple(out))
    assert seen == {(1, 2, 3, 4, 5, 5), (0, 0, 1, 2, 3, 4)}  # one electrode either way


def test_channel_dropout_flattens_whole_electrodes_never_all() -> None:
    x = torch.randn(5, 8, 6)
    cfg = AugmentConfig(**{**_ONLY, "channel_dropout": 0.5})
    flat_counts = set()
    for seed in range(10):
        torch.manual_seed(seed)
        out = augment_batch(collate([(x, 0)]), cfg, max_frames=64).x[0]
        flat = [c for c in range(8) if torch.all(out[:, c] == out[0, c, 0])]
        for c in flat:
            assert torch.allclose(out[0, c, 0], x[:, c].mean())
        kept = [c for c in range(8) if c not in flat]
        assert kept and all(torch.equal(out[:, c], x[:, c]) for c in kept)
        flat_counts.add(len(flat))
    assert max(flat_counts) > 0


def test_spectral_warp_moves_a_peak_along_the_bands() -> None:
    x = torch.zeros(4, 2, 32)
    x[:, :, 16] = 5.0  # a spectral peak in band 16
    peaks = set()
    for seed in range(6):
        torch.manual_seed(seed)
        out = augment_batch(
            collate([(x, 0)]), AugmentConfig(**{**_ONLY, "spectral_warp": 0.3}), 64
        ).x[0]
        assert torch.equal(out[0], out[3])  # the same warp for every frame
        at = {int(out[0, c].argmax()) for c in range(2)}
        assert len(at) == 1 and 11 <= min(at) <= 23  # within 16 * (1 +- 0.3)
        peaks |= at
    assert len(peaks) > 2  # it moves
