"""Synthetic faces in the published FER2013 / RAF-DB layouts, and the loaders that read them.

Everything runs on real files in tmp folders: the generator writes a dataset,
the loader reads it back, and we compare with what the generator recorded.
"""

from __future__ import annotations

import csv
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client.data.loaders.base import DatasetFormatError
from client.data.loaders.fer2013 import load_fer2013
from client.data.loaders.rafdb import load_rafdb
from shared_models.taxonomy import AGE_BANDS, EMOTIONS, UNKNOWN
from simulations.synthetic.synth_faces import (
    FaceDifficulty,
    generate_faces,
    rafdb_records,
    render_face,
    sample_demographics,
    sample_emotions,
    write_fer2013,
    write_rafdb,
)

FER_N, RAF_N, SEED = 150, 60, 3


@pytest.fixture(scope="module")
def fer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fer")
    write_fer2013(out, FER_N, SEED)
    return out


@pytest.fixture(scope="module")
def raf_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("raf")
    write_rafdb(out, RAF_N, SEED)
    return out


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# ---------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------


def test_render_face_signature_and_determinism():
    demo = {"sex": "female", "age": "70+", "race": "african_american"}
    a = render_face("fear", demo, np.random.default_rng(5))
    b = render_face("fear", demo, np.random.default_rng(5))
    c = render_face("fear", demo, np.random.default_rng(6), size=64, difficulty=FaceDifficulty(noise_std=0))
    assert a.dtype == np.uint8 and a.shape == (48, 48)
    assert np.array_equal(a, b)
    assert c.shape == (64, 64)
    assert a.std() > 5  # not a blank image
    with pytest.raises(ValueError, match="race"):
        render_face("fear", {**demo, "race": "martian"}, np.random.default_rng(0))


def test_population_is_unequal_but_complete():
    rng = np.random.default_rng(0)
    labels = sample_emotions(40, rng)
    assert set(labels.tolist()) == set(range(len(EMOTIONS)))
    counts = np.bincount(sample_emotions(5000, rng), minlength=len(EMOTIONS))
    assert counts.argmax() == EMOTIONS.index("happy") and counts.argmin() == EMOTIONS.index("disgust")
    people = [sample_demographics(rng) for _ in range(3000)]
    race = Counter(p["race"] for p in people)
    age = Counter(p["age"] for p in people)
    assert race["caucasian"] > race["asian"] > race["african_american"] > 0
    assert min(age["20-39"], age["40-69"]) > age["70+"] > age["0-3"] > 0
    assert set(age) <= set(AGE_BANDS)


def test_subjects_have_fixed_demographics_and_several_images():
    data = generate_faces(200, SEED, size=24)
    for subject in set(data.subjects):
        rows = data.subjects == subject
        for attr in ("sex", "age", "race"):
            assert len(set(data.demographics[attr][rows])) == 1
    assert Counter(data.subjects.tolist()).most_common(1)[0][1] >= 10


def test_fer2013_layout(fer_dir):
    path = fer_dir / "fer2013.csv"
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["emotion", "pixels", "Usage"]
    assert len(rows) == FER_N + 1
    for emotion, pixels, _ in rows[1:]:
        values = [int(v) for v in pixels.split(" ")]
        assert len(values) == 2304 and 0 <= min(values) and max(values) <= 255
        assert 0 <= int(emotion) <= 6
    usage = Counter(r[2] for r in rows[1:])
    assert set(usage) == {"Training", "PublicTest", "PrivateTest"}
    assert 0.7 < usage["Training"] / FER_N < 0.9
    side = _lines(fer_dir / "fer2013_demographics.csv")
    assert side[0] == "row,subject,sex,age,race" and len(side) == FER_N + 1
    assert side[1].startswith("0,")


