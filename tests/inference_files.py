"""Real input files for the predict/export tests: photos with a synthetic face, clips, a video, a run folder.

Faces come from the project's synthetic generator, drawn at 160 px on a
640x480 grey canvas (where OpenCV's cascade must find them); clips from the
CREMA-D-layout voice generator, resampled and written as 8, 16 and 44.1 kHz
mono and stereo WAV files; the video is written with OpenCV's own writer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

FIXTURE_RUN = Path(__file__).parent / "fixtures" / "learned_run"


def face_canvas(seed: int, x: int = 200, y: int = 100, side: int = 160) -> np.ndarray:
    """uint8 (480, 640) grey canvas with one generator face whose box OpenCV's cascade finds."""
    from client.inference.face_detection import detect_face
    from simulations.synthetic.synth_faces import generate_faces

    faces = generate_faces(24, seed, size=side).faces
    for face in faces:
        canvas = np.full((480, 640), 128, np.uint8)
        canvas[y:y + side, x:x + side] = face
        if detect_face(canvas) is not None:
            return canvas
    raise AssertionError("the cascade found none of 24 generator faces")


def write_images(folder: Path) -> dict[str, Path]:
    """Photos in several sizes and modes, a picture without a face and a corrupt file."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    canvas = face_canvas(1)
    rgb = np.stack([canvas, (canvas * 0.9).astype(np.uint8), canvas], axis=-1)
    files = {"rgb_jpeg": folder / "rgb.jpg", "grey_png": folder / "grey.png", "rgba_png": folder / "rgba.png",
             "big_jpeg": folder / "big.jpeg", "no_face": folder / "wall.png", "corrupt": folder / "corrupt.png"}
    Image.fromarray(rgb, "RGB").save(files["rgb_jpeg"], quality=92)
    Image.fromarray(canvas, "L").resize((320, 240)).save(files["grey_png"])
    Image.fromarray(np.dstack([rgb, np.full(canvas.shape, 255, np.uint8)]), "RGBA").save(files["rgba_png"])
    Image.fromarray(rgb, "RGB").resize((1920, 1440)).save(files["big_jpeg"])
    Image.fromarray(np.tile(np.linspace(60, 200, 300, dtype=np.uint8), (200, 1)), "L").save(files["no_face"])
    files["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not image data" * 10)
    return files


def write_clips(folder: Path) -> dict[str, Path]:
    """One synthetic utterance at 8, 16 and 44.1 kHz, mono and stereo, and a corrupt WAV."""
    import soundfile as sf

    from shared_models.audio_features import resample
    from simulations.synthetic.synth_voices import write_cremad

    folder.mkdir(parents=True, exist_ok=True)
    write_cremad(folder / "corpus", 4, seed=3, n_actors=2)
    source = sorted((folder / "corpus" / "AudioWAV").glob("*.wav"))[0]
    wave, rate = sf.read(source, dtype="float32")
    files = {}
    for new_rate in (8000, 16000, 44100):
        mono = resample(wave, rate, new_rate)
        for channels in (1, 2):
            path = folder / f"clip_{new_rate}_{channels}ch.wav"
            sf.write(path, mono if channels == 1 else np.stack([mono, 0.5 * mono], axis=1), new_rate)
            files[f"{new_rate}_{channels}"] = path
    files["corrupt"] = folder / "broken.wav"
    files["corrupt"].write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    return files


def write_video(path: Path, frames: int = 24, fps: float = 12.0) -> Path:
    """A 640x480 MJPG video: a generator face drifting right, then (last quarter) an empty wall."""
    import cv2

    canvas = face_canvas(2)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 480))
    assert writer.isOpened(), "OpenCV cannot write MJPG video here"
    for i in range(frames):
        frame = np.full((480, 640), 128, np.uint8) if i >= frames * 3 // 4 else np.roll(canvas, 2 * i, axis=1)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def run_folder(folder: Path, model: str, *, valence_arousal: bool = False, task: str | None = None) -> Path:
    """A run folder as a finished run leaves it (the fixture run's record) with ``model``'s weights (seeded)."""
    import torch

    from shared_models.models.registry import build_model, model_task

    shutil.copytree(FIXTURE_RUN, folder)
    config = json.loads((folder / "config.json").read_text())
    config["run_config"].update({"model": model, "task": task or model_task(model),
                                 "valence-arousal": valence_arousal})
    config["data_dir"] = ""
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    net = build_model(model, valence_arousal=valence_arousal)
    torch.save(net.state_dict(), folder / "global_model.pt")
    return folder
