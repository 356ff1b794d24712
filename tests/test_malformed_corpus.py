"""Malformed-input corpus (issue 11): every case is a real file or folder written to tmp_path.

Each case ends one of three ways, checked through the loader (``load_dataset``,
what a node runs) and through ``fedemo data check`` (``check_data_dir``):

- ``Skip``: the loader leaves the file or line out and names it with the
  reason, once; data check lists it once and the folder is still READY.
- ``DecodeSkip``: the header is fine, so the loader indexes the clip, but its
  samples are unusable (NaN, silence): data check decodes every clip and
  lists it once, and the training data (``EmotionSamples``) skips and counts
  it instead of feeding it to feature extraction or augmentation.
- ``Error``: a ``DatasetFormatError`` whose text names the file and the
  problem; data check says NOT READY with the same text.
- ``Accept``: unusual but valid input, read correctly (asserted per case).

No mocks: WAV, PNG, JPEG and CSV bytes are written as a hospital would have them.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from client.tools.data_check import check_data_dir, default_task, describe
from client.data.loaders.base import DatasetFormatError, EmotionData
from client.data.loaders.registry import load_dataset
from client.data.torch_data import EmotionSamples
from shared_models.audio_features import SAMPLE_RATE, WaveAugment, pitch_shift
from shared_models.taxonomy import EMOTION_INDEX

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------
# Builders: small, valid folders in each published layout
# ---------------------------------------------------------------------------


def tone(seconds: float = 0.5, sr: int = SAMPLE_RATE, freq: float = 220.0, amp: float = 0.3,
         seed: int = 0) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    noise = np.random.default_rng(seed).standard_normal(t.size) * 0.01
    return (amp * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def write_wav(path: Path, wave: np.ndarray, sr: int = SAMPLE_RATE, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, sr, subtype=subtype)
    return path


CREMAD_GOOD = ("1001_DFA_ANG_XX", "1001_IEO_HAP_HI", "1002_TIE_SAD_LO", "1002_IOM_NEU_XX")
DEMOGRAPHICS = ('"ActorID","Age","Sex","Race","Ethnicity"\n'
                '1001,51,Male,Caucasian,Not Hispanic\n'
                '1002,21,Female,African American,Hispanic\n')


def cremad(root: Path) -> Path:
    for i, stem in enumerate(CREMAD_GOOD):
        write_wav(root / "AudioWAV" / f"{stem}.wav", tone(freq=200 + 40 * i, seed=i))
    (root / "VideoDemographics.csv").write_text(DEMOGRAPHICS)
    return root


RAVDESS_GOOD = {"Actor_01": ("03-01-05-01-01-01-01", "03-01-03-02-02-01-01"),
                "Actor_02": ("03-01-04-01-01-02-02", "03-01-01-01-02-01-02")}


def ravdess(root: Path) -> Path:
    for folder, stems in RAVDESS_GOOD.items():
        for i, stem in enumerate(stems):
            write_wav(root / folder / f"{stem}.wav", tone(sr=48000, freq=180 + 50 * i, seed=i), sr=48000)
    return root


def pixels(value: int | None = None, seed: int = 0, n: int = 48 * 48) -> str:
    values = np.full(n, value) if value is not None else np.random.default_rng(seed).integers(0, 256, n)
    return " ".join(str(int(v)) for v in values)


FER_GOOD = [f"3,{pixels(seed=1)},Training", f"0,{pixels(seed=2)},Training",
            f"6,{pixels(seed=3)},PublicTest", f"4,{pixels(seed=4)},PrivateTest"]


def fer(root: Path, extra: list[str] = (), header: str = "emotion,pixels,Usage", before: list[str] = ()) -> Path:
    """fer2013.csv: header, ``before`` lines, 4 good rows, ``extra`` lines. Data lines start at line 2."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "fer2013.csv").write_text("\n".join([header, *before, *FER_GOOD, *extra]) + "\n")
    return root


RAF_GOOD = [("train_00001.jpg", 4), ("train_00002.jpg", 6), ("test_0001.jpg", 1), ("test_0002.jpg", 7)]


