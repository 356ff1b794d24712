"""Source-filter synthesis of one take: timing, F0 contour, glottal source, formant filter, room and channel.

Contours are built on a 1 kHz control grid and interpolated, so per-sample work is a few vectorised passes.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal
from scipy.ndimage import uniform_filter1d

from simulations.synthetic.voices.cues import CUE_NAMES, CUE_UNITS, EMOTION_STYLES
from simulations.synthetic.voices.population import Speaker, VoiceDifficulty

# Vowel formants F1-F4 (Hz, adult male, Peterson & Barney style) and bandwidths.
VOWELS = np.array([
    [730, 1090, 2440, 3400],  # a
    [270, 2290, 3010, 3700],  # i
    [300, 870, 2240, 3400],  # u
    [530, 1840, 2480, 3500],  # e
    [570, 840, 2410, 3400],  # o
    [660, 1720, 2410, 3500],  # ae
    [490, 1350, 1690, 3300],  # er
], dtype=float)
FORMANT_BANDWIDTHS = np.array([80.0, 100.0, 140.0, 200.0])

CONTROL_RATE = 1000  # Hz: F0 and envelope contours are built at this rate, then interpolated
REF_RMS = 0.015  # voiced-speech RMS of a neutral take at 0 dB level (about -36 dBFS): headroom for anger


@dataclass(frozen=True)
class Take:
    """Everything that defines one clip besides its random draws."""

    style: str  # key of EMOTION_STYLES
    level: float  # intensity scale of the emotion
    n_syllables: int
    vowels: tuple[int, ...]  # row of VOWELS per syllable (fixed by the sentence text)


def sentence_vowels(code: str, n_syllables: int) -> tuple[int, ...]:
    """A fixed vowel sequence per sentence, so every actor says 'the same words'."""
    rng = np.random.default_rng(zlib.crc32(code.encode()))
    return tuple(int(v) for v in rng.integers(0, len(VOWELS), n_syllables))


def _take_cues(sp: Speaker, take: Take, rng: np.random.Generator, d: VoiceDifficulty) -> np.ndarray:
    strength = d.cue_strength * take.level * sp.expressiveness
    noise = rng.standard_normal(len(CUE_NAMES)) * CUE_UNITS * d.take_variability
    return strength * EMOTION_STYLES[take.style] + sp.idiosyncrasy[take.style] + sp.offset + noise


def _smooth(x: np.ndarray, width: float) -> np.ndarray:
    """Two passes of a centred moving average (a triangular kernel ~2*width wide), O(n)."""
    width = max(1, int(width))
    return uniform_filter1d(uniform_filter1d(np.asarray(x, dtype=float), width, mode="nearest"), width, mode="nearest")


def _shelf_sos(gain_db: float, corner_hz: float, sr: int) -> np.ndarray:
    """One SOS row for x + g * (x - lowpass(x)): boosts (or cuts) everything above ``corner_hz``.

    With a one-pole low-pass (1 - a) / (1 - a z^-1) this is
    ((1 + g a) - a (1 + g) z^-1) / (1 - a z^-1), g = 10^(gain_db / 20) - 1:
    unity at DC, 1 + g well above the corner. As an SOS row it joins the
    formant or channel cascade instead of costing a filter pass of its own.
    """
    a = math.exp(-2.0 * math.pi * corner_hz / sr)
    g = 10.0 ** (gain_db / 20.0) - 1.0
    return np.array([[1.0 + g * a, -a * (1.0 + g), 0.0, 1.0, -a, 0.0]])


@functools.lru_cache(maxsize=64)
def _butter(kind: str, cutoff: tuple[float, ...] | float, sr: int, order: int) -> np.ndarray:
    return signal.butter(order, cutoff, btype=kind, fs=sr, output="sos")


def _formant_sos(formants: np.ndarray, sr: int) -> np.ndarray:
    """Cascade of two-pole resonators with unity DC gain (Klatt), one SOS row per formant."""
    f = np.minimum(formants, 0.45 * sr)
    r = np.exp(-math.pi * FORMANT_BANDWIDTHS / sr)
    c1 = -2.0 * r * np.cos(2.0 * math.pi * f / sr)
    c2 = r * r
    sos = np.zeros((len(f), 6))
    sos[:, 0] = 1.0 + c1 + c2
    sos[:, 3] = 1.0
    sos[:, 4] = c1
    sos[:, 5] = c2
    return sos


@dataclass
class _Timing:
    starts: np.ndarray  # syllable start times, s
    durs: np.ndarray  # syllable durations, s
    stress: np.ndarray  # bool per syllable
    total: float  # clip length, s


def _timing(n_syl: int, rate: float, rng: np.random.Generator, d: VoiceDifficulty) -> _Timing:
    """Syllable onsets/durations with lengthening, stress and pauses, fitted to the duration range."""
    stress = rng.random(n_syl) < 0.35
    stress[rng.integers(n_syl)] = True
    durs = np.exp(rng.normal(0.0, 0.25, n_syl)) / rate * np.where(stress, 1.3, 1.0)
    durs[-1] *= 1.3  # phrase-final lengthening
    gaps = np.where(rng.random(n_syl) < 0.12, rng.uniform(0.05, 0.2, n_syl), 0.0)
    gaps[-1] = 0.0
    lead, trail = rng.uniform(0.15, 0.45, 2)
    speech = float(durs.sum() + gaps.sum())
    lo, hi = d.duration_s
    total = lead + speech + trail
    if total > hi:  # compress everything to fit the maximum clip length
        k = hi / total
        durs, gaps, lead, total = durs * k, gaps * k, lead * k, hi
    total = max(total, lo)
    starts = lead + np.concatenate([[0.0], np.cumsum(durs + gaps)[:-1]])
    return _Timing(starts=starts, durs=durs, stress=stress, total=total)


def _f0_contour(tc: np.ndarray, tm: _Timing, f0: float, range_st: float, final_st: float,
                rng: np.random.Generator) -> np.ndarray:
    """F0 in Hz on the control grid: accents at syllable centres, declination, final movement, drift."""
    n_syl = len(tm.starts)
    centres = tm.starts + tm.durs / 2
    accents = (rng.standard_normal(n_syl) + 0.8 * tm.stress) * range_st
    st = np.interp(tc, centres, accents)
    speech_end = tm.starts[-1] + tm.durs[-1]
    st -= 1.5 * (tc - tm.starts[0]) / max(speech_end - tm.starts[0], 1e-3)  # declination
    st += final_st * np.clip((tc - tm.starts[-1]) / tm.durs[-1], 0.0, 1.0)
    st = _smooth(st, 0.05 * CONTROL_RATE)
    drift_w = 0.1 * CONTROL_RATE
    st += 0.3 * _smooth(rng.standard_normal(len(tc)), drift_w) * math.sqrt(1.5 * drift_w)  # ~0.3 st std
    return f0 * 2.0 ** (st / 12.0)


def _envelopes(tc: np.ndarray, tm: _Timing, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Voicing amplitude and frication gate on the control grid.

    Most syllables open with an unvoiced consonant (15-35% of the syllable),
    the rest of the syllable is a voiced nucleus with a rise-fall envelope;
    stressed syllables are 4 dB louder.
    """
    n_syl = len(tm.starts)
    idx = np.clip(np.searchsorted(tm.starts, tc, side="right") - 1, 0, None)
    u = (tc - tm.starts[idx]) / tm.durs[idx]
    in_syl = (tc >= tm.starts[0]) & (u < 1.0)
    onset = np.where(rng.random(n_syl) < 0.3, 0.0, rng.uniform(0.15, 0.35, n_syl))
    voiced = in_syl & (u >= onset[idx])
    v = np.clip((u - onset[idx]) / (1.0 - onset[idx]), 0.0, 1.0)
    gain = 10.0 ** ((np.where(tm.stress, 4.0, 0.0) + rng.normal(0.0, 1.5, n_syl)) / 20.0)
    voicing = _smooth(voiced * np.sqrt(np.sin(math.pi * v)) * gain[idx], 0.01 * CONTROL_RATE)
    frication = _smooth((in_syl & ~voiced) * 1.0, 0.005 * CONTROL_RATE)
    return voicing, frication


