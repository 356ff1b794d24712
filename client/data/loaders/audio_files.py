"""Checks every voice loader applies to a clip: the cheap header check and the full decode check.

The loaders index clips with ``check_audio_header`` only (opening the header
of 7,442 files takes a second; decoding them all, a minute), which catches
files that are not audio, empty, truncated, far too short, or at an absurd
sample rate. What only decoding reveals (NaN or infinite samples, digital
silence) is caught by ``decode_clip``, which ``fedemo data check`` runs on
every clip and the training data (``client.data.torch_data``) on the clips a node
uses: either way the clip is named and counted, never fed to training.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import soundfile as sf

from client.data.loaders.base import DatasetFormatError, Skipped, os_problem

MIN_CLIP_SECONDS = 0.05  # shorter clips carry no speech, and break framing/pitch shifting
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4000, 384000
MAX_DECODE_SECONDS = 30.0  # longer clips are decoded around their centre only (features use the centre 3 s)
SILENCE_PEAK = 1e-5  # below -100 dBFS: digital silence
LONG_CLIP_SECONDS = 10.0  # data check mentions clips longer than this (only their centre is used)


def _wav_truncation(path: Path) -> str | None:
    """For RIFF/WAVE files: a reason if the data chunk claims more bytes than the file holds.

    libsndfile quietly shortens such files to what is there, so a clip cut off
    by a failed copy would otherwise train as a shorter clip without a word.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            size = path.stat().st_size
            offset = 12
            while offset + 8 <= size:
                f.seek(offset)
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                chunk_id, chunk_size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if chunk_id == b"data":
                    available = size - (offset + 8)
                    if chunk_size not in (0, 0xFFFFFFFF) and chunk_size > available:
                        return (f"truncated: the header declares {chunk_size} bytes of audio, "
                                f"the file holds {available}")
                    return None
                offset += 8 + chunk_size + (chunk_size & 1)
    except OSError:
        return None
    return None


def check_audio_header(path: Path, ref: str, skipped: list[Skipped]) -> bool:
    """Cheap header check shared by the voice loaders: opens as audio, not truncated, long enough.

    Appends a ``Skipped`` naming the problem and returns False otherwise.
    """
    try:  # libsndfile reports an unreadable file as "System error": ask the OS first, for a clear reason
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:
        skipped.append(Skipped(ref, f"cannot read file: {os_problem(err)}"))
        return False
    if path.stat().st_size == 0:
        skipped.append(Skipped(ref, "empty file (0 bytes)"))
        return False
    try:
        info = sf.info(str(path))
    except Exception as exc:  # LibsndfileError / RuntimeError / OSError depending on the soundfile version
        detail = re.sub(r"^Error opening .*?: ", "", str(exc))  # the ref already names the file
        skipped.append(Skipped(ref, f"unreadable audio header ({detail.strip()})"))
        return False
    if info.frames <= 0:
        skipped.append(Skipped(ref, "audio file has zero frames (no audio)"))
        return False
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        skipped.append(Skipped(ref, f"sample rate {info.samplerate} Hz is outside "
                                    f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz"))
        return False
    truncated = _wav_truncation(path)
    if truncated:
        skipped.append(Skipped(ref, truncated))
        return False
    if info.frames < MIN_CLIP_SECONDS * info.samplerate:
        skipped.append(Skipped(ref, f"clip is {info.frames} sample(s) ({info.frames / info.samplerate:.4f} s) long, "
                                    f"shorter than the {MIN_CLIP_SECONDS} s minimum"))
        return False
    return True


def decode_clip(path: Path) -> np.ndarray:
    """Decode a clip for training (float32 mono 16 kHz), or raise ``DatasetFormatError`` naming it.

    On top of ``read_waveform``'s checks (unreadable, empty, NaN/Inf): too
    short after decoding, and digital silence (no emotion to learn; it would
    also add nothing to the normalisation statistics).
    """
    from shared_models.audio_features import SAMPLE_RATE, read_waveform

    if not Path(path).exists():
        raise DatasetFormatError(path, "file no longer exists (it was indexed, then removed or renamed)")
    try:
        wave = read_waveform(path, max_seconds=MAX_DECODE_SECONDS)
    except DatasetFormatError:
        raise
    except Exception as exc:  # resampling of a pathological file, memory
        raise DatasetFormatError(path, f"cannot decode audio ({type(exc).__name__}: {exc})") from None
    if wave.size < MIN_CLIP_SECONDS * SAMPLE_RATE:
        raise DatasetFormatError(path, f"clip decodes to {wave.size} sample(s) at {SAMPLE_RATE} Hz, "
                                       f"shorter than the {MIN_CLIP_SECONDS} s minimum")
    if float(np.max(np.abs(wave))) < SILENCE_PEAK:
        raise DatasetFormatError(path, "audio is digital silence (peak below -100 dBFS)")
    return wave
