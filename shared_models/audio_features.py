"""Audio features of the CNN-BiLSTM-attention speech-emotion recipe, shared by nodes and coordinator.

One clip: ``read_waveform`` (``audio_io``: mono, 16 kHz) -> ``clip_segments``: peak-normalise to -3 dBFS, up to
six 0.5 s segments (centre-cropped, zero-padded, masked), log-mel each in librosa's convention (spelled out in
``log_mel``; docs/data.md). No per-clip min-max scaling (it erases the level that carries emotion):
nodes send per-band moments (``feature_moments``), the coordinator combines them (``combine_moments``) into
the model's mean/std buffers. ``WaveAugment``: train-time waveform augmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable

import numpy as np
import torch

from shared_models.audio_dsp import hann, istft, mel_power, phase_vocoder
from shared_models.audio_io import (MAX_KERNEL_CELLS, RATIO_TOLERANCE, SAMPLE_RATE,  # noqa: F401 (re-exported)
                                    normalize_peak, read_waveform, resample, resample_ratio, resampling_note)

AMIN = 1e-10  # librosa power_to_db floor
SILENCE_DB = 10.0 * math.log10(AMIN)  # -100 dB: the log-mel of digital silence
STD_FLOOR = 1e-3  # combine_moments never returns a smaller std (constant bands stay finite)


@dataclass(frozen=True)
class LogMelConfig:
    """The feature recipe. Frozen (hashable) so the mel transform is cached per config."""

    n_mels: int = 128
    n_fft: int = 1024
    hop_length: int = 256
    segment_seconds: float = 0.5
    max_segments: int = 6  # 6 x 0.5 s = 3 s window
    peak_dbfs: float = -3.0

    @property
    def segment_samples(self) -> int:
        return int(round(self.segment_seconds * SAMPLE_RATE))

    @property
    def frames_per_segment(self) -> int:
        """Centred framing gives 1 + samples // hop frames (32 for 0.5 s at hop 256)."""
        return 1 + self.segment_samples // self.hop_length


DEFAULT_CONFIG = LogMelConfig()


# ---------------------------------------------------------------------------
# Log-mel and segmentation
# ---------------------------------------------------------------------------


def log_mel(waves: np.ndarray | torch.Tensor, cfg: LogMelConfig = DEFAULT_CONFIG) -> torch.Tensor:
    """Log-mel (dB, librosa ``power_to_db`` with ref 1, no top_db) of (..., samples) -> (..., mels, frames).

    The power is ``torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft, hop_length, n_mels,
    f_min=0, f_max=8000, window_fn=torch.hann_window (periodic, like scipy/librosa "hann"), power=2,
    center=True, pad_mode="constant", norm="slaney", mel_scale="slaney")``, computed by ``audio_dsp.mel_power``
    (the same to float rounding, a fraction of the time).
    """
    x = torch.as_tensor(np.asarray(waves, dtype=np.float32) if isinstance(waves, np.ndarray) else waves)
    with torch.no_grad():
        power = mel_power(x.float(), SAMPLE_RATE, cfg.n_fft, cfg.hop_length, cfg.n_mels)
        return power.clamp_(min=AMIN).log10_().mul_(10.0)  # 10 * log10(max(power, AMIN)), in place


