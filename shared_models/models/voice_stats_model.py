"""Fixed per-clip log-mel statistics with a linear head: the voice model that learns under DP-SGD.

A recurrent network has too many parameters for DP-SGD on 30-odd clips per hospital; following Tramer and
Boneh (2021) only a linear layer trains, on per-band mean, std and mean absolute frame-to-frame change of
the clip's normalised log-mel. Each feature depends on its clip alone, so per-sample clipping holds. It
keeps the voice models' normalisation buffers, set by the coordinator as for ``voice_crnn``.
"""

from __future__ import annotations

import torch
from torch import nn

from shared_models.taxonomy import NUM_EMOTIONS
from shared_models.models.voice_models import copy_feature_stats

STATS_PER_BAND = 3  # mean, standard deviation, mean absolute change


def clip_statistics(z: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, segments, mels, frames) normalised log-mel, (B, segments) mask -> (B, 3 x mels) per-clip statistics."""
    valid = torch.ones(z.shape[:2], device=z.device) if mask is None else mask.to(z.dtype)
    w = valid[:, :, None, None]
    frames = (valid.sum(1) * z.shape[-1]).clamp(min=1.0)[:, None]
    mean = (z * w).sum((1, 3)) / frames
    var = (((z - mean[:, None, :, None]) ** 2) * w).sum((1, 3)) / frames
    change = (z[..., 1:] - z[..., :-1]).abs()
    change = (change * w).sum((1, 3)) / (valid.sum(1) * change.shape[-1]).clamp(min=1.0)[:, None]
    return torch.cat([mean, var.clamp(min=0).sqrt(), change], dim=1)


class VoiceStatsLinear(nn.Module):
    """Per-band clip statistics of the log-mel (fixed) -> linear classifier (trained); returns logits."""

    def __init__(self, num_classes: int = NUM_EMOTIONS, n_mels: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.register_buffer("feature_mean", torch.zeros(n_mels))
        self.register_buffer("feature_std", torch.ones(n_mels))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(STATS_PER_BAND * n_mels, num_classes)

    def set_feature_stats(self, mean, std) -> None:
        """Per-mel-band normalisation (length n_mels, std > 0), as the other voice models take."""
        copy_feature_stats(self.feature_mean, self.feature_std, mean, std)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[2] != self.n_mels:
            raise ValueError(f"expected log-mel segments (B, segments, {self.n_mels}, frames), got {tuple(x.shape)}")
        z = (x - self.feature_mean.view(1, 1, -1, 1)) / self.feature_std.view(1, 1, -1, 1)
        with torch.no_grad():  # fixed features: nothing upstream of the head is trained
            stats = self.clip_features(clip_statistics(z, mask))
        return self.head(self.dropout(stats))

    @staticmethod
    def clip_features(stats: torch.Tensor) -> torch.Tensor:
        """What the head sees of a clip's statistics (here: the statistics themselves)."""
        return stats


NORM_EPS = 1e-5  # a clip whose statistics are flat across the bands keeps finite features


def standardise_blocks(stats: torch.Tensor) -> torch.Tensor:
    """(B, 3 x mels) -> per clip, each block (band means, spreads, changes) at mean 0 and std 1 across the bands.

    The clip's overall level, gain and spread, which differ with the speaker's sex, the microphone and the
    room, are divided out; the shape across the bands (formants, tilt, where the pitch harmonics move)
    stays. Each clip's features depend on that clip alone, so DP-SGD's per-sample sensitivity holds.
    """
    # unflatten, not reshape(len(stats), ...): an empty batch works, and ONNX export keeps the batch dimension free
    blocks = stats.unflatten(-1, (STATS_PER_BAND, stats.shape[-1] // STATS_PER_BAND))
    centred = blocks - blocks.mean(-1, keepdim=True)
    spread = centred.square().mean(-1, keepdim=True).sqrt()  # std(correction=0), without its warning on no rows
    blocks = centred / (spread + NORM_EPS)
    return blocks.reshape(stats.shape)


class VoiceStatsNormLinear(VoiceStatsLinear):
    """voice_stats with each clip's statistics standardised across the bands: the fairness front end for voices
    (docs/fairness.md, "DP without widening the gaps"). Same head, same parameters, no extra privacy cost."""

    clip_features = staticmethod(standardise_blocks)

