"""The voice data path's DSP kernels, written for speed on CPU: log-mel power, phase vocoder, inverse STFT, resampling.

Every training fetch of a voice clip augments the waveform and computes its log-mel segments, so these few
operations are most of a voice client's round; torchaudio's generic versions spend it on complex abs/angle of
copies, a dense filterbank product, a resampling kernel rebuilt per call and a strided conv1d. Each function
computes what its torchaudio counterpart does, to float rounding (tests/test_voice_features_fast.py):
``mel_power`` as ``MelSpectrogram`` (power 2, centred constant padding, periodic Hann; the filterbank applied by
blocks of bands, its zeros skipped), ``phase_vocoder`` + ``istft`` as ``functional.phase_vocoder`` (the same
float32 phase arithmetic) and ``torch.istft``, ``sinc_resample`` as ``functional.resample`` (the same float32
windowed-sinc kernel, cached per ratio, applied as a matrix product over strided frames).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torchaudio.functional as AF

_MEL_BLOCK = 16  # mel bands per filterbank block: each block multiplies only the STFT bins its bands use


@functools.lru_cache(maxsize=8)
def hann(n: int) -> torch.Tensor:
    """The periodic Hann window (scipy/librosa "hann", ``torch.hann_window``), built once per length."""
    return torch.hann_window(n)


@functools.lru_cache(maxsize=8)
def _mel_blocks(sample_rate: int, n_fft: int, n_mels: int) -> tuple[tuple[int, int, torch.Tensor], ...]:
    """The slaney filterbank ``MelSpectrogram`` builds, cut into blocks of ``_MEL_BLOCK`` bands.

    Each block is (first, end, weights): the columns [first, end) of the interleaved re^2, im^2 row of a frame
    that its bands use, and the (end - first, bands) weights, each bin's weight once for re^2 and once for im^2.
    """
    fb = AF.melscale_fbanks(n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate, "slaney", "slaney")
    blocks = []
    for lo in range(0, n_mels, _MEL_BLOCK):
        part = fb[:, lo : lo + _MEL_BLOCK]
        used = torch.nonzero(part.abs().sum(dim=1)).flatten()
        first, last = (int(used[0]), int(used[-1]) + 1) if used.numel() else (0, 1)
        blocks.append((2 * first, 2 * last, part[first:last].repeat_interleave(2, dim=0).contiguous()))
    return tuple(blocks)


def mel_power(x: torch.Tensor, sample_rate: int, n_fft: int, hop_length: int, n_mels: int) -> torch.Tensor:
    """Mel power spectrogram of float32 (..., samples) -> (..., n_mels, frames), as MelSpectrogram(power=2)."""
    shape = x.shape
    spec = torch.stft(x.reshape(-1, shape[-1]), n_fft, hop_length, window=hann(n_fft), center=True,
                      pad_mode="constant", return_complex=True)  # (n, freq, frames), stored frame-major
    n, n_freq, n_frames = spec.shape
    squares = torch.view_as_real(spec.transpose(-1, -2)).square().reshape(n * n_frames, 2 * n_freq)
    out = torch.cat([torch.matmul(squares[:, first:end], weights)
                     for first, end, weights in _mel_blocks(sample_rate, n_fft, n_mels)], dim=1)
    return out.reshape(shape[:-1] + (n_frames, n_mels)).transpose(-1, -2)


def phase_vocoder(spec: torch.Tensor, rate: float, phase_advance: torch.Tensor) -> torch.Tensor:
    """``torchaudio.functional.phase_vocoder`` of one (freq, frames) complex64 spectrogram.

    The phase arithmetic is torchaudio's op for op (its cumulative sum makes float32 rounding matter: phases
    reach 1e5 rad). What differs: the work runs frame-major, each input frame's angle (``atan2``, the same
    values as ``angle``) and magnitude are taken once rather than twice per output frame, and the polar form
    comes from numpy's float32 cos and sin. Returns (freq, new frames), a view of a frame-major tensor.
    """
    n_freq, n_frames = spec.shape
    parts = torch.view_as_real(spec.T)
    real, imag = torch.zeros(n_frames + 2, n_freq), torch.zeros(n_frames + 2, n_freq)  # 2 frames of zero padding
    real[:n_frames], imag[:n_frames] = parts[..., 0], parts[..., 1]
    angle, norm = torch.atan2(imag, real), torch.sqrt(real.square() + imag.square())
    time_steps = torch.arange(0, n_frames, rate, dtype=torch.float32)
    alphas = (time_steps % 1.0)[:, None]
    first, second = time_steps.long(), (time_steps + 1).long()
    advance = phase_advance.reshape(1, n_freq)
    phase = angle.index_select(0, second) - angle.index_select(0, first) - advance
    phase = phase - 2 * math.pi * torch.round(phase / (2 * math.pi))
    phase = phase + advance
    phase = torch.cat([angle[:1], phase[:-1]], dim=0)
    phase_acc = torch.cumsum(phase, 0).numpy()
    mag = alphas * norm.index_select(0, second) + (1 - alphas) * norm.index_select(0, first)
    return torch.complex(mag * torch.from_numpy(np.cos(phase_acc)), mag * torch.from_numpy(np.sin(phase_acc))).T


def istft(spec: torch.Tensor, n_fft: int, hop: int, length: int) -> torch.Tensor:
    """``torch.istft(spec, n_fft, hop, window=hann(n_fft), center=True, length=length)`` of one (freq, frames)
    spectrogram, for a hop that divides ``n_fft``: the frames overlap-added as ``n_fft // hop`` shifted sums."""
    if n_fft % hop:
        raise ValueError(f"istft overlap-adds whole hops: hop {hop} must divide n_fft {n_fft}")
    overlap = n_fft // hop
    frames = torch.fft.irfft(spec.T, n=n_fft, dim=-1) * hann(n_fft)  # (frames, n_fft)
    n_frames = frames.shape[0]
    pieces = frames.reshape(n_frames, overlap, hop)
    squared = hann(n_fft).square().reshape(overlap, hop)
    signal, envelope = torch.zeros(n_frames + overlap - 1, hop), torch.zeros(n_frames + overlap - 1, hop)
    for k in range(overlap):  # frame t's k-th hop lands on output row t + k
        signal[k : k + n_frames] += pieces[:, k]
        envelope[k : k + n_frames] += squared[k]  # the summed squared windows torch.istft divides by
    start = n_fft // 2
    y = signal.reshape(-1)[start : start + length] / envelope.reshape(-1)[start : start + length]
    if y.numel() < length:
        y = torch.nn.functional.pad(y, [0, length - y.numel()])
    return y


