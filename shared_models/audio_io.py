"""Reading a clip as the speech features need it: mono float32 at 16 kHz, with a bounded resampler.

``read_waveform`` is where a clip that passed the header check can still turn out broken, so it raises
``DatasetFormatError`` naming the file. ``resample_ratio`` rounds rate ratios whose resampling kernel would
not fit in memory (docs/data.md, "Resampling"); ``normalize_peak`` equalises recording gain.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from shared_models.audio_dsp import sinc_resample
from shared_models.dataset_format_error import DatasetFormatError

SAMPLE_RATE = 16000


def read_waveform(path: str | Path, max_seconds: float | None = None) -> np.ndarray:
    """Decode a clip to float32 mono at 16 kHz.

    Voice loaders only index files, so this is where a clip that passed the
    header check can still turn out to be broken; it raises
    ``DatasetFormatError`` naming the file rather than feeding garbage on.
    ``max_seconds`` decodes only that much around the centre of a longer clip
    (features use the centre anyway), so a stray hour-long recording cannot
    exhaust memory.
    """
    try:
        with sf.SoundFile(str(path)) as f:
            rate = f.samplerate
            keep = int(max_seconds * rate) if max_seconds is not None else f.frames
            if 0 < keep < f.frames:
                f.seek((f.frames - keep) // 2)
            data = f.read(min(keep, f.frames) if f.frames > 0 else -1, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, OSError...
        raise DatasetFormatError(path, f"unreadable audio file ({exc})") from exc
    if data.shape[0] == 0:
        raise DatasetFormatError(path, "audio file has zero frames (no audio)")
    wave = data.mean(axis=1, dtype=np.float32)
    if not np.all(np.isfinite(wave)):
        raise DatasetFormatError(path, "audio contains NaN or infinite samples")
    if rate != SAMPLE_RATE:
        wave = resample(wave, rate, SAMPLE_RATE)
    return np.ascontiguousarray(wave, dtype=np.float32)


# A windowed-sinc resampler from p to q samples builds a kernel of about p x q cells (p, q: the rates divided by
# their gcd). 44.1 -> 16 kHz is 441 x 160; but 44,101 Hz shares no factor with 16 kHz, so its kernel would be
# 44,101 x 16,000 cells (2.8 GB), and 383,999 Hz 24.6 GB. Above this many cells the ratio is rounded instead.
MAX_KERNEL_CELLS = 1 << 20  # 4 MiB of float32 (8 MiB while torchaudio builds it in float64)
RATIO_TOLERANCE = 1e-4  # a rounded ratio this close plays 0.17 cents off pitch, 3 ms off over 30 s


@functools.lru_cache(maxsize=256)
def resample_ratio(orig_rate: int, new_rate: int) -> Fraction:
    """The ratio ``orig/new`` that ``resample`` actually uses: exact, or a small fraction close to it.

    Exact when the reduced ratio's kernel fits ``MAX_KERNEL_CELLS`` (every common rate: 8, 11.025, 22.05,
    44.1, 48, 96, 384 kHz). Otherwise the fraction with the smallest denominator (doubling the bound) that is
    within ``RATIO_TOLERANCE`` of the exact one, or the closest whose kernel still fits: so memory is
    bounded whatever the rate, and the cost is a pitch and tempo error of at most 0.094 % (1.6 cents; the
    worst integer rate from 4 to 384 kHz is 16,015 Hz, resampled 1/1), under 0.01 % for most rates.
    """
    exact = Fraction(int(orig_rate), int(new_rate))
    if exact.numerator * exact.denominator <= MAX_KERNEL_CELLS:
        return exact
    best, bound = Fraction(max(1, round(exact))), 1
    while bound <= MAX_KERNEL_CELLS:
        candidate = exact.limit_denominator(bound)
        if candidate.numerator * candidate.denominator > MAX_KERNEL_CELLS:
            break
        best = candidate
        if abs(float(candidate / exact) - 1.0) <= RATIO_TOLERANCE:
            break
        bound *= 2
    return best


def resampling_note(orig_rate: int, new_rate: int = 16000) -> str | None:
    """A plain-words note when ``orig_rate`` is resampled by a rounded ratio (None when exact)."""
    used = resample_ratio(int(orig_rate), int(new_rate))
    exact = Fraction(int(orig_rate), int(new_rate))
    if used == exact:
        return None
    return (f"{orig_rate} Hz shares no small ratio with {new_rate} Hz: resampled as if it were "
            f"{float(used * new_rate):.1f} Hz (ratio {used.numerator}/{used.denominator}; pitch and tempo off by "
            f"{abs(float(used / exact) - 1.0) * 100:.4f} %)")


def resample(wave: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling (torchaudio's windowed sinc) with a kernel of bounded size.

    torchaudio's kernel has (orig/gcd) x (new/gcd) cells, so the ratio is first
    passed through ``resample_ratio``: exact for common rates, rounded (by at
    most 0.094 %) for rates such as 44,101 Hz that share no factor with the
    target. Peak memory then stays within a few tens of MB above the clip
    itself for any accepted rate (``simulations/benchmarks/resample_memory.py``). ``audio_dsp.sinc_resample``
    computes what ``torchaudio.functional.resample`` does (to float rounding), with the kernel of small ratios
    (the augmentation's speed and pitch) built once.
    """
    if orig_rate == new_rate:
        return np.asarray(wave, dtype=np.float32)
    ratio = resample_ratio(int(orig_rate), int(new_rate))
    if ratio == 1:
        return np.asarray(wave, dtype=np.float32)
    return sinc_resample(wave, ratio.numerator, ratio.denominator)


def normalize_peak(wave: np.ndarray, dbfs: float = -3.0) -> np.ndarray:
    """Scale so the largest absolute sample is ``dbfs`` dB full scale.

    Equalises recording gain across corpora and microphones. A silent clip is
    returned as (float32) silence instead of dividing by zero.
    """
    wave = np.asarray(wave, dtype=np.float32)
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    if peak < np.finfo(np.float32).tiny:
        return np.zeros_like(wave)
    return (wave * (10.0 ** (dbfs / 20.0) / peak)).astype(np.float32)
