"""The fast voice data path (shared_models/audio_dsp.py) computes what the torchaudio-based code did, to float rounding.

The reference below is the code of commit 1f1b8ba (shared_models/audio_features.py and audio_io.resample), kept
here only to compare against: MelSpectrogram for the log-mel, torchaudio's phase_vocoder and torch.istft for the
stretch, torchaudio's resample for speed and pitch. Inputs are decoded synthetic CREMA-D clips and edge cases.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torchaudio.functional as AF
import torchaudio.transforms as AT

from client.data.loaders.audio_files import decode_clip
from shared_models import audio_dsp
from shared_models.audio_features import (AMIN, DEFAULT_CONFIG, SAMPLE_RATE, LogMelConfig, WaveAugment, add_noise,
                                          change_speed, clip_segments, log_mel, normalize_peak, pitch_shift,
                                          resample, resample_ratio, time_stretch)
from simulations.synthetic.synth_voices import write_cremad

# ----------------------------------------------------------------------------------------------------------------
# Reference: the implementation of commit 1f1b8ba
# ----------------------------------------------------------------------------------------------------------------


def _old_log_mel(waves, cfg: LogMelConfig = DEFAULT_CONFIG) -> torch.Tensor:
    transform = AT.MelSpectrogram(
        sample_rate=SAMPLE_RATE, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels, f_min=0.0,
        f_max=SAMPLE_RATE / 2, window_fn=torch.hann_window, power=2.0, center=True, pad_mode="constant",
        norm="slaney", mel_scale="slaney")
    x = torch.as_tensor(np.asarray(waves, dtype=np.float32) if isinstance(waves, np.ndarray) else waves)
    with torch.no_grad():
        return 10.0 * torch.log10(torch.clamp(transform(x.float()), min=AMIN))


def _old_resample(wave, orig_rate, new_rate):
    if orig_rate == new_rate:
        return np.asarray(wave, dtype=np.float32)
    ratio = resample_ratio(int(orig_rate), int(new_rate))
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    return AF.resample(x, ratio.numerator, ratio.denominator).numpy()


def _ratio(x):
    return Fraction(x).limit_denominator(64)


def _old_change_speed(wave, factor):
    r = _ratio(factor)
    return _old_resample(wave, r.numerator, r.denominator)


def _old_time_stretch(wave, factor):
    if len(wave) <= 512:
        return _old_resample(wave, 1, 1) if factor == 1 else _old_change_speed(wave, 1.0 / factor)
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    window = torch.hann_window(512)
    spec = torch.stft(x, 512, 128, window=window, return_complex=True)
    advance = torch.linspace(0, math.pi * 128, spec.shape[-2])[..., None]
    stretched = AF.phase_vocoder(spec, 1.0 / factor, advance)
    return torch.istft(stretched, 512, 128, window=window, length=int(round(len(wave) * factor))).numpy()


def _old_pitch_shift(wave, semitones):
    r = _ratio(2.0 ** (semitones / 12.0))
    shifted = _old_resample(_old_time_stretch(wave, float(r)), r.numerator, r.denominator)
    out = np.zeros(len(wave), dtype=np.float32)
    n = min(len(wave), len(shifted))
    out[:n] = shifted[:n]
    return out


def _old_add_noise(wave, snr_db, rng):
    power = float(np.mean(np.square(wave, dtype=np.float64)))
    if power <= 0.0:
        return np.asarray(wave, dtype=np.float32)
    noise = rng.standard_normal(len(wave)) * math.sqrt(power / 10.0 ** (snr_db / 10.0))
    return (wave + noise).astype(np.float32)


def _old_clip_segments(wave, cfg=DEFAULT_CONFIG, normalize=True):
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    if normalize:
        wave = normalize_peak(wave, cfg.peak_dbfs)
    seg, window = cfg.segment_samples, cfg.segment_samples * cfg.max_segments
    if wave.size > window:
        start = (wave.size - window) // 2
        wave = wave[start : start + window]
    n_seg = -(-wave.size // seg)
    padded = np.zeros(n_seg * seg, dtype=np.float32)
    padded[: wave.size] = wave
    features = torch.full((cfg.max_segments, cfg.n_mels, cfg.frames_per_segment), -100.0, dtype=torch.float32)
    features[:n_seg] = _old_log_mel(padded.reshape(n_seg, seg), cfg)
    mask = torch.zeros(cfg.max_segments, dtype=torch.bool)
    mask[:n_seg] = True
    return features, mask


def _old_segments(aug: WaveAugment, wave, rng):
    out = np.asarray(wave, dtype=np.float32)
    draws = rng.random(4)
    speed = rng.uniform(*aug.speed)
    semitones = rng.uniform(-aug.max_semitones, aug.max_semitones)
    snr = rng.uniform(*aug.snr_db)
    gain_db = rng.uniform(-aug.max_gain_db, aug.max_gain_db)
    if draws[0] < aug.p_speed:
        out = _old_change_speed(out, speed)
    if draws[1] < aug.p_pitch:
        out = _old_pitch_shift(out, semitones)
    if draws[2] < aug.p_noise:
        out = _old_add_noise(out, snr, rng)
    out = normalize_peak(out, aug.peak_dbfs)
    if draws[3] < aug.p_gain:
        out = out * np.float32(10.0 ** (gain_db / 20.0))
    return _old_clip_segments(out, normalize=False)


# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[np.ndarray]:
    folder = write_cremad(tmp_path_factory.mktemp("cremad"), n_clips=6, seed=11, n_actors=2)
    return [decode_clip(p) for p in sorted(folder.rglob("*.wav"))]


def _assert_same_db(new: torch.Tensor, old: torch.Tensor, floor_db: float = -80.0, tol_db: float = 1e-3) -> None:
    """Equal to ``tol_db`` wherever either is above ``floor_db`` (below it float rounding of a quiet bin shows)."""
    assert new.shape == old.shape
    loud = (old > floor_db) | (new > floor_db)
    assert loud.any()
    gap = (new - old).abs()[loud].max().item()
    assert gap <= tol_db, f"log-mel differs by {gap:.2e} dB"
    assert bool(((new <= floor_db + 1) == (old <= floor_db + 1))[~loud].all())


def _assert_close_to_peak(new: np.ndarray, old: np.ndarray, rel: float = 1e-5) -> None:
    assert new.shape == old.shape and new.dtype == np.float32
    gap = float(np.max(np.abs(new.astype(np.float64) - old))) if new.size else 0.0
    assert gap <= rel * max(float(np.max(np.abs(old))), 1e-30), f"differs by {gap:.2e} (peak {np.max(np.abs(old)):.2e})"


@pytest.mark.parametrize("cfg", [DEFAULT_CONFIG, LogMelConfig(n_mels=40, n_fft=512, hop_length=128),
                                 LogMelConfig(n_mels=64, n_fft=400, hop_length=160)])
def test_log_mel_equals_torchaudio_melspectrogram_on_clips(clips, cfg):
    for wave in clips:
        new, mask = clip_segments(wave, cfg)
        old, old_mask = _old_clip_segments(wave, cfg)
        assert torch.equal(mask, old_mask)
        _assert_same_db(new, old)
        segment = normalize_peak(wave)[: cfg.segment_samples * 2].reshape(2, -1)
        _assert_same_db(log_mel(segment, cfg), _old_log_mel(segment, cfg))


def test_log_mel_edge_cases_equal_the_torchaudio_path():
    rng = np.random.default_rng(4)
    silence = np.zeros((2, 8000), np.float32)
    assert torch.equal(log_mel(silence), _old_log_mel(silence))  # -100 dB everywhere, exactly
    assert bool((log_mel(silence) == -100.0).all())
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(3000) / SAMPLE_RATE)).astype(np.float32)
    for wave in (tone, tone[:700], rng.standard_normal(5001).astype(np.float32) * 1e-3):
        _assert_same_db(log_mel(wave), _old_log_mel(wave))  # one (odd-length) wave, 1-D
        new, mask = clip_segments(wave)  # one short segment, zero-padded
        old, _ = _old_clip_segments(wave)
        assert int(mask.sum()) == 1
        _assert_same_db(new, old)
    long = (rng.standard_normal(4 * SAMPLE_RATE + 123) * np.linspace(0.01, 0.5, 4 * SAMPLE_RATE + 123)).astype(np.float32)
    new, mask = clip_segments(long)  # longer than 3 s: centre-cropped
    old, _ = _old_clip_segments(long)
    assert bool(mask.all())
    _assert_same_db(new, old)
    batch = torch.from_numpy(rng.standard_normal((2, 3, 8000)).astype(np.float32))
    assert log_mel(batch).shape == (2, 3, 128, 32)
    _assert_same_db(log_mel(batch), _old_log_mel(batch))


@pytest.mark.parametrize("orig,new", [(23, 20), (57, 64), (69, 64), (64, 69), (47, 54), (46, 40), (1, 2), (3, 1), (441, 160)])
def test_sinc_resample_equals_torchaudio_resample(clips, orig, new):
    rng = np.random.default_rng(orig * 100 + new)
    long = (rng.standard_normal(150_001) * 0.2).astype(np.float32)  # several blocks of frames for small ratios
    for wave in (clips[0], clips[1][:1001], long):
        expected = AF.resample(torch.from_numpy(wave), orig, new).numpy()
        _assert_close_to_peak(audio_dsp.sinc_resample(wave, orig, new), expected)
        _assert_close_to_peak(resample(wave, orig, new), expected)


@pytest.mark.parametrize("rate", [8000, 44100, 48000, 44101, 22050])
def test_resample_to_16k_equals_the_old_resample(clips, rate):
    wave = np.resize(clips[2], rate // 2)  # half a second at the file's rate
    _assert_close_to_peak(resample(wave, rate, SAMPLE_RATE), _old_resample(wave, rate, SAMPLE_RATE))


@pytest.mark.parametrize("rate", [0.87, 1.13, 64 / 69, 71 / 64, 1.5])
def test_phase_vocoder_equals_torchaudio(clips, rate):
    window = torch.hann_window(512)
    noise = torch.from_numpy(np.random.default_rng(1).standard_normal(20_000).astype(np.float32))
    for x in (torch.from_numpy(clips[3]), noise):
        spec = torch.stft(x, 512, 128, window=window, return_complex=True)
        advance = torch.linspace(0, math.pi * 128, spec.shape[-2])[..., None]
        expected = AF.phase_vocoder(spec, rate, advance)
        got = audio_dsp.phase_vocoder(spec, rate, advance)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        gap = (got - expected).abs().max().item()
        assert gap <= 1e-5 * expected.abs().max().item()
        for length in (len(x), int(round(len(x) / rate)), (expected.shape[-1] + 7) * 128):  # the last: zero tail
            _assert_close_to_peak(audio_dsp.istft(got, 512, 128, length).numpy(),
                                  torch.istft(expected, 512, 128, window=window, length=length).numpy())


@pytest.mark.parametrize("amount", [-2.0, -0.7, 0.001, 0.4, 1.9])
def test_time_stretch_pitch_shift_and_speed_equal_the_old_ones(clips, amount):
    factor = 2.0 ** (amount / 12.0)
    for wave in (clips[4], clips[5][:500], normalize_peak(clips[0])):
        _assert_close_to_peak(time_stretch(wave, factor), _old_time_stretch(wave, factor))
        _assert_close_to_peak(pitch_shift(wave, amount), _old_pitch_shift(wave, amount))
        _assert_close_to_peak(change_speed(wave, 1.0 + amount / 13.0), _old_change_speed(wave, 1.0 + amount / 13.0))


def test_add_noise_draws_and_returns_exactly_what_it_did(clips):
    for wave in (clips[0], np.zeros(900, np.float32)):
        new_rng, old_rng = np.random.default_rng(9), np.random.default_rng(9)
        assert np.array_equal(add_noise(wave, 17.5, new_rng), _old_add_noise(wave, 17.5, old_rng))
        assert new_rng.bit_generator.state == old_rng.bit_generator.state


@pytest.mark.parametrize("aug", [WaveAugment(), WaveAugment(p_noise=1.0, p_pitch=1.0, p_speed=1.0, p_gain=1.0)])
def test_augmented_segments_equal_the_old_implementation(clips, aug):
    """Same generator in, same draws consumed, same features out (to float rounding) for every clip and seed."""
    for seed in range(4):
        for wave in clips:
            new_rng, old_rng = np.random.default_rng(seed), np.random.default_rng(seed)
            new, mask = aug.segments(wave, new_rng)
            old, old_mask = _old_segments(aug, wave, old_rng)
            assert new_rng.bit_generator.state == old_rng.bit_generator.state
            assert torch.equal(mask, old_mask)
            _assert_same_db(new, old)
