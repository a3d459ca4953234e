"""The spatiotemporal transformer over (frames, electrodes, spectral bins) EMG features.

The log band powers are first centred on their mean over the utterance's valid frames
(``model.centring``): ``band`` (default) per electrode and band, removing both a recording
session's electrode gain and its spectral shape (additive offsets in log power, per electrode
or per band); ``electrode`` per electrode over all bins, removing the gain only. The
``input_size`` bins are then projected to ``hidden_size`` by one shared
linear layer, plus a learned electrode embedding and a sinusoidal frame position encoding. Each
of the ``num_layers`` blocks attends first across the electrodes of one frame (spatial), then
across the frames of one electrode (temporal, padding masked).

The readout keeps the order of events (``model.readout``):

* ``segments`` (default): the utterance's active region is found from its frame energy (the
  frames louder than the midpoint between its quietest and loudest frame, plus one either
  side), and ``model.segments`` relative-time points spread over that region each pool the
  frames near them (Gaussian weights in relative time). A word spoken earlier, later, faster or
  slower lands on the same points, and "A then B" differs from "B then A".
* ``mean``: one mean over all valid frames (order-blind; kept for comparison).

Pooling is per electrode and the electrodes' vectors are concatenated for the classifier, so
the electrode pattern reaches it; padding never changes the output.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import cast

import torch
from torch import nn

from ssr.architectures import ARCHITECTURES, ModelFactory, register_architecture
from ssr.config import ModelConfig
from ssr.errors import ConfigError
from ssr.model_blocks import (
    AttentionBlock,
    FactorisedBlock,
    centre_utterances,
    check_model_input,
    sinusoidal_encoding,
)
from ssr.sentences.model import CTCTransformer  # registers model.arch ctc_transformer

__all__ = [
    "ARCHITECTURES",
    "AttentionBlock",
    "CTCTransformer",
    "ModelFactory",
    "SpatiotemporalTransformer",
    "build_model",
    "parameter_count",
    "register_architecture",
    "sinusoidal_encoding",
]


@register_architecture("transformer")
class SpatiotemporalTransformer(nn.Module):
    """Classify a padded batch ``x`` (B, T, C, F) of utterances into ``num_classes`` words."""

    position_encoding: torch.Tensor  # buffers (register_buffer), declared for the type checker
    segment_centres: torch.Tensor

    def __init__(self, cfg: ModelConfig, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"need at least 2 classes, got {num_classes}")
        self.cfg = cfg.model_copy()
        self.num_classes = num_classes
        h = cfg.hidden_size
        self.input_proj = nn.Linear(cfg.input_size, h)
        self.electrode_embedding = nn.Embedding(cfg.num_channels, h)
        self.register_buffer(
            "position_encoding", sinusoidal_encoding(cfg.max_frames, h), persistent=False
        )
        self.input_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            FactorisedBlock(h, cfg.num_heads, cfg.dropout) for _ in range(cfg.num_layers)
        )
        self.final_norm = nn.LayerNorm(h)
        points = cfg.segments if cfg.readout == "segments" else 1
        self.register_buffer(
            "segment_centres", (torch.arange(points) + 0.5) / points, persistent=False
        )
        self.classifier = nn.Linear(points * cfg.num_channels * h, num_classes)
        self._init_for_stable_start()

    def _init_for_stable_start(self) -> None:
        """Small residual-branch outputs and classifier weights: training starts from nearly
        uniform predictions and near-identity blocks, so deep models need no learning-rate
        warmup."""
        std = 0.02 / math.sqrt(4 * len(self.blocks))  # 4 residual branches per block
        for block in cast("Iterable[FactorisedBlock]", self.blocks):
            for layer in (block.spatial, block.temporal):
                for out in (layer.attn_out, layer.ff_out):
                    nn.init.normal_(out.weight, std=std)
                    nn.init.zeros_(out.bias)
        nn.init.normal_(self.classifier.weight, std=0.1 / math.sqrt(self.classifier.in_features))
        nn.init.zeros_(self.classifier.bias)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise DataError when ``x`` does not fit this model's shape or ``max_frames``."""
        check_model_input(self.cfg, x)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, num_classes); ``padding_mask`` (B, T) bool, True = padding frame."""
        self.check_input(x)
        b, t, c, _ = x.shape
        if padding_mask is None:
            padding_mask = torch.zeros(b, t, dtype=torch.bool, device=x.device)
        weights = self.readout_weights(x, padding_mask)  # (B, T, K), computed on the raw input
        valid = (~padding_mask).to(x.dtype)[:, :, None, None]  # (B, T, 1, 1)
        x = centre_utterances(x, valid, self.cfg.centring)
        pos = self.position_encoding[:t].to(x.dtype)
        h = self.input_proj(x) + self.electrode_embedding.weight + pos[None, :, None, :]
        h = self.input_dropout(h)
        for block in self.blocks:
            h = block(h, padding_mask)
        h = self.final_norm(h)  # (B, T, C, H)
        pooled = torch.einsum("btk,btch->bkch", weights.to(h.dtype), h)  # per point, electrode
        logits: torch.Tensor = self.classifier(pooled.flatten(1))
        return logits

    def readout_weights(self, x: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, K) pooling weights of each frame for each readout point; rows sum to 1 over T.

        ``mean``: uniform over valid frames. ``segments``: Gaussian in relative time around
        each point of the active region (see the module docstring).
        """
        valid = ~padding_mask  # (B, T)
        if self.cfg.readout == "mean":
            w = valid.to(x.dtype)
            return (w / w.sum(dim=1, keepdim=True).clamp_min(1.0))[:, :, None]
        t = x.shape[1]
        energy = x.mean(dim=(2, 3))  # (B, T) mean log band power of each frame
        lo = energy.masked_fill(~valid, float("inf")).amin(dim=1, keepdim=True)
        hi = energy.masked_fill(~valid, float("-inf")).amax(dim=1, keepdim=True)
        active = valid & (energy >= lo + 0.5 * (hi - lo))
        steps = torch.arange(t, device=x.device)[None, :].expand_as(active)
        first = steps.masked_fill(~active, t).amin(dim=1, keepdim=True)
        last = steps.masked_fill(~active, -1).amax(dim=1, keepdim=True)
        lengths = valid.sum(dim=1, keepdim=True)
        first = (first - 1).clamp_min(0)
        last = torch.minimum(last + 1, lengths - 1)
        span = (last - first).clamp_min(1).to(x.dtype)
        rel = (steps - first).to(x.dtype) / span  # (B, T): 0 at the region's start, 1 at its end
        inside = (steps >= first) & (steps <= last)
        width = 0.5 / self.segment_centres.numel()
        dist = (rel[:, :, None] - self.segment_centres.to(x.dtype)) / width  # (B, T, K)
        logits = (-0.5 * dist * dist).masked_fill(~inside[:, :, None], float("-inf"))
        return logits.softmax(dim=1)


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """The ``model.arch`` architecture described by ``cfg`` with a ``num_classes``-way
    classifier; an unknown name is a ConfigError listing the registered ones."""
    factory = ARCHITECTURES.get(cfg.arch)
    if factory is None:
        raise ConfigError(
            f"model.arch={cfg.arch!r} is not a registered architecture "
            f"(registered: {', '.join(sorted(ARCHITECTURES))})"
        )
    return factory(cfg, num_classes)


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