def test_rafdb_layout(raf_dir):
    labels = _lines(raf_dir / "EmoLabel/list_patition_label.txt")
    assert len(labels) == RAF_N
    names = [line.split()[0] for line in labels]
    assert all(re.fullmatch(r"(train_\d{5}|test_\d{4})\.jpg [1-7]", line) for line in labels)
    assert names[0] == "train_00001.jpg" and "test_0001.jpg" in names
    assert names == sorted(names, key=lambda n: (n.startswith("test"), n))  # train block first
    assert 0.6 < sum(n.startswith("train") for n in names) / RAF_N < 0.95
    for name in (names[0], names[-1]):
        stem = name[:-4]
        with Image.open(raf_dir / "Image/aligned" / f"{stem}_aligned.jpg") as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (100, 100))
        attri = _lines(raf_dir / "Annotation/manual" / f"{stem}_manu_attri.txt")
        assert len(attri) == 8
        assert all(re.fullmatch(r"-?\d+\.\d+\t-?\d+\.\d+", line) for line in attri[:5])
        assert attri[5] in {"0", "1", "2"} and attri[6] in {"0", "1", "2"} and attri[7] in set("01234")


def test_writers_are_deterministic(tmp_path):
    paths = {}
    for tag, seed in (("a", 11), ("b", 11), ("c", 12)):
        paths[tag] = (write_fer2013(tmp_path / f"fer_{tag}", 30, seed), write_rafdb(tmp_path / f"raf_{tag}", 12, seed))
    same = lambda p, q: p.read_bytes() == q.read_bytes()  # noqa: E731
    (fa, ra), (fb, rb), (fc, rc) = paths["a"], paths["b"], paths["c"]
    assert same(fa, fb) and same(fa.parent / "fer2013_demographics.csv", fb.parent / "fer2013_demographics.csv")
    assert not same(fa, fc)
    files = sorted(p.relative_to(ra) for p in ra.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(rb) for p in rb.rglob("*") if p.is_file())
    assert all(same(ra / f, rb / f) for f in files)
    assert not all(same(ra / f, rc / f) for f in files if (rc / f).is_file())


# ---------------------------------------------------------------------------
# Loaders: round trip
# ---------------------------------------------------------------------------


def test_fer2013_round_trip(fer_dir):
    data = load_fer2013(fer_dir)
    truth = generate_faces(FER_N, SEED)
    assert (data.dataset, data.modality, len(data), data.skipped) == ("fer2013", "face", FER_N, [])
    assert data.faces.dtype == np.uint8 and data.faces.shape == (FER_N, 48, 48)
    assert np.array_equal(data.faces, truth.faces)
    assert np.array_equal(data.labels, truth.labels)
    assert list(data.published_split) == list(truth.split)
    assert list(data.subjects) == list(truth.subjects)
    for attr in ("sex", "age", "race"):
        assert list(data.demographics[attr]) == list(truth.demographics[attr])
    assert set(data.demographics["ethnicity"]) == {UNKNOWN}
    assert data.refs[0] == "fer2013.csv:2" and data.path_of(0) == fer_dir / "fer2013.csv"


def test_fer2013_without_sidecar_and_in_subfolder(fer_dir, tmp_path):
    (tmp_path / "fer2013").mkdir()
    shutil.copy(fer_dir / "fer2013.csv", tmp_path / "fer2013" / "fer2013.csv")
    data = load_fer2013(tmp_path)
    assert len(data) == FER_N
    assert set(data.subjects) == {""} and set(data.demographics["race"]) == {UNKNOWN}


def test_fer2013_partial_sidecar(fer_dir, tmp_path):
    root = _copy(fer_dir, tmp_path)
    side = root / "fer2013_demographics.csv"
    lines = _lines(side)
    side.write_text("\n".join([lines[0] + ",site"] + [f"{line},x" for line in lines[1:11]]) + "\n")
    data = load_fer2013(root)
    truth = generate_faces(FER_N, SEED)
    assert list(data.demographics["race"][:10]) == list(truth.demographics["race"][:10])
    assert set(data.demographics["race"][10:]) == {UNKNOWN} and set(data.subjects[10:]) == {""}


