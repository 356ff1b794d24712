"""Fixed scattering features with a small trained head: the face model that learns under DP-SGD.

A fixed, data-independent wavelet scattering transform (kymatio, J=2, L=8) with a linear head beats an
end-to-end CNN under DP at small data (Tramer and Boneh 2021): DP noise grows with trained parameters.
Features are standardised per sample, so per-sample sensitivity holds; only the head travels. The LCN
variant normalises local contrast first (the fairness front end, docs/fairness.md). Details: docs/design_notes.md.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from shared_models.taxonomy import NUM_EMOTIONS

FACE_SIZE = 48
SCATTER_J = 2
SCATTER_ORIENTATIONS = 8
SCATTER_CHANNELS = 1 + SCATTER_J * SCATTER_ORIENTATIONS + SCATTER_ORIENTATIONS ** 2 * SCATTER_J * (SCATTER_J - 1) // 2
SCATTER_SIDE = FACE_SIZE // 2 ** SCATTER_J
NORM_GROUPS = 27
NUM_FEATURES = SCATTER_CHANNELS * SCATTER_SIDE * SCATTER_SIDE


@functools.lru_cache(maxsize=4)
def _scattering(device: str):
    # kymatio's top-level ``kymatio.torch`` also imports its 3-D transforms, which need a SciPy function
    # removed in SciPy 1.15; the 2-D front end alone imports cleanly.
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    return ScatteringTorch2D(J=SCATTER_J, shape=(FACE_SIZE, FACE_SIZE), L=SCATTER_ORIENTATIONS).to(device)


@torch.no_grad()
def scatter_features(faces: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Faces (B, 1, 48, 48) in [0, 1] -> fixed features (B, NUM_FEATURES), standardised per sample."""
    out = []
    for start in range(0, len(faces), batch_size):
        x = faces[start:start + batch_size].float()
        coeffs = _scattering(str(x.device))(x.reshape(-1, FACE_SIZE, FACE_SIZE))
        groups = coeffs.reshape(len(x), NORM_GROUPS, -1)
        groups = (groups - groups.mean(-1, keepdim=True)) / (groups.std(-1, keepdim=True) + 1e-5)
        out.append(groups.reshape(len(x), NUM_FEATURES))
    return torch.cat(out) if out else torch.zeros(0, NUM_FEATURES, device=faces.device)


LCN_SIGMA = 3.0  # pixels: the Gaussian neighbourhood of local contrast normalisation (2 kept less of the face: docs/fairness.md)
LCN_MIN_STD = 1e-3  # on the [0, 1] scale: a flat image stays flat instead of dividing by zero


def gaussian_blur(faces: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each face (B, 1, H, W) low-passed by a Gaussian of ``sigma`` pixels (reflect padding): its own pixels only."""
    half = max(1, int(3 * sigma))
    t = torch.arange(-half, half + 1, dtype=torch.float32, device=faces.device)
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :])[None, None]
    return torch.nn.functional.conv2d(torch.nn.functional.pad(faces.float(), (half,) * 4, mode="reflect"), kernel)


def local_contrast_normalise(faces: torch.Tensor, sigma: float = LCN_SIGMA) -> torch.Tensor:
    """Per face: subtract the local (Gaussian) mean, divide by the local std floored at the face's mean local std.

    Features drawn with low contrast (dark skin in under-exposed photos) come out at the contrast of the
    rest, while flat, noisy regions are not blown up (the floor; Jarrett et al. 2009). Each output pixel
    depends on its own face only, so DP-SGD's per-sample sensitivity is untouched.
    """
    half = int(3 * sigma)
    t = torch.arange(-half, half + 1, dtype=torch.float32, device=faces.device)
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :])[None, None]
    x = faces.float()

    def blur(z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(torch.nn.functional.pad(z, (half,) * 4, mode="reflect"), kernel)

    centred = x - blur(x)
    local_std = blur(centred * centred).clamp_min(0).sqrt()
    floor = local_std.mean(dim=(2, 3), keepdim=True).clamp_min(LCN_MIN_STD)
    return centred / torch.maximum(local_std, floor)


@torch.no_grad()
def lcn_scatter_features(faces: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``scatter_features`` of the locally contrast-normalised faces (the face_scatter_lcn front end)."""
    out = [scatter_features(local_contrast_normalise(faces[s:s + batch_size]), batch_size)
           for s in range(0, len(faces), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, NUM_FEATURES, device=faces.device)


DENOISE_SIGMA = 1.0  # pixels: the low-pass before LCN (face_scatter_lcn_blur); the faces' features are smooth, pixel noise is not


@torch.no_grad()
def blur_lcn_scatter_features(faces: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``lcn_scatter_features`` of the faces low-passed at ``DENOISE_SIGMA`` (the face_scatter_lcn_blur front end).

    Pixel noise does not scale with a face's contrast, so low-contrast (dark-skinned) faces have the lowest
    signal-to-noise ratio; averaging neighbouring pixels first raises it before LCN rescales the contrast."""
    out = [lcn_scatter_features(gaussian_blur(faces[s:s + batch_size], DENOISE_SIGMA), batch_size)
           for s in range(0, len(faces), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, NUM_FEATURES, device=faces.device)


class FaceScatterLinear(nn.Module):
    """Scattering features (fixed) -> linear classifier (trained). Returns logits (B, num_classes)."""

    fixed_features = staticmethod(scatter_features)  # what a node may precompute once per sample

    def __init__(self, num_classes: int = NUM_EMOTIONS, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)  # off by default: under DP the noise is the regulariser
        self.head = nn.Linear(NUM_FEATURES, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # raw faces; nodes pass precomputed features instead
            x = self.fixed_features(x)
        return self.head(self.dropout(x))


class FaceScatterLCNLinear(FaceScatterLinear):
    """face_scatter with local contrast normalisation before the transform: the fairness front end
    (docs/fairness.md, "DP without widening the gaps"). Same head, same parameters, no extra privacy cost."""

    fixed_features = staticmethod(lcn_scatter_features)


class FaceScatterLCNBlurLinear(FaceScatterLinear):
    """face_scatter_lcn after a 1-pixel Gaussian low-pass of each face: the non-DP fairness front end
    (docs/fairness.md). Same head, same parameters; under DP, too, a per-sample transform with no privacy cost."""

    fixed_features = staticmethod(blur_lcn_scatter_features)
