"""Building blocks shared by the model architectures: pre-norm attention, the factorised
spatial/temporal block, the sinusoidal frame position table and the input check."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssr.config import ModelConfig
from ssr.errors import DataError


class AttentionBlock(nn.Module):
    """Pre-norm transformer layer: self-attention then a feed-forward network, both residual.

    ``attention_dropout`` (default: ``dropout``) drops attention weights; 0 lets PyTorch use
    its fused attention kernels on CPU, where dropout inside attention takes the slow path.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        dropout: float,
        attention_dropout: float | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout if attention_dropout is None else attention_dropout
        self.attn_norm = nn.LayerNorm(hidden_size)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.attn_out = nn.Linear(hidden_size, hidden_size)
        self.ff_norm = nn.LayerNorm(hidden_size)
        self.ff_in = nn.Linear(hidden_size, 4 * hidden_size)
        self.ff_out = nn.Linear(4 * hidden_size, hidden_size)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x`` (N, S, H); ``key_padding_mask`` (N, S) bool, True = ignore that key."""
        n, s, h = x.shape
        q, k, v = (
            self.qkv(self.attn_norm(x))
            .view(n, s, 3, self.num_heads, h // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        attn_mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        a = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.attn_out(a.transpose(1, 2).reshape(n, s, h)))
        out: torch.Tensor = x + self.drop(
            self.ff_out(self.drop(F.gelu(self.ff_in(self.ff_norm(x)))))
        )
        return out


class FactorisedBlock(nn.Module):
    """Spatial attention across electrodes within each frame, then temporal across frames."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.spatial = AttentionBlock(hidden_size, num_heads, dropout)
        self.temporal = AttentionBlock(hidden_size, num_heads, dropout)

    def forward(self, h: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """``h`` (B, T, C, H); ``padding_mask`` (B, T) bool, True = padding frame."""
        b, t, c, d = h.shape
        h = self.spatial(h.reshape(b * t, c, d)).view(b, t, c, d)
        ht = h.permute(0, 2, 1, 3).reshape(b * c, t, d)
        ht = self.temporal(ht, padding_mask.repeat_interleave(c, dim=0))
        out: torch.Tensor = ht.view(b, c, t, d).permute(0, 2, 1, 3)
        return out


def sinusoidal_encoding(max_frames: int, hidden_size: int) -> torch.Tensor:
    """The (max_frames, hidden_size) sine/cosine position table."""
    pos = torch.arange(max_frames, dtype=torch.float32)[:, None]
    freq = torch.exp(
        torch.arange(0, hidden_size, 2, dtype=torch.float32) * (-math.log(10000.0) / hidden_size)
    )
    table = torch.zeros(max_frames, hidden_size)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: hidden_size // 2])
    return table


def check_model_input(cfg: ModelConfig, x: torch.Tensor) -> None:
    """Raise DataError when ``x`` does not fit a model of ``cfg`` (shape, ``max_frames``)."""
    if x.ndim != 4:
        raise DataError(
            f"model input must be (batch, frames, channels, bins), got {tuple(x.shape)}"
        )
    _, t, c, f = x.shape
    if c != cfg.num_channels or f != cfg.input_size:
        raise DataError(
            f"model expects {cfg.num_channels} channels x {cfg.input_size} bins, data has {c} x {f}"
        )
    if t > cfg.max_frames:
        raise DataError(
            f"utterance of {t} frames exceeds model.max_frames={cfg.max_frames}; "
            "raise model.max_frames (and retrain) or split long recordings"
        )


def centre_utterances(x: torch.Tensor, valid: torch.Tensor, centring: str) -> torch.Tensor:
    """``x`` (B, T, C, F) minus each utterance's mean log power over its valid frames
    (``valid`` (B, T, 1, 1), 1.0 for a real frame): per electrode and band (``band``), or per
    electrode over all bands (``electrode``, the session gain only)."""
    frames = valid.sum(dim=1, keepdim=True).clamp_min(1.0)
    if centring == "band":
        return x - (x * valid).sum(dim=1, keepdim=True) / frames
    return x - (x * valid).sum(dim=(1, 3), keepdim=True) / (frames * x.shape[-1])