def test_fer2013_explicit_sidecar(fer_dir, tmp_path):
    shutil.copy(fer_dir / "fer2013.csv", tmp_path / "fer2013.csv")
    data = load_fer2013(tmp_path, demographics_csv=fer_dir / "fer2013_demographics.csv")
    assert list(data.subjects) == list(generate_faces(FER_N, SEED, size=8).subjects)
    with pytest.raises(DatasetFormatError, match="nowhere.csv"):
        load_fer2013(tmp_path, demographics_csv=tmp_path / "nowhere.csv")


def test_fer2013_variants(fer_dir, tmp_path):
    with open(fer_dir / "fer2013.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    icml = tmp_path / "icml"
    icml.mkdir()
    with open(icml / "icml_face_data.csv", "w", newline="") as f:
        f.write("emotion, Usage, pixels\n")
        f.writelines(f"{e},{u},{p}\n" for e, p, u in rows)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "train.csv").write_text("emotion,pixels\n" + "".join(f"{e},{p}\n" for e, p, _ in rows))
    reference = load_fer2013(fer_dir)
    a, b = load_fer2013(icml), load_fer2013(plain)
    for data in (a, b):
        assert np.array_equal(data.faces, reference.faces) and np.array_equal(data.labels, reference.labels)
    assert list(a.published_split) == list(reference.published_split)
    assert set(b.published_split) == {"train"} and b.refs[0] == "train.csv:2"


def test_rafdb_round_trip(raf_dir):
    data = load_rafdb(raf_dir)
    records = rafdb_records(RAF_N, SEED)
    truth = generate_faces(RAF_N, SEED, size=100)
    assert (data.dataset, data.modality, len(data), data.skipped) == ("rafdb", "face", RAF_N, [])
    assert data.faces.dtype == np.uint8 and data.faces.shape == (RAF_N, 48, 48)
    assert [r.split("/")[-1] for r in data.refs] == [f"{rec.name[:-4]}_aligned.jpg" for rec in records]
    assert [EMOTIONS[i] for i in data.labels] == [rec.emotion for rec in records]
    for attr in ("sex", "age", "race"):
        assert list(data.demographics[attr]) == [getattr(rec, attr) for rec in records]
    assert list(data.published_split) == [rec.name.split("_")[0] for rec in records]
    assert set(data.subjects) == {""}
    # what was recorded matches the generated population (gender may be annotated "unsure")
    src = [rec.source_row for rec in records]
    assert [EMOTIONS[i] for i in truth.labels[src]] == [rec.emotion for rec in records]
    assert list(truth.split[src]) == list(data.published_split)
    assert all(rec.sex in (truth.demographics["sex"][s], "unsure") for rec, s in zip(records, src))
    # pixels survive JPEG + downscaling closely
    small = np.stack([np.asarray(Image.fromarray(f).resize((48, 48), Image.Resampling.LANCZOS)) for f in truth.faces])
    assert np.abs(data.faces.astype(float) - small[src]).mean() < 6.0


def test_rafdb_unsure_gender_is_rare_but_present():
    sexes = Counter(rec.sex for rec in rafdb_records(3000, SEED))
    assert 0 < sexes["unsure"] < 0.08 * 3000


# ---------------------------------------------------------------------------
# Loaders: malformed inputs
# ---------------------------------------------------------------------------


