"""`fedemo predict` on real files through the real command: photos, clips, a video, folders, bad inputs.

Run folders hold a real run record (tests/fixtures/learned_run) and seeded weights of the model under test;
one slow test trains a tiny federation first and predicts with what it learned (the newcomer's path).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from simulations.cli import main as fedemo
from tests.inference_files import run_folder, write_clips, write_images, write_video


def predict(args: list[str], capsys) -> tuple[int, list[dict], str]:
    code = fedemo(["predict", *map(str, args)])
    out = capsys.readouterr()
    records = [json.loads(line) for line in out.out.splitlines() if line.startswith("{")]
    return code, records, out.err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return {"images": write_images(root / "images"), "clips": write_clips(root / "clips"),
            "video": write_video(root / "face.avi")}


@pytest.fixture(scope="module")
def face_run(tmp_path_factory):
    return run_folder(tmp_path_factory.mktemp("face") / "run", "face_cnn")


def test_training_and_prediction_call_the_same_face_preprocessing(files):
    """The loader (training) and the predictor read a face crop through one function, to the same pixels."""
    import client.data.loaders.images as training_images
    import client.data.torch_data as training_data
    import client.inference.predict as predict_module
    from client.inference.predict import read_image_face
    from shared_models.preprocessing import faces

    assert training_images.face_pixels is faces.face_pixels
    assert training_data.face_tensor is faces.face_tensor
    for kind in ("rgb_jpeg", "grey_png", "rgba_png"):
        path = files["images"][kind]
        trained_on = training_images.read_face(path, path.name)
        predicted_on, box, source = read_image_face(str(path), "whole")
        assert source == "whole image" and box[:2] == [0, 0]
        np.testing.assert_array_equal(trained_on, predicted_on)
    # The tensor the model sees: training's (no augmentation) and prediction's batch are the same numbers.
    pixels = training_images.read_face(files["images"]["rgb_jpeg"], "x")
    np.testing.assert_array_equal(training_data._face_tensor(pixels, None).numpy()[None],
                                  faces.face_batch(pixels[None]))
    assert "face_pixels" in predict_module.read_image_face.__code__.co_names


def test_clip_features_are_the_training_features(files):
    """A clip decodes and turns into log-mel segments exactly as the training dataset computes them."""
    from client.data.loaders.audio_files import decode_clip
    from client.inference.predict import read_clip_features
    from shared_models.audio_features import clip_segments

    for key in ("8000_1", "44100_2"):
        features, mask = read_clip_features(str(files["clips"][key]))
        expected, expected_mask = clip_segments(decode_clip(files["clips"][key]))
        np.testing.assert_array_equal(features[0], expected.numpy())
        np.testing.assert_array_equal(mask[0], expected_mask.numpy())


def test_photos_of_every_mode_and_size_are_predicted_and_bad_ones_counted(face_run, files, capsys):
    images = files["images"]
    code, records, err = predict([face_run, *images.values()], capsys)
    assert code == 0
    by_file = {Path(r["file"]).name: r for r in records}
    assert len(records) == len(images)
    for kind in ("rgb_jpeg", "grey_png", "rgba_png", "big_jpeg"):
        r = by_file[images[kind].name]
        assert r["error"] is None, r
        assert r["box_source"] == "detector" and len(r["box"]) == 4
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-4 and len(r["probabilities"]) == 7
        assert r["emotion"] == max(r["probabilities"], key=r["probabilities"].get)
    # The box is in the picture's own pixels: the 1920x1440 copy's box is 3x the 640x480 one's.
    small, big = by_file[images["rgb_jpeg"].name]["box"], by_file[images["big_jpeg"].name]["box"]
    assert abs(big[0] / 3 - small[0]) < 15 and abs(big[2] / 3 - small[2]) < 15
    assert by_file[images["no_face"].name]["error"].startswith("no face found")
    assert by_file[images["corrupt"].name]["error"].startswith("unreadable image")
    assert "4 prediction(s), 2 error(s)" in err


def test_a_folder_and_csv_output(face_run, files, capsys):
    folder = files["images"]["rgb_jpeg"].parent
    code = fedemo(["predict", str(face_run), str(folder), "--format", "csv", "--crop", "whole"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert code == 0 and len(rows) == 6
    good = [r for r in rows if not r["error"]]
    assert len(good) == 5 and all(r["box_source"] == "whole image" for r in good)  # --crop whole: no detector
    assert all(abs(sum(float(r[f"p_{e}"]) for e in ("angry", "disgust", "fear", "happy", "sad", "surprise",
                                                       "neutral")) - 1) < 1e-4 for r in good)
    assert [r["file"] for r in rows if r["error"]] == [str(files["images"]["corrupt"])]


def test_a_video_is_classified_per_frame_with_the_box_carried_between_detections(face_run, files, capsys):
    code, records, _ = predict([face_run, files["video"], "--detect-every", "3"], capsys)
    assert code == 0 and len(records) == 24
    assert [r["frame"] for r in records] == list(range(24))
    faces = records[:18]
    assert all(r["error"] is None for r in faces)
    assert {r["box_source"] for r in faces} == {"detector", "carried"}
    assert all(r["box_source"] == "detector" for r in faces[::3])
    assert records[6]["box"] == records[7]["box"] == records[8]["box"]  # carried, not re-detected
    assert all(r["error"] == "no face found in this frame" for r in records[18:])
    assert records[12]["time_s"] == pytest.approx(1.0, abs=1e-3)  # 12 fps
    code, every, _ = predict([face_run, files["video"], "--every", "4"], capsys)
    assert [r["frame"] for r in every] == [0, 4, 8, 12, 16, 20]


def test_clips_at_any_rate_and_channel_count(tmp_path, files, capsys):
    run = run_folder(tmp_path / "voice", "voice_crnn", valence_arousal=True)
    clips = files["clips"]
    code, records, err = predict([run, *clips.values()], capsys)
    assert code == 0 and len(records) == 7
    good = [r for r in records if r["error"] is None]
    assert len(good) == 6
    assert all(-1.5 < r["valence"] < 1.5 and "arousal" in r and r["box"] is None for r in good)
    assert records[-1]["error"].startswith("unreadable clip")
    # Same utterance, mono or stereo at 16 kHz: the same log-mel up to the stereo mix's level (peak-normalised).
    p1, p2 = (good[2]["probabilities"], good[3]["probabilities"])
    assert max(abs(p1[e] - p2[e]) for e in p1) < 0.05


def test_a_model_refuses_input_of_another_task_with_the_reason(face_run, files, capsys):
    code = fedemo(["predict", str(face_run), str(files["images"]["rgb_jpeg"]), str(files["clips"]["16000_1"])])
    err = capsys.readouterr().err
    assert code == 2
    assert "clip_16000_1ch.wav: a clip, but model face_cnn" in err and "task 'face'" in err


def test_fusion_takes_face_and_clip_pairs(tmp_path, files, capsys):
    run = run_folder(tmp_path / "fusion", "fusion", valence_arousal=True)
    pair = f"{files['images']['rgb_jpeg']}+{files['clips']['16000_1']}"
    code, records, _ = predict([run, pair], capsys)
    assert code == 0 and records[0]["error"] is None and "valence" in records[0]
    code = fedemo(["predict", str(run), str(files["images"]["rgb_jpeg"])])
    assert code == 2 and "FACE.png+CLIP.wav" in capsys.readouterr().err


def test_not_a_run_folder(tmp_path, capsys):
    assert fedemo(["predict", str(tmp_path), "x.png"]) == 2
    assert "no config.json" in capsys.readouterr().err
