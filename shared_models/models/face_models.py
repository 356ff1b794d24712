"""Face expression classifiers for 48x48 grayscale crops (FER2013 / RAF-DB).

Input: float32 (B, 1, 48, 48) in [0, 1]; each model standardises with a fixed affine map, so preprocessing
travels with the model. For DP (Opacus): GroupNorm never BatchNorm (per-sample gradients stay per sample),
no in-place activations (Opacus's hooks), and a ``trunk``/``head`` split so the fusion model reuses the
trunk without an unused classifier. Why each: docs/design_notes.md.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from shared_models.taxonomy import NUM_EMOTIONS

__all__ = ["FaceCNN", "FaceCNNTrunk", "FaceResNet", "FaceResNetTrunk", "PixelStandardize"]


class PixelStandardize(nn.Module):
    """Fixed ``(x - mean) / std`` on [0, 1] pixels; no parameters, no buffers.

    Kept as plain floats rather than buffers: they are part of the architecture,
    not learned or data-derived state, so they need not travel in state_dict.
    """

    def __init__(self, mean: float = 0.5, std: float = 0.25) -> None:
        super().__init__()
        if std <= 0:
            raise ValueError(f"pixel std must be positive, got {std}")
        self.mean = float(mean)
        self.std = float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


def conv_gn_act(in_ch: int, out_ch: int, groups: int, stride: int = 1) -> list[nn.Module]:
    """3x3 conv -> GroupNorm -> ReLU. The conv has no bias: GroupNorm's shift replaces it."""
    return [
        nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(groups, out_ch),
        nn.ReLU(),
    ]


class FaceCNNTrunk(nn.Module):
    """Three conv-GroupNorm-ReLU-maxpool blocks, coarse spatial pooling, dense embedding.

    48x48 -> 24 -> 12 -> 6 spatially; channels width, 2*width, 4*width. The
    6x6 map is average-pooled to ``pool_size`` x ``pool_size`` (default 3x3:
    roughly brows/eyes, nose/cheeks, mouth rows) and projected to
    ``embed_dim``. Keeping this coarse layout matters for a shallow network:
    with global average pooling its 3-layer receptive fields reduce a face to
    a bag of local textures, and in a memorisation check on synthetic
    class-template images it learned far more slowly. A full 6x6 flatten
    would keep more layout but makes the projection four times larger (and
    DP noise grows with the parameter count).
    """

    def __init__(
        self,
        width: int = 16,
        norm_groups: int = 8,
        pool_size: int = 3,
        embed_dim: int = 128,
        pixel_mean: float = 0.5,
        pixel_std: float = 0.25,
    ) -> None:
        super().__init__()
        chans = (width, 2 * width, 4 * width)
        layers: list[nn.Module] = [PixelStandardize(pixel_mean, pixel_std)]
        in_ch = 1
        for out_ch in chans:
            layers += conv_gn_act(in_ch, out_ch, norm_groups)
            layers.append(nn.MaxPool2d(2))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(pool_size), nn.Flatten())
        self.project = nn.Sequential(nn.Linear(in_ch * pool_size * pool_size, embed_dim), nn.ReLU())
        self.out_features = embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.pool(self.features(x)))


class FaceCNN(nn.Module):
    """Compact face classifier: :class:`FaceCNNTrunk` + dropout + linear head.

    Returns logits (B, num_classes). Defaults (width 16, no dropout) were
    chosen by measurement on the synthetic faces: with width 32 and dropout
    0.3, centralised Adam training sat at the majority class for 1-2 epochs and
    FedAvg for about 10 rounds; width 16 without dropout leaves that plateau
    within the first epoch, reaches the same accuracy (about 77% after 5
    epochs) and is about 3x cheaper per sample. DP noise is the regulariser
    under differential privacy, so dropout adds little there.
    """

    def __init__(
        self,
        num_classes: int = NUM_EMOTIONS,
        width: int = 16,
        dropout: float = 0.0,
        norm_groups: int = 8,
        pool_size: int = 3,
        embed_dim: int = 128,
        pixel_mean: float = 0.5,
        pixel_std: float = 0.25,
    ) -> None:
        super().__init__()
        self.trunk = FaceCNNTrunk(width, norm_groups, pool_size, embed_dim, pixel_mean, pixel_std)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.trunk.out_features, num_classes))

    @property
    def embedding_dim(self) -> int:
        return self.trunk.out_features

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Face embedding (B, embedding_dim) before the head."""
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with GroupNorm in place of BatchNorm.

    When the block changes resolution or width, the shortcut is a strided 1x1
    conv + GroupNorm so the residual sum has matching shapes.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *conv_gn_act(in_ch, out_ch, groups, stride),
            nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(groups, out_ch),
        )
        if stride != 1 or in_ch != out_ch:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.GroupNorm(groups, out_ch),
            )
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class FaceResNetTrunk(nn.Module):
    """Stem (3x3 conv-GN-ReLU, 2x2 max-pool) + 3 residual stages + global average pool.

    The stem pools 48 -> 24 before any residual block, so the stages run at
    24, 12 and 6 pixels; at full 48x48 resolution the first stage alone would
    cost as much as the rest of the network.
    """

    def __init__(
        self,
        width: int = 32,
        blocks_per_stage: int = 1,
        norm_groups: int = 8,
        pixel_mean: float = 0.5,
        pixel_std: float = 0.25,
    ) -> None:
        super().__init__()
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}")
        self.stem = nn.Sequential(
            PixelStandardize(pixel_mean, pixel_std),
            *conv_gn_act(1, width, norm_groups),
            nn.MaxPool2d(2),
        )
        stages: list[nn.Module] = []
        in_ch = width
        for i, out_ch in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_ch, out_ch, stride, norm_groups))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_features = in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x)))


class FaceResNet(nn.Module):
    """Small residual face classifier: :class:`FaceResNetTrunk` + dropout + linear head."""

    def __init__(
        self,
        num_classes: int = NUM_EMOTIONS,
        width: int = 32,
        dropout: float = 0.3,
        blocks_per_stage: int = 1,
        norm_groups: int = 8,
        pixel_mean: float = 0.5,
        pixel_std: float = 0.25,
    ) -> None:
        super().__init__()
        self.trunk = FaceResNetTrunk(width, blocks_per_stage, norm_groups, pixel_mean, pixel_std)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.trunk.out_features, num_classes))

    @property
    def embedding_dim(self) -> int:
        return self.trunk.out_features

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Face embedding (B, embedding_dim) before the head."""
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))