def test_fer2013_missing_csv(tmp_path):
    with pytest.raises(DatasetFormatError) as err:
        load_fer2013(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "fer2013.csv" in message and "icml_face_data.csv" in message


def test_fer2013_missing_column(tmp_path):
    (tmp_path / "fer2013.csv").write_text("emotion,Usage\n3,Training\n")
    with pytest.raises(DatasetFormatError) as err:
        load_fer2013(tmp_path)
    assert "fer2013.csv" in str(err.value) and "pixels" in str(err.value)


def test_fer2013_bad_rows_are_skipped_and_named(fer_dir, tmp_path):
    root = _copy(fer_dir, tmp_path)
    path = root / "fer2013.csv"
    lines = _lines(path)
    emotion, pixels, usage = lines[4].split(",")  # file line 5
    lines[4] = f"{emotion},{pixels.rsplit(' ', 1)[0]},{usage}"  # 2303 pixels
    emotion, pixels, usage = lines[6].split(",")  # line 7
    lines[6] = f"{emotion},{pixels.replace(' ', ' x', 1)},{usage}"
    _, pixels, usage = lines[8].split(",")  # line 9
    lines[8] = f"9,{pixels},{usage}"
    path.write_text("\n".join(lines) + "\n")
    data = load_fer2013(root)
    assert len(data) == FER_N - 3
    assert [s.ref for s in data.skipped] == ["fer2013.csv:5", "fer2013.csv:7", "fer2013.csv:9"]
    assert "2303" in data.skipped[0].reason and "integer" in data.skipped[1].reason
    assert "9" in data.skipped[2].reason
    # the sidecar still lines up with the rows that were kept (data rows 3, 5, 7 are gone)
    truth = generate_faces(FER_N, SEED)
    kept = np.setdiff1d(np.arange(FER_N), [3, 5, 7])
    assert list(data.demographics["race"]) == list(truth.demographics["race"][kept])
    assert np.array_equal(data.labels, truth.labels[kept])


def test_fer2013_all_rows_bad(tmp_path):
    (tmp_path / "fer2013.csv").write_text("emotion,pixels,Usage\n7,1 2 3,Training\n1,oops,Training\n")
    with pytest.raises(DatasetFormatError, match="fer2013.csv"):
        load_fer2013(tmp_path)


def test_rafdb_missing_label_file(tmp_path):
    with pytest.raises(DatasetFormatError) as err:
        load_rafdb(tmp_path)
    assert "list_patition_label.txt" in str(err.value)


def test_rafdb_corrupt_image_bad_lines_and_missing_annotation(raf_dir, tmp_path):
    root = _copy(raf_dir, tmp_path)
    (root / "Image/aligned/train_00002_aligned.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    truncated = root / "Image/aligned/train_00003_aligned.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    (root / "Annotation/manual/train_00004_manu_attri.txt").unlink()
    label = root / "EmoLabel/list_patition_label.txt"
    lines = _lines(label)
    lines[5] = lines[5].split()[0] + " 9"  # line 6: unknown code
    lines[6] = lines[6] + " extra"  # line 7: three fields
    label.write_text("\n".join(lines) + "\n")
    data = load_rafdb(root)
    refs = {s.ref: s.reason for s in data.skipped}
    assert "Image/aligned/train_00002_aligned.jpg" in refs and "Image/aligned/train_00003_aligned.jpg" in refs
    assert "EmoLabel/list_patition_label.txt:6" in refs and "EmoLabel/list_patition_label.txt:7" in refs
    assert len(data) == RAF_N - 4
    row = list(data.refs).index("Image/aligned/train_00004_aligned.jpg")
    assert [data.demographics[a][row] for a in ("sex", "age", "race")] == [UNKNOWN] * 3


def test_rafdb_falls_back_to_original_images(raf_dir, tmp_path):
    root = _copy(raf_dir, tmp_path)
    (root / "Image/original").mkdir()
    Image.new("RGB", (160, 120), (90, 90, 90)).save(root / "Image/original/train_00001.jpg")
    (root / "Image/aligned/train_00001_aligned.jpg").unlink()
    data = load_rafdb(root)
    assert data.refs[0] == "Image/original/train_00001.jpg" and data.faces[0].shape == (48, 48)
    assert abs(int(data.faces[0].mean()) - 90) <= 2
