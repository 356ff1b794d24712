"""Speech-emotion model: per-segment CNN, bidirectional LSTM, attention pooling (the common CNN-BiLSTM-attention SER design).

Input: log-mel features (B, S, n_mels, n_frames) in dB and an optional bool mask (B, S) of real segments;
padded segments affect neither the attention nor the LSTM. Built so Opacus computes exact per-sample
gradients without a rewrite: segment layers that keep the sample as the batch dimension, GroupNorm (never
BatchNorm), ``SequenceLSTM`` (DPLSTM's function, one linear call per sequence) and bidirectionality from
two unidirectional LSTMs over each sample's real segments. Why each choice: docs/design_notes.md.
"""

from __future__ import annotations

from typing import Sequence

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared_models.models.segment_layers import SegmentCNN, SegmentConv2d, SegmentGroupNorm, SegmentMaxPool2d  # noqa: F401
from shared_models.taxonomy import NUM_EMOTIONS

__all__ = [
    "AttentionPooling",
    "MaskedBiLSTM",
    "SequenceLSTM",
    "SegmentCNN",
    "SegmentConv2d",
    "SegmentGroupNorm",
    "SegmentMaxPool2d",
    "VoiceCRNN",
    "VoiceCRNNTrunk",
    "ccc",
    "ccc_loss",
    "reverse_within_length",
]