def clip_segments(
    wave: np.ndarray, cfg: LogMelConfig = DEFAULT_CONFIG, *, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (max_segments, n_mels, frames) float32 and mask (max_segments,) bool of one clip.

    Clips longer than the window are centre-cropped (emotional speech rarely
    starts or ends the take, and the centre avoids leading/trailing silence);
    shorter ones are zero-padded to a whole segment. Missing segments hold the
    log of silence (-100 dB) and are masked out. ``normalize=False`` is for
    waves that ``WaveAugment.augment`` already normalised and re-levelled.
    """
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    if wave.size == 0:
        raise ValueError("clip_segments needs a non-empty waveform")
    if normalize:
        wave = normalize_peak(wave, cfg.peak_dbfs)
    seg = cfg.segment_samples
    window = seg * cfg.max_segments
    if wave.size > window:
        start = (wave.size - window) // 2
        wave = wave[start : start + window]
    n_seg = -(-wave.size // seg)
    padded = np.zeros(n_seg * seg, dtype=np.float32)
    padded[: wave.size] = wave
    features = torch.full((cfg.max_segments, cfg.n_mels, cfg.frames_per_segment), SILENCE_DB, dtype=torch.float32)
    features[:n_seg] = log_mel(padded.reshape(n_seg, seg), cfg)
    mask = torch.zeros(cfg.max_segments, dtype=torch.bool)
    mask[:n_seg] = True
    return features, mask


# ---------------------------------------------------------------------------
# Global normalisation statistics
# ---------------------------------------------------------------------------


def _silent_frames(frames: np.ndarray) -> np.ndarray:
    """(k, mels, T) -> (k, T) True where a frame is digital silence in every band (zero padding)."""
    return frames.max(axis=1) <= SILENCE_DB + 1e-3


def feature_moments(
    features: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-mel-band sum, sum of squares (float64) and frame count over real segments.

    Works on one clip (segments, mels, frames) or a batch (clips, segments,
    mels, frames) with a matching mask. Frames that are digital silence in every
    band (the zero padding that completes the last real segment) are left out,
    so a short clip's padding does not drag the mean towards -100 dB. Sums, not
    means, so clients' moments add up exactly (``combine_moments``).
    """
    feats = features.numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    m = mask.numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    real = feats[m.astype(bool)].astype(np.float64)  # (k, mels, T)
    keep = ~_silent_frames(real)  # (k, T)
    frames = np.moveaxis(real, 1, 2)[keep]  # (count, mels)
    return frames.sum(axis=0), np.square(frames).sum(axis=0), int(frames.shape[0])


def combine_moments(moments: Iterable[tuple[np.ndarray, np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Pooled per-band mean and std (float32, std >= 1e-3) from summed moments of any number of parts."""
    total_sum = total_sq = None
    count = 0
    for s, sq, n in moments:
        total_sum = np.asarray(s, np.float64) if total_sum is None else total_sum + s
        total_sq = np.asarray(sq, np.float64) if total_sq is None else total_sq + sq
        count += int(n)
    if total_sum is None or count == 0:
        raise ValueError("combine_moments needs at least one non-empty set of moments")
    mean = total_sum / count
    var = np.maximum(total_sq / count - np.square(mean), 0.0)
    return mean.astype(np.float32), np.maximum(np.sqrt(var), STD_FLOOR).astype(np.float32)


# ---------------------------------------------------------------------------
# Train-time augmentation
# ---------------------------------------------------------------------------

_MAX_RATIO_DENOMINATOR = 64  # speed/pitch ratios are rounded to p/q with q <= 64 (error < 0.03%)
_PV_N_FFT = 512  # phase-vocoder STFT, as torchaudio.functional.pitch_shift uses
_PV_HOP = _PV_N_FFT // 4


def _ratio(x: float) -> Fraction:
    return Fraction(x).limit_denominator(_MAX_RATIO_DENOMINATOR)


def change_speed(wave: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (length / factor; pitch moves with it, like tape).

    Implemented as resampling by the rational approximation p/q of ``factor``
    (kept small so the sinc kernel is small; it is built once per ratio).
    """
    r = _ratio(factor)
    return resample(wave, r.numerator, r.denominator)


def time_stretch(wave: np.ndarray, factor: float) -> np.ndarray:
    """Make the clip ``factor`` times longer at the same pitch (phase vocoder)."""
    if len(wave) <= _PV_N_FFT:  # too short to frame (loaders skip such clips): stretch by resampling instead
        return resample(wave, 1, 1) if factor == 1 else change_speed(wave, 1.0 / factor)
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    spec = torch.stft(x, _PV_N_FFT, _PV_HOP, window=hann(_PV_N_FFT), return_complex=True)  # centred, reflect-padded
    length = int(round(len(wave) * factor))
    if factor == 1.0:  # torchaudio's phase_vocoder returns the spectrogram itself at rate 1
        return torch.istft(spec, _PV_N_FFT, _PV_HOP, window=hann(_PV_N_FFT), length=length).numpy()
    advance = torch.linspace(0, math.pi * _PV_HOP, spec.shape[-2])[..., None]
    return istft(phase_vocoder(spec, 1.0 / factor, advance), _PV_N_FFT, _PV_HOP, length).numpy()


def pitch_shift(wave: np.ndarray, semitones: float) -> np.ndarray:
    """Shift pitch by ``semitones`` keeping the length.

    Same algorithm as ``torchaudio.functional.pitch_shift`` (phase-vocoder
    stretch by r = 2^(s/12), then resample back by r) but with r rounded to a
    small fraction p/q: torchaudio resamples between rates like 16000 and
    17959, whose gcd is 1, with a kernel of 16000 x 17959 cells; p/q keeps it
    small. The pitch error of the rounding is below 0.03%.
    """
    r = _ratio(2.0 ** (semitones / 12.0))
    stretched = time_stretch(wave, float(r))
    shifted = resample(stretched, r.numerator, r.denominator)
    out = np.zeros(len(wave), dtype=np.float32)
    n = min(len(wave), len(shifted))
    out[:n] = shifted[:n]
    return out


def add_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white noise at ``snr_db`` relative to the clip's mean power (silent clips unchanged)."""
    power = float(np.mean(np.square(wave, dtype=np.float64)))
    if power <= 0.0:
        return np.asarray(wave, dtype=np.float32)
    noise = rng.standard_normal(len(wave))
    noise *= math.sqrt(power / 10.0 ** (snr_db / 10.0))
    noise += wave  # in place: the same float64 sum as wave + noise, without two temporaries
    return noise.astype(np.float32)


@dataclass(frozen=True)
class WaveAugment:
    """Train-time waveform augmentation; each step is drawn with its own probability.

    Order: speed -> pitch -> noise -> peak normalisation -> gain. Gain comes
    after normalisation on purpose: ``clip_segments`` peak-normalises, so a
    gain applied before it would be undone and teach nothing. Applied after,
    it varies the post-normalisation level the way differing crest factors of
    real takes do. ``augment`` therefore returns an already normalised wave:
    feed it to ``clip_segments(wave, cfg, normalize=False)``, or call
    ``segments`` which does both.

    Pitch shift uses ``pitch_shift`` (phase vocoder + rational resampling)
    instead of torchaudio's (orders of magnitude slower on one core).
    Deterministic given the generator passed in: the steps' DSP
    (``audio_dsp``) draws nothing.
    """

    p_noise: float = 0.5
    snr_db: tuple[float, float] = (15.0, 35.0)
    p_pitch: float = 0.3
    max_semitones: float = 2.0
    p_speed: float = 0.5
    speed: tuple[float, float] = (0.85, 1.15)
    p_gain: float = 0.5
    max_gain_db: float = 6.0
    peak_dbfs: float = DEFAULT_CONFIG.peak_dbfs

    def augment(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """An augmented, peak-normalised (then possibly re-levelled) copy of ``wave``."""
        out = np.asarray(wave, dtype=np.float32)
        # Draw every decision up front so the random stream does not depend on the audio.
        draws = rng.random(4)
        speed = rng.uniform(*self.speed)
        semitones = rng.uniform(-self.max_semitones, self.max_semitones)
        snr = rng.uniform(*self.snr_db)
        gain_db = rng.uniform(-self.max_gain_db, self.max_gain_db)
        if draws[0] < self.p_speed:
            out = change_speed(out, speed)
        if draws[1] < self.p_pitch:
            out = pitch_shift(out, semitones)
        if draws[2] < self.p_noise:
            out = add_noise(out, snr, rng)
        out = normalize_peak(out, self.peak_dbfs)
        if draws[3] < self.p_gain:
            out = out * np.float32(10.0 ** (gain_db / 20.0))
        return out

    def segments(
        self, wave: np.ndarray, rng: np.random.Generator, cfg: LogMelConfig = DEFAULT_CONFIG
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``clip_segments`` of an augmented clip (the train-time counterpart of ``clip_segments``)."""
        return clip_segments(self.augment(wave, rng), cfg, normalize=False)
