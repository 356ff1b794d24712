"""Audio-visual late fusion: face embedding + voice embedding -> MLP head.

The encoders are the trunks of :class:`~shared_models.models.face_models.FaceCNN` and
:class:`~shared_models.models.voice_models.VoiceCRNN` (the same classes, not copies),
so a fusion model's encoders can be initialised from, or compared with, the
unimodal models' trunks. Only trunks are held, never the unimodal heads: a
parameter that takes no part in the forward pass gets no per-sample gradient,
which Opacus's optimizer rejects.

Late fusion of embeddings (rather than of logits) lets the head learn
cross-modal interactions while each encoder stays the unimodal design.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from shared_models.models.face_models import FaceCNNTrunk
from shared_models.taxonomy import NUM_EMOTIONS
from shared_models.models.voice_models import VoiceCRNNTrunk

__all__ = ["FusionNet"]


class FusionNet(nn.Module):
    """forward(face, voice, mask=None) -> logits (B, num_classes), or (logits, va).

    face: (B, 1, 48, 48) pixels in [0, 1]; voice: (B, S, n_mels, n_frames)
    log-mel dB; mask: optional bool (B, S). va (B, 2) = (valence, arousal) in
    [-1, 1] when ``valence_arousal``. The voice trunk carries the
    ``feature_mean`` / ``feature_std`` buffers (state_dict keys
    ``voice.feature_mean`` / ``voice.feature_std``).
    """

    def __init__(
        self,
        num_classes: int = NUM_EMOTIONS,
        face_width: int = 16,
        face_norm_groups: int = 8,
        face_embed_dim: int = 128,
        n_mels: int = 128,
        n_frames: int = 32,
        voice_channels: Sequence[int] = (8, 16, 32, 64),
        voice_norm_groups: int = 4,
        segment_dim: int = 128,
        lstm_hidden: int = 64,
        lstm_layers: int = 2,
        attention_dim: int = 64,
        hidden: int = 128,
        dropout: float = 0.3,
        valence_arousal: bool = False,
    ) -> None:
        super().__init__()
        self.face = FaceCNNTrunk(width=face_width, norm_groups=face_norm_groups, embed_dim=face_embed_dim)
        self.voice = VoiceCRNNTrunk(
            n_mels=n_mels,
            n_frames=n_frames,
            channels=voice_channels,
            norm_groups=voice_norm_groups,
            segment_dim=segment_dim,
            lstm_hidden=lstm_hidden,
            lstm_layers=lstm_layers,
            attention_dim=attention_dim,
        )
        fused = self.face.out_features + self.voice.out_features
        self.fuse = nn.Sequential(nn.Dropout(dropout), nn.Linear(fused, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, num_classes)
        self.va_head = nn.Sequential(nn.Linear(hidden, 2), nn.Tanh()) if valence_arousal else None

    @property
    def valence_arousal(self) -> bool:
        return self.va_head is not None

    @property
    def feature_mean(self) -> torch.Tensor:
        return self.voice.feature_mean

    @property
    def feature_std(self) -> torch.Tensor:
        return self.voice.feature_std

    def set_feature_stats(self, mean, std) -> None:
        """Set the voice trunk's per-mel-band statistics (see VoiceCRNNTrunk)."""
        self.voice.set_feature_stats(mean, std)

    def embed(self, face: torch.Tensor, voice: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Concatenated [face, voice] embedding (B, face_dim + voice_dim)."""
        if face.shape[0] != voice.shape[0]:
            raise ValueError(f"face batch {face.shape[0]} != voice batch {voice.shape[0]}")
        return torch.cat([self.face(face), self.voice(voice, mask)], dim=1)

    def forward(self, face: torch.Tensor, voice: torch.Tensor, mask: torch.Tensor | None = None):
        h = self.fuse(self.embed(face, voice, mask))
        logits = self.head(h)
        if self.va_head is None:
            return logits
        return logits, self.va_head(h)