def face_image(seed: int, side: int = 100) -> np.ndarray:
    """A smooth gradient face stand-in (survives JPEG and resizing closely)."""
    y, x = np.mgrid[0:side, 0:side]
    return ((x * (1 + seed % 3) + y * 2) * 255 // (side * (3 + seed % 3))).astype(np.uint8)


def rafdb(root: Path, labels: list[tuple[str, int]] = RAF_GOOD, extra_lines: list[str] = ()) -> Path:
    for i, (name, _) in enumerate(labels):
        aligned = root / "Image" / "aligned" / f"{Path(name).stem}_aligned.jpg"
        aligned.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(face_image(i)).convert("RGB").save(aligned, quality=95)
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    label_file.parent.mkdir(parents=True, exist_ok=True)
    label_file.write_text("".join(f"{n} {c}\n" for n, c in labels) + "".join(f"{x}\n" for x in extra_lines))
    return root


def aligned(root: Path, name: str) -> Path:
    return root / "Image" / "aligned" / f"{Path(name).stem}_aligned.jpg"


def add_raf_label(root: Path, line: str) -> None:
    with open(root / "EmoLabel" / "list_patition_label.txt", "a") as f:
        f.write(line + "\n")


def png_bytes(width: int, height: int, bit_depth: int = 8, color_type: int = 0, rows: bytes | None = None) -> bytes:
    """A PNG written by hand: header as claimed, a tiny (or given) image body."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = zlib.compress(rows if rows is not None else b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def outside_file(tmp_path: Path, name: str, data: bytes) -> Path:
    """A real, valid file that lives outside the dataset folder (the target of a symlink case)."""
    target = tmp_path / "elsewhere" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def wav_bytes(wave: np.ndarray, sr: int = SAMPLE_RATE, subtype: str = "PCM_16") -> bytes:
    with tempfile.TemporaryDirectory() as d:
        return write_wav(Path(d) / "x.wav", wave, sr, subtype).read_bytes()


# ---------------------------------------------------------------------------
# Expected outcomes and their checks
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Skip:
    ref: str  # the skipped file or line, as the loader names it relative to the dataset folder
    reason: str  # regex the reason must match
    check: Callable[[EmotionData], None] | None = None  # what else must hold of the rows that were kept


@dataclass(frozen=True)
class DecodeSkip:
    ref: str
    reason: str


@dataclass(frozen=True)
class Error:
    name: str  # the file or folder the message must name
    problem: str  # regex the message must match


@dataclass(frozen=True)
class Accept:
    check: Callable[[EmotionData], None] | None = None
    warning: str | None = None  # regex one of data check's warnings must match


@dataclass(frozen=True)
class Case:
    id: str
    dataset: str
    build: Callable[[Path], Path]  # tmp_path -> dataset folder
    expect: Skip | DecodeSkip | Error | Accept
    task: str | None = None


def holds(predicate: Callable[[EmotionData], bool]) -> Callable[[EmotionData], None]:
    """An ``Accept`` check from a predicate on the loaded data."""
    def check(data: EmotionData) -> None:
        assert predicate(data), f"unexpected result: {len(data)} rows, refs {list(data.refs)}"
    return check


def _loader(root: Path, case: Case) -> EmotionData:
    return load_dataset(case.dataset, root, case.task or default_task(case.dataset))


def _assert_listed_once(report, ref: str, reason: str) -> None:
    hits = [s for s in report.skipped if s["ref"] == ref]
    assert len(hits) == 1, f"{ref} should be listed once, got {report.skipped}"
    assert re.search(reason, hits[0]["reason"]), hits[0]
    assert f"skipped {ref}: " in describe(report)


def check_case(case: Case, tmp_path: Path) -> None:
    root = case.build(tmp_path)
    expect = case.expect
    if isinstance(expect, Error):
        with pytest.raises(DatasetFormatError) as err:
            _loader(root, case)
        message = str(err.value)
        assert expect.name in message and re.search(expect.problem, message), message
        assert "\n" not in message, "one line, not a traceback"
        report = check_data_dir(root, case.dataset, case.task)
        assert not report.ready
        assert any(expect.name in p and re.search(expect.problem, p) for p in report.problems), report.problems
        assert describe(report).startswith("NOT READY")
        return

    data = _loader(root, case)
    report = check_data_dir(root, case.dataset, case.task)
    assert report.ready, report.problems
    if isinstance(expect, Skip):
        hits = [s for s in data.skipped if s.ref == expect.ref]
        assert len(hits) == 1, f"{expect.ref} should be skipped once, got {data.skipped}"
        assert re.search(expect.reason, hits[0].reason), hits[0]
        assert expect.ref not in set(data.refs)
        _assert_listed_once(report, expect.ref, expect.reason)
        assert report.samples == len(data)
        if expect.check is not None:
            expect.check(data)
    elif isinstance(expect, DecodeSkip):
        assert expect.ref in set(data.refs), "the header is fine: the loader indexes the clip"
        _assert_listed_once(report, expect.ref, expect.reason)
        assert report.samples == len(data) - 1
        samples = EmotionSamples(data, case.task or "voice", augment=True, seed=0)
        assert [s.ref for s in samples.skipped] == [expect.ref]
        assert re.search(expect.reason, samples.skipped[0].reason)
        assert len(samples) == len(data) - 1
        for i in range(len(samples)):  # augmentation (speed, pitch, noise) on every clip that is left
            features = samples[i][0]
            assert bool(features.isfinite().all())
    else:
        assert report.skipped == [] and data.skipped == [], data.skipped
        if expect.check is not None:
            expect.check(data)
        if expect.warning is not None:
            assert any(re.search(expect.warning, w) for w in report.warnings), report.warnings
    _train_features_do_not_crash(data, case)


def _train_features_do_not_crash(data: EmotionData, case: Case) -> None:
    """What a node does next with the rows the loader kept: build the training set, augment every sample."""
    task = case.task or default_task(case.dataset)
    if task != "voice":
        return
    samples = EmotionSamples(data, task, augment=True, seed=1)
    samples.wave_augment = WaveAugment(p_noise=1.0, p_pitch=1.0, p_speed=1.0, p_gain=1.0)
    for i in range(len(samples)):
        assert bool(samples[i][0].isfinite().all())


# ---------------------------------------------------------------------------
# CREMA-D
# ---------------------------------------------------------------------------


def _cremad_with(write: Callable[[Path], None]) -> Callable[[Path], Path]:
    def build(tmp_path: Path) -> Path:
        root = cremad(tmp_path / "cremad")
        write(root)
        return root
    return build


def _truncated_wav(root: Path) -> None:
    full = wav_bytes(tone(seconds=1.0))
    (root / "AudioWAV" / "1002_ITH_FEA_HI.wav").write_bytes(full[: 44 + 400])  # header says 1 s, holds 200 samples


def _header_only_wav(root: Path) -> None:
    (root / "AudioWAV" / "1002_ITH_FEA_HI.wav").write_bytes(wav_bytes(tone(seconds=1.0))[:44])


def _nan_clip(root: Path) -> None:
    wave = tone()
    wave[100:120] = np.nan
    write_wav(root / "AudioWAV" / "1002_WSI_DIS_MD.wav", wave, subtype="FLOAT")


def _inf_clip(root: Path) -> None:
    wave = tone()
    wave[7] = np.inf
    write_wav(root / "AudioWAV" / "1002_WSI_DIS_MD.wav", wave, subtype="DOUBLE")


def _symlink_out(tmp_path_root: Path) -> None:
    target = outside_file(tmp_path_root.parent, "1002_TSI_ANG_HI.wav", wav_bytes(tone()))
    (tmp_path_root / "AudioWAV" / "1002_TSI_ANG_HI.wav").symlink_to(target)


def _summary_table(root: Path) -> None:
    """The release's processedResults/summaryTable.csv lists every clip; one of them never arrived."""
    (root / "processedResults").mkdir()
    rows = [f"{i},{stem},A,1.0,A,1.0,A,1.0" for i, stem in enumerate([*CREMAD_GOOD, "1002_ITS_FEA_LO"], start=1)]
    (root / "processedResults" / "summaryTable.csv").write_text(
        ",FileName,VoiceVote,VoiceLevel,FaceVote,FaceLevel,MultiModalVote,MultiModalLevel\n" + "\n".join(rows) + "\n")


def _fifo(root: Path) -> None:
    os.mkfifo(root / "AudioWAV" / "1002_TSI_ANG_HI.wav")


def _accept_format(subtype: str, sr: int = SAMPLE_RATE, channels: int = 1) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        wave = tone(sr=sr)
        if channels == 2:
            wave = np.stack([wave, wave], axis=1)
        write_wav(root / "AudioWAV" / "1002_MTI_HAP_MD.wav", wave, sr=sr, subtype=subtype)
    return write


def _decodes_like_the_tone(data: EmotionData) -> None:
    row = list(data.refs).index("AudioWAV/1002_MTI_HAP_MD.wav")
    from client.data.loaders.audio_files import decode_clip

    wave = decode_clip(data.path_of(row))
    assert wave.dtype == np.float32 and abs(wave.size - SAMPLE_RATE // 2) <= 2
    assert 0.25 < float(np.max(np.abs(wave))) < 0.36  # the same 0.3 tone, not rescaled or clipped
    assert data.labels[row] == EMOTION_INDEX["happy"]


def _sixty_seconds(root: Path) -> None:
    write_wav(root / "AudioWAV" / "1002_MTI_HAP_MD.wav", tone(seconds=60.0))


def _sixty_second_check(data: EmotionData) -> None:
    from client.data.loaders.audio_files import MAX_DECODE_SECONDS, decode_clip

    row = list(data.refs).index("AudioWAV/1002_MTI_HAP_MD.wav")
    assert decode_clip(data.path_of(row)).size == int(MAX_DECODE_SECONDS * SAMPLE_RATE)


def _demographics(text: str | bytes) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        path = root / "VideoDemographics.csv"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return write


def _demographics_read(data: EmotionData) -> None:
    first = list(data.subjects).index("1001")
    second = list(data.subjects).index("1002")
    assert (data.demographics["sex"][first], data.demographics["race"][first]) == ("male", "caucasian")
    assert data.demographics["age"][first] == "40-69"
    assert (data.demographics["sex"][second], data.demographics["race"][second]) == ("female", "african_american")
    assert data.demographics["ethnicity"][second] == "hispanic"


def _unicode_root(tmp_path: Path) -> Path:
    return cremad(tmp_path / "données_éèü_病院")


def _all_fail_build(tmp_path: Path) -> Path:
    root = tmp_path / "cremad"
    for i, stem in enumerate(CREMAD_GOOD):
        wave = np.full(8000, np.nan, dtype=np.float32)
        write_wav(root / "AudioWAV" / f"{stem}.wav", wave, subtype="FLOAT")
    (root / "VideoDemographics.csv").write_text(DEMOGRAPHICS)
    return root


def _odd_rate(rate: int) -> Callable[[Path], None]:
    return lambda root: write_wav(root / "AudioWAV" / "1002_MTI_HAP_MD.wav", tone(sr=rate), sr=rate)


def _non_utf8_folder(tmp_path: Path) -> Path:
    """A valid CREMA-D copy whose folder name holds the Latin-1 byte 0xE9 (not UTF-8): 'caf\\xe9'."""
    good = cremad(tmp_path / "cafe")
    target = os.fsencode(str(tmp_path)) + b"/caf\xe9"
    os.rename(os.fsencode(str(good)), target)
    return Path(os.fsdecode(target))


def _non_utf8_clip(root: Path) -> None:
    write_wav(root / "AudioWAV" / "1002_ITH_FEA_HI.wav", tone())
    os.rename(os.fsencode(str(root / "AudioWAV" / "1002_ITH_FEA_HI.wav")),
              os.fsencode(str(root / "AudioWAV")) + b"/1002_ITH_FEA_HI\xff.wav")


CREMAD_CASES = [
    Case("cremad-zero-byte-wav", "cremad",
         _cremad_with(lambda r: (r / "AudioWAV" / "1002_ITH_FEA_HI.wav").write_bytes(b"")),
         Skip("AudioWAV/1002_ITH_FEA_HI.wav", r"empty file \(0 bytes\)")),
    Case("cremad-truncated-wav", "cremad", _cremad_with(_truncated_wav),
         Skip("AudioWAV/1002_ITH_FEA_HI.wav", r"truncated: the header declares 32000 bytes of audio, the file holds 400")),
    Case("cremad-header-only-wav", "cremad", _cremad_with(_header_only_wav),
         Skip("AudioWAV/1002_ITH_FEA_HI.wav", "zero frames")),
    Case("cremad-not-a-wav", "cremad",
         _cremad_with(lambda r: (r / "AudioWAV" / "1002_ITH_FEA_HI.wav").write_bytes(png_bytes(4, 4))),
         Skip("AudioWAV/1002_ITH_FEA_HI.wav", "unreadable audio header")),
    Case("cremad-text-with-wav-name", "cremad",
         _cremad_with(lambda r: (r / "AudioWAV" / "1002_ITH_FEA_HI.wav").write_text("RIFF but not really" * 20)),
         Skip("AudioWAV/1002_ITH_FEA_HI.wav", "unreadable audio header")),
    Case("cremad-8-bit", "cremad", _cremad_with(_accept_format("PCM_U8")), Accept(_decodes_like_the_tone)),
    Case("cremad-24-bit", "cremad", _cremad_with(_accept_format("PCM_24")), Accept(_decodes_like_the_tone)),
    Case("cremad-float", "cremad", _cremad_with(_accept_format("FLOAT")), Accept(_decodes_like_the_tone)),
    Case("cremad-stereo-44k1", "cremad", _cremad_with(_accept_format("PCM_16", sr=44100, channels=2)),
         Accept(_decodes_like_the_tone)),
    Case("cremad-one-sample", "cremad",
         _cremad_with(lambda r: write_wav(r / "AudioWAV" / "1002_ITH_FEA_HI.wav", np.array([0.5], np.float32))),
         Skip("AudioWAV/1002_ITH_FEA_HI.wav", r"1 sample\(s\).*shorter than the 0.05 s minimum")),
    Case("cremad-60-seconds", "cremad", _cremad_with(_sixty_seconds),
         Accept(_sixty_second_check, warning=r"1 clip\(s\) longer than 10 s.*1002_MTI_HAP_MD")),
    Case("cremad-silent", "cremad",
         _cremad_with(lambda r: write_wav(r / "AudioWAV" / "1002_ITH_FEA_HI.wav", np.zeros(8000, np.float32))),
         DecodeSkip("AudioWAV/1002_ITH_FEA_HI.wav", "digital silence")),
    Case("cremad-nan-samples", "cremad", _cremad_with(_nan_clip),
         DecodeSkip("AudioWAV/1002_WSI_DIS_MD.wav", "NaN or infinite")),
    Case("cremad-inf-samples", "cremad", _cremad_with(_inf_clip),
         DecodeSkip("AudioWAV/1002_WSI_DIS_MD.wav", "NaN or infinite")),
    Case("cremad-unknown-emotion", "cremad",
         _cremad_with(lambda r: write_wav(r / "AudioWAV" / "1002_ITH_SUR_HI.wav", tone())),
         Skip("AudioWAV/1002_ITH_SUR_HI.wav", "unknown emotion code 'SUR'")),
    Case("cremad-unknown-sentence", "cremad",
         _cremad_with(lambda r: write_wav(r / "AudioWAV" / "1002_XYZ_ANG_HI.wav", tone())),
         Skip("AudioWAV/1002_XYZ_ANG_HI.wav", "unknown sentence code 'XYZ'")),
    Case("cremad-bad-name-missing-level", "cremad",
         _cremad_with(lambda r: write_wav(r / "AudioWAV" / "1002_ITH_ANG.wav", tone())),
         Skip("AudioWAV/1002_ITH_ANG.wav", "does not match")),
    Case("cremad-bad-name-lower-case", "cremad",
         _cremad_with(lambda r: write_wav(r / "AudioWAV" / "1002_ith_ang_hi.wav", tone())),
         Skip("AudioWAV/1002_ith_ang_hi.wav", "does not match")),
    Case("cremad-unicode-digits-in-name", "cremad",
         _cremad_with(lambda r: write_wav(r / "AudioWAV" / "١٠٠٢_ITH_ANG_HI.wav", tone())),
         Skip("AudioWAV/١٠٠٢_ITH_ANG_HI.wav", "does not match")),
    Case("cremad-unicode-folder", "cremad", _unicode_root, Accept(holds(lambda d: len(d) == 4 and "données" in str(d.root)))),
    Case("cremad-demographics-bom-crlf", "cremad",
         _cremad_with(_demographics("\ufeff" + DEMOGRAPHICS.replace("\n", "\r\n"))), Accept(_demographics_read)),
    Case("cremad-demographics-latin1", "cremad",
         _cremad_with(_demographics(DEMOGRAPHICS.replace('"Ethnicity"', '"Ethnicity","Remarque"')
                                    .replace("Not Hispanic", "Not Hispanic,né à Zürich")
                                    .replace("Hispanic\n", "Hispanic,\n").encode("latin-1"))),
         Accept(_demographics_read)),
    Case("cremad-demographics-missing-actor", "cremad",
         _cremad_with(_demographics(DEMOGRAPHICS.rsplit("1002", 1)[0])),
         Accept(lambda d: None, warning=r"2 of 4 samples lack sex \(first: AudioWAV/1002_")),
    Case("cremad-demographics-missing-column", "cremad",
         _cremad_with(_demographics(DEMOGRAPHICS.replace(',"Race"', ""))),
         Error("VideoDemographics.csv", "column 'Race' missing")),
    Case("cremad-demographics-missing-file", "cremad",
         _cremad_with(lambda r: (r / "VideoDemographics.csv").unlink()),
         Error("VideoDemographics.csv", "file missing")),
    Case("cremad-no-audio-folder", "cremad",
         _cremad_with(lambda r: shutil.rmtree(r / "AudioWAV")), Error("AudioWAV", "folder missing")),
    Case("cremad-listed-in-summary-table-but-missing", "cremad", _cremad_with(_summary_table),
         Skip("AudioWAV/1002_ITS_FEA_LO.wav", r"listed in processedResults/summaryTable.csv but missing from AudioWAV/")),
    Case("cremad-root-is-a-file", "cremad", lambda t: (t / "cremad.zip").write_bytes(b"PK\x03\x04") and t / "cremad.zip",
         Error("cremad.zip", "is not a folder")),
    Case("cremad-symlink-outside", "cremad", _cremad_with(_symlink_out),
         Skip("AudioWAV/1002_TSI_ANG_HI.wav", "outside the dataset folder")),
    Case("cremad-dangling-symlink", "cremad",
         _cremad_with(lambda r: (r / "AudioWAV" / "1002_TSI_ANG_HI.wav").symlink_to(r / "gone.wav")),
         Skip("AudioWAV/1002_TSI_ANG_HI.wav", "dangling symlink")),
    Case("cremad-fifo-named-wav", "cremad", _cremad_with(_fifo),
         Skip("AudioWAV/1002_TSI_ANG_HI.wav", "not a regular file")),
    Case("cremad-subfolder", "cremad",
         _cremad_with(lambda r: write_wav(r / "AudioWAV" / "extra" / "1002_TSI_ANG_HI.wav", tone())),
         Skip("AudioWAV/extra", "folder inside AudioWAV/ is not read")),
    Case("cremad-sample-rate-1-hz", "cremad",
         _cremad_with(lambda r: write_wav(r / "AudioWAV" / "1002_TSI_ANG_HI.wav", tone(sr=1000)[:500], sr=1)),
         Skip("AudioWAV/1002_TSI_ANG_HI.wav", "sample rate 1 Hz")),
    # Issue 20: rates that share no factor with 16 kHz decode with a rounded ratio (bounded memory), with a note.
    Case("cremad-44101-hz", "cremad", _cremad_with(_odd_rate(44101)),
         Accept(_decodes_like_the_tone, warning=r"44101 Hz shares no small ratio with 16000 Hz: resampled as if")),
    Case("cremad-383999-hz", "cremad", _cremad_with(_odd_rate(383999)),
         Accept(_decodes_like_the_tone, warning=r"383999 Hz shares no small ratio.*pitch and tempo off by 0\.000")),
    Case("cremad-384000-hz", "cremad", _cremad_with(_accept_format("PCM_16", sr=384000)),
         Accept(_decodes_like_the_tone)),
    # Issue 20: demographics that would be silently wrong are refused; an identical repeat is a note.
    Case("cremad-demographics-column-twice", "cremad",
         _cremad_with(_demographics(DEMOGRAPHICS.replace('"Race"', '"Sex","Race"').replace(",Male,", ",Male,Female,")
                                    .replace(",Female,", ",Female,Male,", 1))),
         Error("VideoDemographics.csv", r"column 'Sex' appears twice in the header \(columns 3 and 4\)")),
    Case("cremad-demographics-header-repeated", "cremad",
         _cremad_with(_demographics(DEMOGRAPHICS + DEMOGRAPHICS)),
         Error("VideoDemographics.csv", r"line 4 repeats the header")),
    Case("cremad-demographics-actor-conflict", "cremad",
         _cremad_with(_demographics(DEMOGRAPHICS + "1001,35,Female,Asian,Not Hispanic\n")),
         Error("VideoDemographics.csv", r"line 4: ActorID 1001 is listed again with different values \(Age '51' at "
                                        r"line 2, '35' here, Sex 'Male' at line 2, 'Female' here, Race")),
    Case("cremad-demographics-actor-repeated-identically", "cremad",
         _cremad_with(_demographics(DEMOGRAPHICS + "1001,51,Male,Caucasian,Not Hispanic\n")),
         Skip("VideoDemographics.csv:4", r"repeats ActorID 1001 of line 2 with the same values", check=_demographics_read)),
    # Issue 20: a path that is not UTF-8 is refused (folder) or skipped (file), named with \x escapes.
    Case("cremad-non-utf8-folder", "cremad", _non_utf8_folder, Error("caf\\xe9", r"dataset folder: the path is not valid UTF-8")),
    Case("cremad-non-utf8-clip-name", "cremad", _cremad_with(_non_utf8_clip),
         Skip("AudioWAV/1002_ITH_FEA_HI\\xff.wav", r"the name is not valid UTF-8")),
    Case("cremad-all-clips-unusable-names", "cremad",
         lambda t: _cremad_with(lambda r: [p.rename(p.with_name(p.name.lower())) for p in
                                          list((r / "AudioWAV").iterdir())])(t),
         Error("AudioWAV", r"no usable clips \(4 skipped")),
]


# ---------------------------------------------------------------------------
# CREMA-D fusion frames (FaceFrames/*.png)
# ---------------------------------------------------------------------------


def _fusion(write: Callable[[Path], None]) -> Callable[[Path], Path]:
    def build(tmp_path: Path) -> Path:
        root = cremad(tmp_path / "cremad")
        for i, stem in enumerate(CREMAD_GOOD):
            (root / "FaceFrames").mkdir(exist_ok=True)
            Image.fromarray(face_image(i, side=48)).save(root / "FaceFrames" / f"{stem}.png")
        write(root)
        return root
    return build


def _frame_16_bit(root: Path) -> None:
    values = (np.full((48, 48), 40000, dtype=np.uint16))
    Image.fromarray(values).save(root / "FaceFrames" / f"{CREMAD_GOOD[0]}.png")


def _frame_16_bit_read(data: EmotionData) -> None:
    row = list(data.refs).index(f"AudioWAV/{CREMAD_GOOD[0]}.wav")
    assert abs(int(data.faces[row].mean()) - round(40000 / 65535 * 255)) <= 1  # 156, not all-white 255


def _frame(stem: str, image: np.ndarray) -> Callable[[Path], None]:
    return lambda root: Image.fromarray(image).save(root / "FaceFrames" / f"{stem}.png")


FUSION_CASES = [
    Case("cremad-fusion-1x1-frame", "cremad", _fusion(_frame(CREMAD_GOOD[2], np.full((1, 1), 90, np.uint8))),
         Accept(holds(lambda d: len(d) == 4),
                warning=r"image under 24 px: 1 kept but suspect.*first: AudioWAV/1002_TIE_SAD_LO.wav"),
         task="fusion"),
    Case("cremad-fusion-16-bit-frame", "cremad", _fusion(_frame_16_bit), Accept(_frame_16_bit_read), task="fusion"),
    Case("cremad-fusion-corrupt-frame", "cremad",
         _fusion(lambda r: (r / "FaceFrames" / f"{CREMAD_GOOD[1]}.png").write_bytes(b"\x89PNG broken")),
         Skip(f"AudioWAV/{CREMAD_GOOD[1]}.wav", r"unusable face frame FaceFrames/1001_IEO_HAP_HI.png"), task="fusion"),
    Case("cremad-fusion-bomb-frame", "cremad",
         _fusion(lambda r: (r / "FaceFrames" / f"{CREMAD_GOOD[1]}.png").write_bytes(png_bytes(20000, 20000))),
         Skip(f"AudioWAV/{CREMAD_GOOD[1]}.wav", r"decompression bomb.*400000000 pixels"), task="fusion"),
]


# ---------------------------------------------------------------------------
# RAVDESS
# ---------------------------------------------------------------------------


def _ravdess_with(write: Callable[[Path], None]) -> Callable[[Path], Path]:
    def build(tmp_path: Path) -> Path:
        root = ravdess(tmp_path / "ravdess")
        write(root)
        return root
    return build


def _rename_actor(old: str, new: str) -> Callable[[Path], None]:
    return lambda root: (root / old).rename(root / new)


def _actor_two_read(data: EmotionData) -> None:
    assert len(data) == 4 and sorted(set(data.subjects)) == ["01", "02"]
    assert set(data.demographics["sex"][data.subjects == "02"]) == {"female"}


def _ravdess_clip(folder: str, stem: str, **kwargs) -> Callable[[Path], None]:
    return lambda root: write_wav(root / folder / f"{stem}.wav", tone(sr=48000), sr=48000, **kwargs)


def _actor_03(root: Path) -> None:
    write_wav(root / "actor_03" / "03-01-05-02-01-01-03.wav", tone(sr=48000), sr=48000)
    write_wav(root / "actor_03" / "03-01-06-02-01-01-03.wav", tone(sr=48000, freq=300), sr=48000)


def _ravdess_truncated(root: Path) -> None:
    (root / "Actor_01" / "03-01-06-01-01-01-01.wav").write_bytes(wav_bytes(tone(sr=48000), sr=48000)[:1000])


RAVDESS_CASES = [
    Case("ravdess-folder-Actor_2", "ravdess", _ravdess_with(_rename_actor("Actor_02", "Actor_2")),
         Accept(_actor_two_read)),
    Case("ravdess-folder-actor_03", "ravdess", _ravdess_with(_actor_03),
         Accept(holds(lambda d: sorted(set(d.subjects)) == ["01", "02", "03"] and len(d) == 6))),
    Case("ravdess-folder-not-actor", "ravdess",
         _ravdess_with(lambda r: write_wav(r / "Session1" / "03-01-05-01-01-01-01.wav", tone())),
         Skip("Session1", "not named Actor_XX")),
    Case("ravdess-unicode-digits-in-folder", "ravdess",
         _ravdess_with(lambda r: write_wav(r / "Actor_٠٣" / "03-01-05-01-01-01-03.wav", tone())),
         Skip("Actor_٠٣", "not named Actor_XX")),
    Case("ravdess-wav-at-top-level", "ravdess",
         _ravdess_with(lambda r: write_wav(r / "03-01-05-01-01-01-01.wav", tone())),
         Skip("03-01-05-01-01-01-01.wav", "not inside an Actor_XX folder")),
    Case("ravdess-emotion-09", "ravdess", _ravdess_with(_ravdess_clip("Actor_01", "03-01-09-01-01-01-01")),
         Skip("Actor_01/03-01-09-01-01-01-01.wav", "unknown emotion code 09")),
    Case("ravdess-bad-name", "ravdess", _ravdess_with(_ravdess_clip("Actor_01", "03-01-05-01-01-01")),
         Skip("Actor_01/03-01-05-01-01-01.wav", "does not match MM-VC-EM-IN-ST-RP-AC")),
    Case("ravdess-video-only", "ravdess", _ravdess_with(_ravdess_clip("Actor_01", "02-01-05-01-01-01-01")),
         Skip("Actor_01/02-01-05-01-01-01-01.wav", "modality 02 has no audio")),
    Case("ravdess-actor-mismatch", "ravdess", _ravdess_with(_ravdess_clip("Actor_01", "03-01-05-01-01-02-07")),
         Skip("Actor_01/03-01-05-01-01-02-07.wav", "does not match folder Actor_01")),
    Case("ravdess-24-bit-stereo", "ravdess",
         _ravdess_with(lambda r: write_wav(r / "Actor_01" / "03-01-07-01-01-01-01.wav",
                                           np.stack([tone(sr=48000)] * 2, axis=1), sr=48000, subtype="PCM_24")),
         Accept(holds(lambda d: "Actor_01/03-01-07-01-01-01-01.wav" in set(d.refs)))),
    Case("ravdess-truncated", "ravdess", _ravdess_with(_ravdess_truncated),
         Skip("Actor_01/03-01-06-01-01-01-01.wav", "truncated")),
    Case("ravdess-dangling-symlink", "ravdess",
         _ravdess_with(lambda r: (r / "Actor_02" / "03-01-06-01-01-01-02.wav").symlink_to("/nonexistent/x.wav")),
         Skip("Actor_02/03-01-06-01-01-01-02.wav", "dangling symlink")),
    Case("ravdess-no-actor-folders", "ravdess",
         lambda t: (t / "empty").mkdir() or (t / "empty"), Error("empty", "no Actor_XX folders")),
]


# ---------------------------------------------------------------------------
# FER2013
# ---------------------------------------------------------------------------


def _fer(extra: list[str] = (), **kwargs) -> Callable[[Path], Path]:
    return lambda tmp_path: fer(tmp_path / "fer", list(extra), **kwargs)


def _fer_bytes(data: bytes) -> Callable[[Path], Path]:
    def build(tmp_path: Path) -> Path:
        root = tmp_path / "fer"
        root.mkdir()
        (root / "fer2013.csv").write_bytes(data)
        return root
    return build


def _no_split(data: EmotionData) -> None:
    assert len(data) == 4 and set(data.published_split) == {""}


def _bom_crlf(tmp_path: Path) -> Path:
    root = fer(tmp_path / "fer")
    path = root / "fer2013.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    return root


def _fer_read(data: EmotionData) -> None:
    assert len(data) == 4 and list(data.published_split) == ["train", "train", "test", "test"]
    assert list(data.labels) == [EMOTION_INDEX[e] for e in ("happy", "angry", "neutral", "sad")]
    expected = np.array([int(v) for v in pixels(seed=1).split()], dtype=np.uint8).reshape(48, 48)
    assert np.array_equal(data.faces[0], expected)


def _after_quote(data: EmotionData) -> None:
    assert len(data) == 5 and data.refs[-1] == "fer2013.csv:7"  # the row after the unclosed quote is read


def _fer_symlink_out(tmp_path: Path) -> Path:
    src = fer(tmp_path / "real")
    root = tmp_path / "fer"
    root.mkdir()
    (root / "fer2013.csv").symlink_to(src / "fer2013.csv")
    return root


def _fer_dangling(tmp_path: Path) -> Path:
    root = tmp_path / "fer"
    root.mkdir()
    (root / "fer2013.csv").symlink_to(root / "moved.csv")
    return root


def _sidecar(text: str, extra_rows: list[str] = ()) -> Callable[[Path], Path]:
    """A good fer2013.csv (4 rows plus ``extra_rows``) with fer2013_demographics.csv holding ``text``."""
    def build(tmp_path: Path) -> Path:
        root = fer(tmp_path / "fer", list(extra_rows))
        (root / "fer2013_demographics.csv").write_text(text)
        return root
    return build


SIDECAR = "row,subject,sex,age,race\n0,s0,male,20-39,asian\n1,s1,female,40-69,caucasian\n2,s2,male,70+,asian\n"


def _black_faces(data: EmotionData) -> None:
    assert len(data) == 7 and int(data.faces[4:].max()) == 0  # kept: only flagged


FER_CASES = [
    # Issue 20: a column twice (which one holds the labels?), a header repeated mid-file under a sidecar join,
    # sidecar rows listed twice with different values: refused by name. Constant faces: kept, counted.
    Case("fer-emotion-column-twice", "fer2013",
         _fer_bytes(("emotion,pixels,Usage,emotion\n" + "".join(f"{r},5\n" for r in FER_GOOD)).encode()),
         Error("fer2013.csv", r"column 'emotion' appears twice in the header \(columns 1 and 4\)")),
    Case("fer-header-repeated-with-sidecar", "fer2013",
         _sidecar(SIDECAR, ["emotion,pixels,Usage", f"3,{pixels(seed=9)},Training"]),
         Error("fer2013.csv", r"line 6 repeats the header .*fer2013_demographics.csv is joined by data row number")),
    Case("fer-header-repeated-without-sidecar", "fer2013",
         _fer(["emotion,pixels,Usage", f"3,{pixels(seed=9)},Training"]),
         Skip("fer2013.csv:6", r"repeats the header of line 1", check=holds(lambda d: d.refs[-1] == "fer2013.csv:7"))),
    Case("fer-sidecar-column-twice", "fer2013", _sidecar(SIDECAR.replace("race", "sex")),
         Error("fer2013_demographics.csv", r"column 'sex' appears twice")),
    Case("fer-sidecar-header-repeated", "fer2013", _sidecar(SIDECAR + SIDECAR),
         Error("fer2013_demographics.csv", r"line 5 repeats the header")),
    Case("fer-sidecar-row-conflict", "fer2013", _sidecar(SIDECAR + "1,s1,male,40-69,caucasian\n"),
         Error("fer2013_demographics.csv", r"line 5: row 1 is listed again with different values")),
    Case("fer-sidecar-row-repeated-identically", "fer2013", _sidecar(SIDECAR + "1,s1,female,40-69,caucasian\n"),
         Skip("fer2013_demographics.csv:5", r"repeats row 1 of line 3 with the same values",
              check=holds(lambda d: d.demographics["sex"][1] == "female" and d.subjects[1] == "s1"))),
    Case("fer-all-black-faces", "fer2013", _fer([f"3,{pixels(0)},Training"] * 3),
         Accept(_black_faces, warning=r"constant image: 3 kept but suspect.*first: fer2013.csv:6, fer2013.csv:7")),
    Case("fer-2303-pixels", "fer2013", _fer([f"3,{pixels(seed=9, n=2303)},Training"]),
         Skip("fer2013.csv:6", "expected 2304 pixels, found 2303")),
    Case("fer-non-numeric-pixel", "fer2013", _fer([f"3,{pixels(seed=9).replace(' ', ' x', 1)},Training"]),
         Skip("fer2013.csv:6", "not all non-negative integers")),
    Case("fer-pixel-256", "fer2013", _fer([f"3,{pixels(256)},Training"]),
         Skip("fer2013.csv:6", "pixel value 256 is above 255")),
    Case("fer-negative-pixel", "fer2013", _fer([f"3,-1 {pixels(seed=9, n=2303)},Training"]),
         Skip("fer2013.csv:6", "not all non-negative integers")),
    Case("fer-emotion-9", "fer2013", _fer([f"9,{pixels(seed=9)},Training"]),
         Skip("fer2013.csv:6", r"unknown emotion code 9 \(expected 0-6\)")),
    Case("fer-emotion-word", "fer2013", _fer([f"happy,{pixels(seed=9)},Training"]),
         Skip("fer2013.csv:6", "emotion 'happy' is not an integer code")),
    Case("fer-missing-usage-column", "fer2013",
         lambda t: _fer_bytes(("emotion,pixels\n" + "".join(f"{r.rsplit(',', 1)[0]}\n" for r in FER_GOOD)).encode())(t),
         Accept(_no_split)),
    Case("fer-empty-usage", "fer2013", _fer([f"3,{pixels(seed=9)},"]), Skip("fer2013.csv:6", "Usage is empty")),
    Case("fer-unknown-usage", "fer2013", _fer([f"3,{pixels(seed=9)},Validation"]),
         Skip("fer2013.csv:6", "Usage 'Validation' is not one of Training, PublicTest, PrivateTest")),
    Case("fer-missing-field", "fer2013", _fer(["3,Training"]), Skip("fer2013.csv:6", "expected 3 fields, found 2")),
    Case("fer-header-only", "fer2013", _fer_bytes(b"emotion,pixels,Usage\n"), Error("fer2013.csv", "no data rows")),
    Case("fer-zero-byte", "fer2013", _fer_bytes(b""), Error("fer2013.csv", "file is empty")),
    Case("fer-header-unclosed-quote", "fer2013", _fer(header='emotion,"pixels,Usage'),
         Error("fer2013.csv", r'line 1: the header is unusable: unclosed quote')),
    Case("fer-blank-lines-before-header", "fer2013", _fer_bytes(("\n\n" + "\n".join(["emotion,pixels,Usage", *FER_GOOD]) + "\n").encode()),
         Accept(holds(lambda d: list(d.refs) == [f"fer2013.csv:{i}" for i in range(4, 8)]))),
    Case("fer-missing-pixels-column", "fer2013", _fer_bytes(b"emotion,Usage\n3,Training\n"),
         Error("fer2013.csv", "missing column 'pixels'")),
    Case("fer-160kb-field", "fer2013", _fer([f"3,{'1 ' * 82_000},Training"]),
         Skip("fer2013.csv:6", "field larger than field limit")),
    Case("fer-unclosed-quote", "fer2013", _fer([f'3,"{pixels(seed=9)},Training', f"5,{pixels(seed=8)},Training"]),
         Skip("fer2013.csv:6", r'unclosed quote \("\)', check=_after_quote)),
    Case("fer-nul-byte", "fer2013", _fer([f"3,{pixels(seed=9)}\x00,Training"]),
         Skip("fer2013.csv:6", "not all non-negative integers")),
    Case("fer-latin1", "fer2013",
         lambda t: _fer_bytes(("\n".join(["emotion,pixels,Usage", *FER_GOOD, f"3,{pixels(seed=9)},Entraînement"])
                               + "\n").encode("latin-1"))(t),
         Skip("fer2013.csv:6", "Usage 'Entraînement' is not one of")),
    Case("fer-bom-crlf", "fer2013", _bom_crlf, Accept(_fer_read)),
    Case("fer-symlink-outside", "fer2013", _fer_symlink_out, Error("fer2013.csv", "outside the dataset folder")),
    Case("fer-dangling-symlink", "fer2013", _fer_dangling, Error("fer2013.csv", "dangling symlink")),
]


# ---------------------------------------------------------------------------
# RAF-DB
# ---------------------------------------------------------------------------


def _raf_with(write: Callable[[Path], None]) -> Callable[[Path], Path]:
    def build(tmp_path: Path) -> Path:
        root = rafdb(tmp_path / "rafdb")
        write(root)
        return root
    return build


def _extra_image(name: str, image: Image.Image | bytes, label: int = 3) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        path = aligned(root, name)
        if isinstance(image, bytes):
            path.write_bytes(image)
        else:
            image.save(path, format="PNG" if image.mode.startswith("I") else "JPEG", quality=95)
        add_raf_label(root, f"{name} {label}")
    return write


def _gray_and_rgb(root: Path) -> None:
    gray = face_image(5)
    Image.fromarray(gray, "L").save(aligned(root, "train_00010.jpg"), quality=95)
    Image.fromarray(np.stack([gray] * 3, axis=-1), "RGB").save(aligned(root, "train_00011.jpg"), quality=95)
    add_raf_label(root, "train_00010.jpg 3")
    add_raf_label(root, "train_00011.jpg 3")


def _gray_equals_rgb(data: EmotionData) -> None:
    refs = list(data.refs)
    g = data.faces[refs.index("Image/aligned/train_00010_aligned.jpg")].astype(int)
    c = data.faces[refs.index("Image/aligned/train_00011_aligned.jpg")].astype(int)
    assert np.abs(g - c).mean() < 2.0 and g.std() > 10


def _wrong_size(data: EmotionData) -> None:
    face = data.faces[list(data.refs).index("Image/aligned/train_00010_aligned.jpg")]
    assert face.shape == (48, 48) and face.std() > 10


def _sixteen_bit(data: EmotionData) -> None:
    face = data.faces[list(data.refs).index("Image/aligned/train_00010_aligned.jpg")].astype(int)
    expected = face_image(7, side=48).astype(int)  # written as value * 257 in 16 bits
    assert face.max() < 255 and np.abs(face - expected).max() <= 1  # scaled by depth, not clipped to white


def _raf_symlink_out(root: Path) -> None:
    target = root.parent / "elsewhere" / "train_00010_aligned.jpg"
    target.parent.mkdir(parents=True)
    Image.fromarray(face_image(3)).save(target, format="JPEG")
    aligned(root, "train_00010.jpg").symlink_to(target)
    add_raf_label(root, "train_00010.jpg 3")


def _raf_unicode(root: Path) -> None:
    Image.fromarray(face_image(4)).save(aligned(root, "train_café_01.jpg"), format="JPEG")
    add_raf_label(root, "train_café_01.jpg 2")


def _raf_latin1_labels(root: Path) -> None:
    Image.fromarray(face_image(4)).save(aligned(root, "train_café_01.jpg"), format="JPEG")
    with open(root / "EmoLabel" / "list_patition_label.txt", "ab") as f:
        f.write("train_café_01.jpg 2\r\n".encode("latin-1"))


def _has_cafe(data: EmotionData) -> None:
    row = list(data.refs).index("Image/aligned/train_café_01_aligned.jpg")
    assert data.labels[row] == EMOTION_INDEX["fear"] and data.published_split[row] == "train"


RAFDB_CASES = [
    Case("rafdb-1x1-image", "rafdb", _raf_with(_extra_image("train_00010.jpg", Image.fromarray(np.full((1, 1), 80, np.uint8)))),
         Accept(holds(lambda d: len(d) == 5), warning=r"image under 24 px: 1 kept but suspect.*train_00010_aligned")),
    Case("rafdb-20x30-image", "rafdb",
         _raf_with(_extra_image("train_00010.jpg", Image.fromarray(face_image(3, side=30)[:20]))),
         Accept(holds(lambda d: len(d) == 5), warning=r"image under 24 px: 1 kept but suspect")),
    Case("rafdb-constant-image", "rafdb",
         _raf_with(_extra_image("train_00010.jpg", Image.fromarray(np.zeros((100, 100), np.uint8)))),
         Accept(holds(lambda d: len(d) == 5), warning=r"constant image: 1 kept but suspect.*train_00010_aligned")),
    Case("rafdb-missing-image", "rafdb", _raf_with(lambda r: add_raf_label(r, "train_00099.jpg 3")),
         Skip("Image/aligned/train_00099_aligned.jpg", "image not found")),
    Case("rafdb-corrupt-image", "rafdb", _raf_with(_extra_image("train_00010.jpg", b"\xff\xd8\xff\xe0 not a jpeg")),
         Skip("Image/aligned/train_00010_aligned.jpg", "unreadable image")),
    Case("rafdb-truncated-jpeg", "rafdb",
         _raf_with(lambda r: (_extra_image("train_00010.jpg", Image.fromarray(face_image(1)))(r),
                              aligned(r, "train_00010.jpg").write_bytes(aligned(r, "train_00010.jpg").read_bytes()[:300]))),
         Skip("Image/aligned/train_00010_aligned.jpg", "unreadable image")),
    Case("rafdb-gray-vs-rgb", "rafdb", _raf_with(_gray_and_rgb), Accept(_gray_equals_rgb)),
    Case("rafdb-wrong-size", "rafdb",
         _raf_with(_extra_image("train_00010.jpg", Image.fromarray(face_image(2, side=200)).resize((200, 150)))),
         Accept(_wrong_size)),
    Case("rafdb-png-claims-20000x20000", "rafdb", _raf_with(_extra_image("train_00010.jpg", png_bytes(20000, 20000))),
         Skip("Image/aligned/train_00010_aligned.jpg", r"decompression bomb.*400000000 pixels")),
    Case("rafdb-16-bit-png", "rafdb",
         _raf_with(_extra_image("train_00010.jpg",
                                Image.fromarray(face_image(7, side=48).astype(np.uint16) * 257))),
         Accept(_sixteen_bit)),
    Case("rafdb-label-0", "rafdb", _raf_with(lambda r: add_raf_label(r, "train_00001.jpg 0")),
         Skip("EmoLabel/list_patition_label.txt:5", r"unknown emotion code '0' for train_00001.jpg \(expected 1-7\)")),
    Case("rafdb-label-8", "rafdb", _raf_with(lambda r: add_raf_label(r, "train_00001.jpg 8")),
         Skip("EmoLabel/list_patition_label.txt:5", "unknown emotion code '8'")),
    Case("rafdb-three-fields", "rafdb", _raf_with(lambda r: add_raf_label(r, "train_00001.jpg 3 extra")),
         Skip("EmoLabel/list_patition_label.txt:5", "found 3 fields")),
    Case("rafdb-listed-twice", "rafdb", _raf_with(lambda r: add_raf_label(r, "train_00001.jpg 5")),
         Skip("EmoLabel/list_patition_label.txt:5", r"listed again \(first at line 1\)")),
    Case("rafdb-symlink-outside", "rafdb", _raf_with(_raf_symlink_out),
         Skip("Image/aligned/train_00010_aligned.jpg", "outside the dataset folder")),
    Case("rafdb-dangling-symlink", "rafdb",
         _raf_with(lambda r: (aligned(r, "train_00010.jpg").symlink_to(r / "nowhere.jpg"),
                              add_raf_label(r, "train_00010.jpg 3"))),
         Skip("Image/aligned/train_00010_aligned.jpg", "dangling symlink")),
    Case("rafdb-unicode-name", "rafdb", _raf_with(_raf_unicode), Accept(_has_cafe)),
    Case("rafdb-latin1-label-file", "rafdb", _raf_with(_raf_latin1_labels), Accept(_has_cafe)),
    Case("rafdb-missing-label-file", "rafdb",
         _raf_with(lambda r: (r / "EmoLabel" / "list_patition_label.txt").unlink()),
         Error("list_patition_label.txt", "label file not found")),
    Case("rafdb-every-image-missing", "rafdb",
         _raf_with(lambda r: shutil.rmtree(r / "Image")), Error("rafdb", r"no usable images \(4 skipped")),
]

CASES = CREMAD_CASES + FUSION_CASES + RAVDESS_CASES + FER_CASES + RAFDB_CASES


def test_the_corpus_count_is_the_documented_one_and_every_case_asserts_an_outcome():
    """An honest count: docs/data.md states it exactly, so dropping (or adding) a case fails here until the
    docs say so; and no case passes by asserting nothing (an Accept names what it checks or warns)."""
    documented = re.search(r"holds the cases \((\d+) in all", (REPO / "docs" / "data.md").read_text())
    assert documented, "docs/data.md should say how many cases tests/test_malformed_corpus.py holds"
    assert len(CASES) == int(documented.group(1))
    assert {c.dataset for c in CASES} == {"fer2013", "rafdb", "cremad", "ravdess"}
    assert len({c.id for c in CASES}) == len(CASES)
    vacuous = [c.id for c in CASES if isinstance(c.expect, Accept) and c.expect.check is None and c.expect.warning is None]
    assert vacuous == []


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_input(case: Case, tmp_path: Path) -> None:
    check_case(case, tmp_path)


# ---------------------------------------------------------------------------
# Cases that need more than one look
# ---------------------------------------------------------------------------


def test_all_nan_cremad_folder_is_not_ready_and_fails_the_node_in_one_line(tmp_path):
    root = _all_fail_build(tmp_path)
    data = load_dataset("cremad", root, "voice")  # headers are fine: indexing cannot tell
    report = check_data_dir(root, "cremad")
    assert not report.ready
    assert re.search(r"no clip can be decoded \(4 of 4", report.problems[0]) and str(root) in report.problems[0]
    assert {s["ref"] for s in report.skipped} == {f"AudioWAV/{s}.wav" for s in CREMAD_GOOD}
    assert describe(report).startswith("NOT READY")
    with pytest.raises(DatasetFormatError, match=r"none of this node's 4 clips can be decoded.*NaN") as err:
        EmotionSamples(data, "voice", augment=True, seed=0)
    assert "\n" not in str(err.value) and str(root) in str(err.value)


def test_clip_indexed_then_missing_is_counted_not_crashed(tmp_path):
    root = cremad(tmp_path / "cremad")
    data = load_dataset("cremad", root, "voice")
    (root / "AudioWAV" / f"{CREMAD_GOOD[2]}.wav").unlink()  # listed in the index, gone before training
    samples = EmotionSamples(data, "voice", augment=True, seed=0)
    assert [(s.ref, s.reason) for s in samples.skipped] == [
        (f"AudioWAV/{CREMAD_GOOD[2]}.wav", "file no longer exists (it was indexed, then removed or renamed)")]
    assert len(samples) == 3 and all(bool(samples[i][0].isfinite().all()) for i in range(3))


def test_short_clips_cannot_crash_augmentation():
    """Defence in depth: even a clip that slipped past the loaders' minimum is augmented without error."""
    augment = WaveAugment(p_noise=1.0, p_pitch=1.0, p_speed=1.0, p_gain=1.0)
    for n in (1, 2, 300, 513):
        wave = np.random.default_rng(n).uniform(-0.5, 0.5, n).astype(np.float32)
        assert pitch_shift(wave, 2.0).shape == (n,)
        for seed in range(4):
            features, mask = augment.segments(wave, np.random.default_rng(seed))
            assert bool(features.isfinite().all()) and bool(mask[0])


def test_folder_skips_are_counted_once_per_dataset_not_once_per_client(tmp_path):
    from client.data.node_data import client_samples
    from simulations.run_config import load_run_config

    root = cremad(tmp_path / "cremad")
    for i, stem in enumerate(("1001_TIE_FEA_HI", "1002_TAI_DIS_LO", "1001_IWW_SAD_MD", "1002_IWL_ANG_HI")):
        write_wav(root / "AudioWAV" / f"{stem}.wav", tone(freq=300 + 30 * i, seed=10 + i))
    write_wav(root / "AudioWAV" / "1002_ITH_SUR_HI.wav", tone())  # folder-level skip (unknown emotion)
    _nan_clip(root)  # a row-level skip: indexed, fails to decode in exactly one client's share

    report = check_data_dir(root, "cremad")
    assert report.ready and len(report.skipped) == 2  # both, once

    _, settings = load_run_config(None, {"dataset": "cremad", "task": "voice", "model": "voice_crnn", "partitioner": "iid",
                                         "data-dir": str(root), "test-fraction": 0.25,
                                         "min-partition-size": 2})
    per_client = [client_samples(settings, {"partition-id": pid, "num-partitions": 3}, str(root)).skipped
                  for pid in range(3)]
    assert sum(per_client) == 1, per_client  # the NaN clip, in its one client; the bad name is the dataset's

    hospital = client_samples(settings, {"data-path": str(root), "dataset-format": "cremad"}, "")
    assert hospital.skipped == 2  # a hospital's folder is its own: both of its skips are its own


# ---------------------------------------------------------------------------
# Through the real CLI
# ---------------------------------------------------------------------------


def _without_file_permission_override() -> None:
    """In the child, before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set.

    Root then obeys mode bits like any user (a file it owns with mode 000 is
    unreadable), so PermissionError is real, not simulated.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _fedemo(*args: str, restricted: bool = False) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "fedemo"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "simulations.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
                          preexec_fn=_without_file_permission_override if restricted else None)


def test_cli_names_a_skipped_clip_and_a_broken_folder(tmp_path):
    root = _cremad_with(_truncated_wav)(tmp_path)
    done = _fedemo("data", "check", str(root), "--format", "cremad")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("READY") and "Traceback" not in done.stderr
    assert "skipped AudioWAV/1002_ITH_FEA_HI.wav: truncated" in done.stdout

    fer_root = _fer([f'3,"{pixels(seed=9)},Training', f"3,{'1 ' * 82_000},Training"])(tmp_path)
    (fer_root / "fer2013.csv").write_bytes(b"emotion,pixels,Usage\n")
    done = _fedemo("data", "check", str(fer_root), "--format", "fer2013")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "NOT READY" in done.stdout and "fer2013.csv: no data rows" in done.stdout


def _restricted_check(root: Path, dataset: str) -> tuple[int, dict]:
    """``check_data_dir`` (what ``fedemo data check`` runs) in a process that mode bits apply to, also as root."""
    import json

    child = ("import json, sys; from client.tools.data_check import check_data_dir; "
             "r = check_data_dir(sys.argv[1], sys.argv[2]); print(json.dumps(r.to_json())); sys.exit(0 if r.ready else 2)")
    done = subprocess.run([sys.executable, "-c", child, str(root), dataset], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          preexec_fn=_without_file_permission_override if os.geteuid() == 0 else None)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def _permission_checks_apply() -> None:
    if os.geteuid() != 0:
        return
    probe = Path(tempfile.mkdtemp())
    try:
        (probe / "f").write_text("x")
        (probe / "f").chmod(0)
        try:
            done = subprocess.run(["cat", str(probe / "f")], capture_output=True,
                                  preexec_fn=_without_file_permission_override)
        except (OSError, subprocess.SubprocessError) as err:
            pytest.skip(f"running as root and cannot drop CAP_DAC_OVERRIDE here ({err}): mode bits cannot block reads")
        if done.returncode == 0:
            pytest.skip("running as root and mode bits do not block reads on this filesystem")
    finally:
        shutil.rmtree(probe, ignore_errors=True)


@pytest.mark.parametrize("what", ["cremad-file", "cremad-folder", "cremad-root", "fer2013-file", "rafdb-image", "rafdb-image-folder",
                                  "ravdess-actor-folder"])
def test_unreadable_folder_and_file_are_named(tmp_path, what):
    """PermissionError: a counted skip for one clip or image, a clear problem for a folder or the only CSV.

    As root the check runs in a child process without CAP_DAC_OVERRIDE, so
    mode 000 really blocks it (plain chmod would not stop root).
    """
    _permission_checks_apply()
    dataset = what.split("-")[0]
    root = {"cremad": cremad, "fer2013": fer, "rafdb": rafdb, "ravdess": ravdess}[dataset](tmp_path / dataset)
    locked = {"cremad-file": root / "AudioWAV" / f"{CREMAD_GOOD[0]}.wav", "cremad-folder": root / "AudioWAV", "cremad-root": root,
              "fer2013-file": root / "fer2013.csv", "rafdb-image": aligned(root, RAF_GOOD[0][0]),
              "rafdb-image-folder": root / "Image" / "aligned", "ravdess-actor-folder": root / "Actor_02"}[what]
    locked.chmod(0)
    try:
        code, report = _restricted_check(root, dataset)
        if what in ("cremad-file", "rafdb-image"):
            ref = locked.relative_to(root).as_posix()
            assert code == 0 and report["ready"]
            assert [s for s in report["skipped"] if s["ref"] == ref] == [
                {"ref": ref, "reason": next(s["reason"] for s in report["skipped"] if s["ref"] == ref)}]
            assert "permission denied" in next(s["reason"] for s in report["skipped"] if s["ref"] == ref)
        else:
            assert code == 2 and not report["ready"]
            assert any(str(locked) in p and "permission denied" in p for p in report["problems"]), report["problems"]
    finally:
        locked.chmod(0o755)
