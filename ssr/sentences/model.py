"""``model.arch: ctc_transformer``: the spatiotemporal transformer's encoder with a frame-level
CTC head, for ``task: sentences``.

Each frame's log band powers are centred per utterance (``model.centring``, as in
:class:`ssr.model.SpatiotemporalTransformer`) and projected per electrode to ``hidden_size``
with a learned electrode embedding. A strided convolution over time, shared by the electrodes,
keeps one frame in ``model.subsample`` (about 50 output frames per second from a 10 ms hop with
subsample 2, so a character spans several frames). One spatial attention block then attends
across the electrodes of each output frame, the electrodes' vectors are merged into one frame
vector, and ``num_layers`` temporal blocks attend across the frames (padding masked) before a
linear CTC head over the units (the blank first). Attending across frames once per utterance
rather than once per electrode keeps a sentence model trainable on a CPU; attention weights are
not dropped (the residual branches are), so CPU attention uses its fused kernels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssr.architectures import register_architecture
from ssr.config import ModelConfig
from ssr.model_blocks import (
    AttentionBlock,
    centre_utterances,
    check_model_input,
    sinusoidal_encoding,
)
from ssr.sentences.units import output_frames


@register_architecture("ctc_transformer")
class CTCTransformer(nn.Module):
    """Map a padded batch ``x`` (B, T, C, F) to per-frame logits (B, T', num_units)."""

    position_encoding: torch.Tensor

    def __init__(self, cfg: ModelConfig, num_units: int) -> None:
        super().__init__()
        if num_units < 2:
            raise ValueError(f"need the blank and at least one unit, got {num_units}")
        self.cfg = cfg.model_copy()
        self.num_classes = num_units
        h, s, p = cfg.hidden_size, cfg.subsample, cfg.dropout
        self.input_proj = nn.Linear(cfg.input_size, h)
        self.electrode_embedding = nn.Embedding(cfg.num_channels, h)
        self.subsample = nn.Conv1d(h, h, kernel_size=2 * s + 1, stride=s, padding=s)
        self.spatial = AttentionBlock(h, cfg.num_heads, p, attention_dropout=0.0)
        self.merge = nn.Linear(cfg.num_channels * h, h)
        self.register_buffer(
            "position_encoding",
            sinusoidal_encoding(output_frames(cfg.max_frames, s), h),
            persistent=False,
        )
        self.input_dropout = nn.Dropout(p)
        self.blocks = nn.ModuleList(
            AttentionBlock(h, cfg.num_heads, p, attention_dropout=0.0)
            for _ in range(cfg.num_layers)
        )
        self.final_norm = nn.LayerNorm(h)
        self.head = nn.Linear(h, num_units)
        std = 0.02 / math.sqrt(2 * (len(self.blocks) + 1))  # 2 residual branches per block
        for layer in (self.spatial, *self.blocks):
            assert isinstance(layer, AttentionBlock)
            for out in (layer.attn_out, layer.ff_out):
                nn.init.normal_(out.weight, std=std)
                nn.init.zeros_(out.bias)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Output frames per utterance for input ``lengths`` (B,)."""
        s = self.cfg.subsample
        return torch.div(lengths + s - 1, s, rounding_mode="floor")

    def check_input(self, x: torch.Tensor) -> None:
        """Raise DataError when ``x`` does not fit the model (shape, ``max_frames``)."""
        check_model_input(self.cfg, x)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T', num_units); ``padding_mask`` (B, T) bool, True = padding frame."""
        self.check_input(x)
        b, t, c, _ = x.shape
        if padding_mask is None:
            padding_mask = torch.zeros(b, t, dtype=torch.bool, device=x.device)
        valid = (~padding_mask).to(x.dtype)[:, :, None, None]
        x = centre_utterances(x, valid, self.cfg.centring)
        # padding frames are zero going into the strided convolution, as its own padding is
        h = (self.input_proj(x) + self.electrode_embedding.weight) * valid  # (B, T, C, H)
        hd = h.shape[-1]
        h = F.gelu(self.subsample(h.permute(0, 2, 3, 1).reshape(b * c, hd, t)))  # (B*C, H, T')
        t_out = h.shape[-1]
        h = h.view(b, c, hd, t_out).permute(0, 3, 1, 2).reshape(b * t_out, c, hd)
        h = self.spatial(h).view(b, t_out, c * hd)  # across the electrodes of each frame
        h = self.merge(h) + self.position_encoding[:t_out].to(h.dtype)[None]
        h = self.input_dropout(h)
        out_mask = (
            torch.arange(t_out, device=x.device)[None, :]
            >= self.output_lengths((~padding_mask).sum(dim=1))[:, None]
        )
        for block in self.blocks:
            h = block(h, out_mask)
        logits: torch.Tensor = self.head(self.final_norm(h))
        return logits
