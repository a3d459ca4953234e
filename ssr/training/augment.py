"""Training-time augmentation that mimics what changes between recording sessions.

Applied to a padded batch of log band-power features (B, T, C, F) in the training process,
drawing from torch's global RNG (checkpointed, so a resume replays the same draws). Each
utterance gets its own draw of:

* ``gain_std``: a per-electrode offset in log power (electrode gain / skin contact);
* ``shift``: a fraction of a neighbouring electrode's power mixed in (the array sits a little
  off, or crosstalk is stronger);
* ``electrode_shift``: with this probability the whole array is moved by one electrode (the
  channels rolled by +-1, the electrode at the open edge repeated), as when the array is
  attached one electrode off;
* ``channel_dropout``: each electrode, with this probability, is flattened to its mean (a
  lost contact), so no single electrode can carry the decision;
* ``spectral_warp``: the band axis resampled by a factor in ``1 +- spectral_warp`` (tissue and
  contact move the spectral peak of the muscles under an electrode);
* ``stretch``: speaking rate, the valid frames resampled by a factor in ``1 +- stretch``;
* ``time_shift``: the valid frames rolled by up to that many frames;
* ``time_masks`` x ``time_mask_frames``, ``freq_masks`` x ``freq_mask_bands``: SpecAugment-
  style spans set to the utterance's mean;
* ``noise_std``: Gaussian noise on the log powers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssr.config import AugmentConfig
from ssr.data.processed import Batch


def _stretch(x: torch.Tensor, factor: float, max_frames: int) -> torch.Tensor:
    """(T, C, F) resampled along T to ``round(T * factor)`` frames (at least 1)."""
    t, c, f = x.shape
    new = max(1, min(max_frames, int(round(t * factor))))
    if new == t or t < 2:
        return x
    flat = x.permute(1, 2, 0).reshape(1, c * f, t)
    out = F.interpolate(flat, size=new, mode="linear", align_corners=True)
    return out.reshape(c, f, new).permute(2, 0, 1)


def _mix_neighbour(x: torch.Tensor, amount: float, direction: int) -> torch.Tensor:
    """Mix ``amount`` of each electrode's neighbour (``direction`` +-1) into it, in power."""
    if amount <= 0:
        return x
    neighbour = torch.roll(x, shifts=direction, dims=1)
    edge = 0 if direction > 0 else -1  # the edge electrode has no neighbour on that side
    neighbour[:, edge] = x[:, edge]
    return torch.logaddexp(x + math.log1p(-amount), neighbour + math.log(amount))


def _displace(x: torch.Tensor, by: int) -> torch.Tensor:
    """The array moved by ``by`` (+-1) electrodes: channel c reads what c + by read; the
    electrode at the open edge repeats its neighbour."""
    c = x.shape[1]
    index = torch.arange(c) + by
    return x[:, index.clamp(0, c - 1)]


def _drop_channels(x: torch.Tensor, p: float) -> torch.Tensor:
    """Each electrode flattened to its mean (over frames and bands) with probability ``p``;
    never all of them."""
    drop = torch.rand(x.shape[1]) < p
    if not drop.any() or drop.all():
        return x
    means = x.mean(dim=(0, 2), keepdim=True).expand_as(x)
    return torch.where(drop[None, :, None], means, x)


def _warp_bands(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Band ``j`` of the result reads band ``j / factor`` (linear interpolation, edges held)."""
    f = x.shape[2]
    src = (torch.arange(f, dtype=x.dtype) / factor).clamp(0, f - 1)
    lo = src.floor().long()
    hi = (lo + 1).clamp_max(f - 1)
    w = src - lo.to(x.dtype)
    return x[:, :, lo] * (1 - w) + x[:, :, hi] * w


def _mask(x: torch.Tensor, count: int, width: int, dim: int) -> torch.Tensor:
    size = x.shape[dim]
    if count <= 0 or width <= 0 or size < 2:
        return x
    fill = x.mean()
    for _ in range(count):
        w = int(torch.randint(0, min(width, size - 1) + 1, ()).item())
        if w == 0:
            continue
        start = int(torch.randint(0, size - w + 1, ()).item())
        index = [slice(None)] * x.ndim
        index[dim] = slice(start, start + w)
        x[tuple(index)] = fill
    return x


def augment_utterance(x: torch.Tensor, cfg: AugmentConfig, max_frames: int) -> torch.Tensor:
    """One utterance (T, C, F) augmented as configured (a new tensor)."""
    x = x.clone()
    c = x.shape[1]
    if cfg.stretch > 0:
        factor = 1.0 + (2 * torch.rand(()).item() - 1) * cfg.stretch
        x = _stretch(x, factor, max_frames)
    if cfg.time_shift > 0 and x.shape[0] > 1:
        x = torch.roll(x, int(torch.randint(-cfg.time_shift, cfg.time_shift + 1, ())), dims=0)
    if cfg.electrode_shift > 0 and c > 1 and torch.rand(()).item() < cfg.electrode_shift:
        x = _displace(x, 1 if torch.rand(()).item() < 0.5 else -1)
    if cfg.shift > 0 and c > 1:
        amount = torch.rand(()).item() * cfg.shift
        x = _mix_neighbour(x, amount, 1 if torch.rand(()).item() < 0.5 else -1)
    if cfg.gain_std > 0:
        x = x + torch.randn(1, c, 1) * cfg.gain_std
    if cfg.spectral_warp > 0 and x.shape[2] > 1:
        x = _warp_bands(x, 1.0 + (2 * torch.rand(()).item() - 1) * cfg.spectral_warp)
    if cfg.channel_dropout > 0 and c > 1:
        x = _drop_channels(x, cfg.channel_dropout)
    x = _mask(x, cfg.time_masks, cfg.time_mask_frames, 0)
    x = _mask(x, cfg.freq_masks, cfg.freq_mask_bands, 2)
    if cfg.noise_std > 0:
        x = x + torch.randn_like(x) * cfg.noise_std
    return x


def augment_batch(batch: Batch, cfg: AugmentConfig, max_frames: int) -> Batch:
    """A new padded batch with every utterance augmented (lengths change with ``stretch``)."""
    if not cfg.enabled:
        return batch
    items = [
        augment_utterance(batch.x[i, : int(n)], cfg, max_frames)
        for i, n in enumerate(batch.lengths.tolist())
    ]
    lengths = torch.tensor([len(u) for u in items], dtype=torch.long)
    x = batch.x.new_zeros(len(items), int(lengths.max()), *batch.x.shape[2:])
    for i, u in enumerate(items):
        x[i, : len(u)] = u
    return Batch(x, lengths, batch.labels, batch.targets, batch.target_lengths)