# ---------------------------------------------------------------------------
# Sequence model and pooling
# ---------------------------------------------------------------------------


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each sequence's first ``lengths[b]`` steps, leaving the padding in place.

    x: (B, S, D). Applying it twice is the identity. With ``lengths=None`` all
    sequences are full and this is a plain flip.
    """
    if lengths is None:
        return x.flip(1)
    s = x.shape[1]
    pos = torch.arange(s, device=x.device).unsqueeze(0)
    n = lengths.unsqueeze(1)
    idx = torch.where(pos < n, n - 1 - pos, pos)
    return x.gather(1, idx.unsqueeze(-1).expand_as(x))


class SequenceLSTM(nn.Module):
    """One unidirectional LSTM layer over (B, S, input_size), batch first, zero initial state -> (B, S, hidden).

    The function, parameters (``ih``, ``hh``: Linear to 4 x hidden, gates in
    the order i, f, g, o) and initialisation of ``opacus.layers.DPLSTM``, at a
    fraction of its DP-SGD cost: DPLSTM calls its two linear layers at every
    time step, so Opacus computes and sums per-sample gradients 2 x S times.
    Here ``ih`` runs once over the whole sequence. The recurrence needs
    ``hh`` step by step, so it runs with ``hh``'s weights detached (the
    gradient still flows through the hidden states), after a no-grad pass
    that gives the hidden states h_0..h_{S-1}; then ``hh`` is called once on
    those states and ``hh(h) - hh(h).detach()`` (exactly zero) is added to the
    gates. Its gradient is sum_t g_t h_{t-1}^T, exactly ``hh``'s gradient in
    the recurrence, so the values and every gradient are DPLSTM's while
    Opacus sees each layer once per forward, on whole sequences.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.ih = nn.Linear(input_size, 4 * hidden_size)
        self.hh = nn.Linear(hidden_size, 4 * hidden_size)
        stdv = 1.0 / math.sqrt(hidden_size)  # DPLSTM's initialisation, in its parameter order
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)
        self._register_load_state_dict_pre_hook(self._dplstm_keys)

    @staticmethod
    def _dplstm_keys(state_dict, prefix, *_args) -> None:
        """Accept state dicts saved with DPLSTM layers (keys ``l0.ih.weight`` and aliases ``weight_ih_l0``)."""
        for name in ("ih.weight", "ih.bias", "hh.weight", "hh.bias"):
            layer, kind = name.split(".")
            old = state_dict.pop(f"{prefix}l0.{name}", None)
            alias = state_dict.pop(f"{prefix}{kind}_{layer}_l0", None)
            if f"{prefix}{name}" not in state_dict and (old is not None or alias is not None):
                state_dict[f"{prefix}{name}"] = old if old is not None else alias

    def _recurrence(self, gates_in: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor | None,
                    extra: torch.Tensor | None = None) -> torch.Tensor:
        h = gates_in.new_zeros(gates_in.shape[0], self.hidden_size)
        c = h
        out = []
        for t in range(gates_in.shape[1]):
            gates = gates_in[:, t] + F.linear(h, w_hh, b_hh)
            if extra is not None:
                gates = gates + extra[:, t]
            i, f, g, o = gates.split(self.hidden_size, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            out.append(h)
        return torch.stack(out, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates_in = self.ih(x)
        if not torch.is_grad_enabled() or not self.hh.weight.requires_grad:
            return self._recurrence(gates_in, self.hh.weight, self.hh.bias)
        with torch.no_grad():
            states = self._recurrence(gates_in, self.hh.weight, self.hh.bias)
        previous = torch.cat([states.new_zeros(states.shape[0], 1, self.hidden_size), states[:, :-1]], dim=1)
        hh_out = self.hh(previous)
        return self._recurrence(gates_in, self.hh.weight.detach(),
                                None if self.hh.bias is None else self.hh.bias.detach(), hh_out - hh_out.detach())


class MaskedBiLSTM(nn.Module):
    """Stacked bidirectional LSTM over left-aligned sequences of known lengths.

    Each layer is two single-direction :class:`SequenceLSTM`; the backward one reads each
    sequence reversed within its length. Outputs at padded positions are
    meaningless and must be masked by the caller (:class:`AttentionPooling`).
    This replaces ``DPLSTM(bidirectional=True)`` on a packed sequence, whose
    per-sample gradients come back in length-sorted row order (see the module
    docstring).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.forward_layers = nn.ModuleList()
        self.backward_layers = nn.ModuleList()
        for i in range(num_layers):
            size = input_size if i == 0 else 2 * hidden_size
            self.forward_layers.append(SequenceLSTM(size, hidden_size))
            self.backward_layers.append(SequenceLSTM(size, hidden_size))
        self.dropout = nn.Dropout(dropout)
        self.out_features = 2 * hidden_size

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        for i, (fwd, bwd) in enumerate(zip(self.forward_layers, self.backward_layers)):
            if i > 0:
                x = self.dropout(x)
            out_f = fwd(x)
            out_b = bwd(reverse_within_length(x, lengths))
            x = torch.cat([out_f, reverse_within_length(out_b, lengths)], dim=-1)
        return x


class AttentionPooling(nn.Module):
    """Additive attention over segments: score_t = v . tanh(W h_t), masked softmax, weighted sum.

    Padded segments get exactly zero weight (their scores are replaced before
    the softmax, so their values cannot reach the output); a sample with no
    real segment pools to the zero vector instead of NaN.
    """

    def __init__(self, dim: int, attention_dim: int = 64) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, attention_dim), nn.Tanh(), nn.Linear(attention_dim, 1))

    def weights(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention weights (B, S)."""
        scores = self.score(h).squeeze(-1)
        if mask is None:
            return torch.softmax(scores, dim=1)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=1) * mask.to(scores.dtype)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        w = self.weights(h, mask)
        return torch.einsum("bs,bsd->bd", w, h)


# ---------------------------------------------------------------------------
# Trunk and classifier
# ---------------------------------------------------------------------------


@torch.no_grad()
def copy_feature_stats(mean_buffer: torch.Tensor, std_buffer: torch.Tensor, mean, std) -> None:
    """Check per-mel-band statistics (length n_mels, finite, std > 0) and copy them into a model's buffers."""
    n_mels = mean_buffer.numel()
    mean_t = torch.as_tensor(mean, dtype=mean_buffer.dtype).reshape(-1)
    std_t = torch.as_tensor(std, dtype=std_buffer.dtype).reshape(-1)
    if mean_t.numel() != n_mels or std_t.numel() != n_mels:
        raise ValueError(f"expected {n_mels} values each, got mean {mean_t.numel()} and std {std_t.numel()}")
    if not torch.isfinite(mean_t).all() or not torch.isfinite(std_t).all() or (std_t <= 0).any():
        raise ValueError("feature stats must be finite and std strictly positive")
    mean_buffer.copy_(mean_t)
    std_buffer.copy_(std_t)


class VoiceCRNNTrunk(nn.Module):
    """Log-mel segments -> clip embedding (B, 2 * lstm_hidden).

    Holds the per-mel-band feature statistics as persistent buffers
    ``feature_mean`` / ``feature_std`` (n_mels,), initialised to 0 / 1. They are
    in state_dict, so statistics fitted once (e.g. by the coordinator) travel
    with the global weights. They are buffers, not parameters: nothing trains
    them and Opacus ignores them (the module holding them has no parameters of
    its own).
    """

    def __init__(
        self,
        n_mels: int = 128,
        n_frames: int = 32,
        channels: Sequence[int] = (8, 16, 32, 64),
        kernel_size: int = 3,
        norm_groups: int = 4,
        segment_dim: int = 128,
        lstm_hidden: int = 64,
        lstm_layers: int = 2,
        lstm_dropout: float = 0.0,
        attention_dim: int = 64,
    ) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.register_buffer("feature_mean", torch.zeros(n_mels))
        self.register_buffer("feature_std", torch.ones(n_mels))
        self.cnn = SegmentCNN(n_mels, n_frames, channels, kernel_size, norm_groups, segment_dim)
        self.rnn = MaskedBiLSTM(segment_dim, lstm_hidden, lstm_layers, lstm_dropout)
        self.pool = AttentionPooling(self.rnn.out_features, attention_dim)
        self.out_features = self.rnn.out_features

    @torch.no_grad()
    def set_feature_stats(self, mean, std) -> None:
        """Set per-mel-band normalisation statistics (array-likes of length n_mels, std > 0)."""
        copy_feature_stats(self.feature_mean, self.feature_std, mean, std)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[2] != self.n_mels:
            raise ValueError(f"expected voice features (B, S, {self.n_mels}, T), got {tuple(x.shape)}")
        x = (x - self.feature_mean.view(1, 1, -1, 1)) / self.feature_std.view(1, 1, -1, 1)
        lengths = None
        if mask is not None:
            if mask.shape != x.shape[:2]:
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match (B, S) = {tuple(x.shape[:2])}")
            mask = mask.to(torch.bool)
            # Zeroing (not multiplying) also neutralises NaN/inf in padding.
            x = x.masked_fill(~mask[:, :, None, None], 0.0)
        seg = self.cnn(x)  # (B, S, D)
        if mask is not None:
            # Move real segments to the front, in their original order.
            # Distinct keys (padding after real segments, then position) make any sort the stable one; a
            # stable sort has no ONNX export (fedemo export: shared_models/export/onnx_export.py).
            steps = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
            order = torch.argsort((~mask).to(torch.int64) * mask.shape[1] + steps, dim=1)
            seg = seg.gather(1, order.unsqueeze(-1).expand_as(seg))
            lengths = mask.sum(dim=1)
            mask = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0) < lengths.unsqueeze(1)
        h = self.rnn(seg, lengths)
        return self.pool(h, mask)


