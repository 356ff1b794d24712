"""Per-segment CNN layers with exact Opacus per-sample gradients (the voice models' front end).

Per-sample gradients require every parametrised layer to see the sample as
its batch dimension. Running a plain CNN on (B*S) segment images would give
Opacus B*S "samples" and silently break per-sample clipping. These layers
take (B, S, C, H, W), compute on the flattened (B*S) images (fast 2-D
kernels); their per-sample gradient rules, which sum each sample's segment
gradients, live with the node's clipping engine (client/privacy/clipping/segment_rules.py). GroupNorm statistics are per segment, so a padded segment cannot
leak into a real one. See shared_models/models/voice_models.py for the whole model.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SegmentCNN", "SegmentConv2d", "SegmentGroupNorm", "SegmentMaxPool2d"]


# ---------------------------------------------------------------------------
# Segment CNN
# ---------------------------------------------------------------------------


class SegmentConv2d(nn.Conv2d):
    """``nn.Conv2d`` shared by all segments of a sample: (B, S, C, H, W) -> (B, S, C', H', W').

    The convolution itself runs on the (B*S) segment images (a free reshape),
    but Opacus's hooks see the (B, S, ...) tensors, so the per-sample gradient
    (registered below) is the sum over that sample's segments. The segment
    layers subclass the torch layers (rather than wrap them) because Opacus
    looks grad samplers up by exact module type.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.groups != 1 or isinstance(self.padding, str):
            raise ValueError("SegmentConv2d supports groups=1 and numeric padding only")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class SegmentGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` per segment on (B, S, C, H, W): statistics per sample *and* segment.

    Pooling statistics across a sample's segments would let values in a padded
    segment shift the normalisation of real ones. The per-channel affine is
    shared by all segments.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class SegmentMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` per segment on (B, S, C, H, W) (no parameters, no hooks)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class SegmentCNN(nn.Module):
    """Shared 2-D CNN applied to every segment: (B, S, M, T) -> (B, S, segment_dim).

    Each block is conv -> GroupNorm -> ELU -> 2x2 max-pool, all per segment;
    the final feature map (channels x M/2^k x T/2^k) is flattened and projected
    to ``segment_dim``. Flattening, rather than global pooling, keeps where in
    the spectrum energy sits (pitch and formant positions carry emotion).

    Cost is dominated by the first block, which runs at full 128x32 resolution
    on every segment: 8 first-layer channels (the default) train about twice
    as fast as 16 on CPU, with nearly the same parameter count. ``norm_groups`` defaults lower than for faces
    (several channels per group even at 8 channels) so normalisation keeps
    relative channel levels (segment energy is an arousal cue).
    """

    def __init__(
        self,
        n_mels: int = 128,
        n_frames: int = 32,
        channels: Sequence[int] = (8, 16, 32, 64),
        kernel_size: int = 3,
        norm_groups: int = 4,
        segment_dim: int = 128,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("channels must list at least one conv block")
        scale = 2 ** len(channels)
        if n_mels % scale or n_frames % scale:
            raise ValueError(
                f"n_mels ({n_mels}) and n_frames ({n_frames}) must be divisible by 2**len(channels) = {scale}"
            )
        layers: list[nn.Module] = []
        in_ch = 1
        for out_ch in channels:
            layers += [
                # No conv bias: GroupNorm's shift replaces it.
                SegmentConv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False),
                SegmentGroupNorm(min(norm_groups, out_ch), out_ch),
                nn.ELU(),
                SegmentMaxPool2d(2),
            ]
            in_ch = out_ch
        self.blocks = nn.Sequential(*layers)
        flat = in_ch * (n_mels // scale) * (n_frames // scale)
        self.project = nn.Sequential(nn.Flatten(2), nn.Linear(flat, segment_dim), nn.ELU())
        self.out_features = segment_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.blocks(x.unsqueeze(2)))  # (B, S, 1, M, T) -> (B, S, D)