def _sinc_kernel(orig: int, new: int, lowpass_filter_width: int = 6, rolloff: float = 0.99) -> tuple[torch.Tensor, int]:
    """torchaudio's float32 sinc_interp_hann kernel from ``orig`` to ``new`` (coprime), as a (taps, new) matrix."""
    base_freq = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base_freq)
    idx = torch.arange(-width, width + orig, dtype=torch.float32)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=torch.float32)[:, None, None] / new + idx
    t *= base_freq
    t = t.clamp_(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t *= math.pi
    kernels = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernels *= window * (base_freq / orig)
    return kernels[:, 0, :].T.contiguous(), width


_CACHED_KERNEL_CELLS = 1 << 13  # kernels of ratios up to this many orig x new cells (speed, pitch) are kept
_cached_sinc_kernel = functools.lru_cache(maxsize=512)(_sinc_kernel)  # the augmentation uses 377 ratios, 4 MB
_BLOCK_CELLS = 1 << 20  # strided frames x taps multiplied at a time: bounds the copy a matrix product makes


def sinc_resample(wave: np.ndarray, orig: int, new: int) -> np.ndarray:
    """``torchaudio.functional.resample(wave, orig, new)`` (its defaults) of a 1-D float32 wave, integer rates.

    Output block j is the kernel applied to the ``taps`` padded samples from ``j * orig``: torchaudio's strided
    ``conv1d``, here a matrix product over a strided view, a bounded number of frames at a time.
    """
    common = math.gcd(int(orig), int(new))
    orig, new = int(orig) // common, int(new) // common
    kernel, width = (_cached_sinc_kernel if orig * new <= _CACHED_KERNEL_CELLS else _sinc_kernel)(orig, new)
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    length = x.numel()
    padded = torch.nn.functional.pad(x, (width, width + orig))
    taps = kernel.shape[0]
    count = (padded.numel() - taps) // orig + 1
    frames = padded.as_strided((count, taps), (orig, 1))
    out = torch.empty(count, new)
    step = max(1, _BLOCK_CELLS // taps)
    for lo in range(0, count, step):
        torch.matmul(frames[lo : lo + step], kernel, out=out[lo : lo + step])
    target = int(torch.ceil(torch.as_tensor(new * length / orig)))  # torchaudio's float32 rounding of the length
    return out.reshape(-1)[:target].numpy()