def _glottal_source(f0: np.ndarray, jitter: float, shimmer: float, open_q: float, breath: float,
                    white: np.ndarray, rng: np.random.Generator, sr: int) -> np.ndarray:
    """Differentiated Rosenberg pulses with per-period jitter and shimmer, plus gated aspiration noise."""
    nominal = np.cumsum(f0 / sr)
    jit = np.exp(jitter * rng.standard_normal(int(nominal[-1]) + 2))
    phase = np.cumsum(f0 * jit[nominal.astype(np.int64)] / sr)
    cycle = phase.astype(np.int64)
    frac = phase - cycle
    tp = 0.6 * open_q
    opening = frac < tp
    c = np.cos(np.where(opening, (math.pi / tp) * frac, (0.5 * math.pi / (open_q - tp)) * (frac - tp)))
    flow = np.where(opening, 0.5 * (1.0 - c), np.where(frac < open_q, c, 0.0))
    amp = np.exp(shimmer * rng.standard_normal(int(cycle[-1]) + 1))
    src = np.diff(flow, prepend=flow[0]) * amp[cycle]
    src *= 1.0 / (np.sqrt(np.mean(src**2)) + 1e-12)
    return src + (3.0 * breath) * white * np.where(frac < open_q, 1.0, 0.3)


def _vocal_tract(source: np.ndarray, tilt_db: float, tm: _Timing, take: Take, scale: np.ndarray,
                 rng: np.random.Generator, sr: int) -> np.ndarray:
    """Spectral-tilt shelf then per-syllable formant cascade; filter state is carried across syllables."""
    out = np.empty_like(source)
    bounds = np.append(np.minimum((tm.starts[1:] * sr).astype(np.int64), len(source)), len(source))
    tilt = _shelf_sos(tilt_db, 1000.0, sr)
    zi = np.zeros((1 + len(FORMANT_BANDWIDTHS), 2))
    lo = 0
    for s, hi in enumerate(bounds):
        formants = VOWELS[take.vowels[s]] * scale * np.exp(rng.normal(0.0, 0.03, 4))
        out[lo:hi], zi = signal.sosfilt(np.vstack([tilt, _formant_sos(formants, sr)]), source[lo:hi], zi=zi)
        lo = hi
    return out