class VoiceCRNN(nn.Module):
    """CNN-BiLSTM-attention speech-emotion classifier.

    forward(x, mask=None) returns logits (B, num_classes), or ``(logits, va)``
    with va (B, 2) = (valence, arousal) in [-1, 1] when ``valence_arousal``.
    """

    def __init__(
        self,
        num_classes: int = NUM_EMOTIONS,
        n_mels: int = 128,
        n_frames: int = 32,
        channels: Sequence[int] = (8, 16, 32, 64),
        kernel_size: int = 3,
        norm_groups: int = 4,
        segment_dim: int = 128,
        lstm_hidden: int = 64,
        lstm_layers: int = 2,
        lstm_dropout: float = 0.0,
        attention_dim: int = 64,
        dropout: float = 0.3,
        valence_arousal: bool = False,
    ) -> None:
        super().__init__()
        self.trunk = VoiceCRNNTrunk(
            n_mels, n_frames, channels, kernel_size, norm_groups,
            segment_dim, lstm_hidden, lstm_layers, lstm_dropout, attention_dim,
        )
        dim = self.trunk.out_features
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_classes)
        self.va_head = nn.Sequential(nn.Linear(dim, 2), nn.Tanh()) if valence_arousal else None

    @property
    def valence_arousal(self) -> bool:
        return self.va_head is not None

    @property
    def embedding_dim(self) -> int:
        return self.trunk.out_features

    @property
    def feature_mean(self) -> torch.Tensor:
        return self.trunk.feature_mean

    @property
    def feature_std(self) -> torch.Tensor:
        return self.trunk.feature_std

    def set_feature_stats(self, mean, std) -> None:
        """See :meth:`VoiceCRNNTrunk.set_feature_stats`."""
        self.trunk.set_feature_stats(mean, std)

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention-pooled clip embedding (B, embedding_dim) before the heads."""
        return self.trunk(x, mask)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        z = self.dropout(self.trunk(x, mask))
        logits = self.head(z)
        if self.va_head is None:
            return logits
        return logits, self.va_head(z)


# ---------------------------------------------------------------------------
# Valence / arousal metric and loss
# ---------------------------------------------------------------------------


def ccc(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Lin's concordance correlation coefficient per dimension (over dim 0).

    ccc = 2 cov(p, t) / (var p + var t + (mean p - mean t)^2), population
    moments. ``eps`` in the denominator keeps it finite (0) when both inputs
    are constant. Shapes (N,) -> scalar, (N, D) -> (D,).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    pred = pred.to(torch.float32) if not pred.is_floating_point() else pred
    target = target.to(pred.dtype)
    mp, mt = pred.mean(dim=0), target.mean(dim=0)
    dp, dt = pred - mp, target - mt
    cov = (dp * dt).mean(dim=0)
    vp, vt = (dp * dp).mean(dim=0), (dt * dt).mean(dim=0)
    return 2.0 * cov / (vp + vt + (mp - mt) ** 2 + eps)


def ccc_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """1 - mean CCC over dimensions: 0 for perfect agreement, 2 for perfect anti-agreement."""
    return 1.0 - ccc(pred, target, eps).mean()