def synthesize_take(sp: Speaker, take: Take, rng: np.random.Generator, sr: int,
               d: VoiceDifficulty | None = None) -> np.ndarray:
    """One take of ``sp`` acting ``take`` as float32 samples at ``sr`` (room and channel included).

    Contours (F0, envelopes) are built on a 1 kHz control grid and
    interpolated, so per-sample work is a handful of vectorised passes.
    """
    d = d or VoiceDifficulty()
    cue = dict(zip(CUE_NAMES, _take_cues(sp, take, rng, d)))
    tm = _timing(take.n_syllables, sp.rate_syl_s * math.exp(cue["log_tempo"]), rng, d)
    n = int(round(tm.total * sr))
    tc = np.arange(int(tm.total * CONTROL_RATE) + 2) / CONTROL_RATE
    voicing, frication = _envelopes(tc, tm, rng)
    f0_c = _f0_contour(tc, tm, sp.f0_hz * 2.0 ** (cue["pitch_st"] / 12.0),
                       sp.range_st * math.exp(cue["log_range"]), cue["final_st"], rng)
    t = np.arange(n) / sr
    env = np.interp(t, tc, voicing)
    white = rng.standard_normal(n)  # shared by aspiration and frication (never loud at the same time)

    tilt = sp.tilt_db + cue["tilt_db"]
    source = _glottal_source(
        np.interp(t, tc, f0_c), sp.jitter * math.exp(cue["log_jitter"]), sp.shimmer * math.exp(cue["log_shimmer"]),
        open_q=float(np.clip(0.6 - 0.015 * tilt, 0.4, 0.8)),
        breath=float(np.clip(sp.breath + cue["breath"], 0.0, 0.6)), white=white, rng=rng, sr=sr)
    formant_shift = math.exp(cue["log_formant"])
    scale = sp.formant_scale * np.array([formant_shift**1.5, formant_shift, 1.0, 1.0])
    speech = _vocal_tract(source * env, tilt, tm, take, scale, rng, sr)

    loud = env > 0.3 * env.max()
    speech_rms = math.sqrt(np.mean(speech[loud] ** 2)) + 1e-12
    fric = signal.sosfilt(_butter("bandpass", (2500.0, min(6000.0, 0.45 * sr)), sr, 2), white)
    speech += (0.5 * speech_rms / (np.std(fric) + 1e-12)) * fric * np.interp(t, tc, frication)
    speech *= REF_RMS * 10.0 ** ((sp.level_db + cue["energy_db"]) / 20.0) / speech_rms
    return _room_and_channel(speech, rng, sr, d).astype(np.float32)


def _room_and_channel(speech: np.ndarray, rng: np.random.Generator, sr: int, d: VoiceDifficulty) -> np.ndarray:
    """Reverb (sometimes), recording EQ, band limit and background noise at a fixed per-take level."""
    n = len(speech)
    draws = rng.random(2)
    rt60 = rng.uniform(*d.rt60_s)
    if draws[0] < d.reverb_prob:
        length = int(min(rt60, 0.5) * sr)
        ir = rng.standard_normal(length) * np.exp(-6.9 * np.arange(length) / (rt60 * sr))
        wet = signal.oaconvolve(speech, ir)[:n]
        drr = 10.0 ** (-rng.uniform(3.0, 12.0) / 20.0)  # direct-to-reverberant ratio 3-12 dB
        speech = speech + drr * wet * np.std(speech) / (np.std(wet) + 1e-12)
    eq = _shelf_sos(rng.normal(0.0, d.channel_tilt_db), 1500.0, sr)
    cutoff = min(100.0 * round(rng.uniform(*d.channel_lowpass_hz) / 100.0), 0.45 * sr)  # 100 Hz steps: cached
    out = signal.sosfilt(np.vstack([eq, _butter("lowpass", cutoff, sr, 4)]), speech)
    white = rng.standard_normal(n)
    noise = signal.lfilter([1.0], [1.0, -0.9], white) + 1.15 * white  # reddish room noise with a white floor
    noise *= REF_RMS * 10.0 ** (-rng.uniform(*d.snr_db) / 20.0) / np.std(noise)
    return np.clip(out + noise, -1.0, 1.0)


def _write_wav(path: Path, wave: np.ndarray, sr: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, sr, subtype="PCM_16")
