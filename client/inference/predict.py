"""``fedemo predict RUN_DIR INPUT...``: the run's model on a hospital's images, clips, videos and folders.

One record per input or classified video frame (file, frame, face box, 7 probabilities, top emotion,
valence/arousal where the model has them) or a per-input ``error``: a batch never stops on one bad file.
Faces and clips go through the training preprocessing (``shared_models.preprocessing``), so the model sees
what it was trained on. Details: docs/design_notes.md.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from client.inference.run_model import check_task, input_kind

MAX_PIXELS = 40_000_000


@dataclass
class Tally:
    predictions: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def count(self, record: dict) -> None:
        if record.get("error"):
            kind = record["error"].split(":")[0].split(" (")[0]
            self.errors[kind] = self.errors.get(kind, 0) + 1
        else:
            self.predictions += 1


def expand_inputs(inputs: list[str]) -> list[str]:
    """Folders become their files (sorted, recursively, known suffixes only); other paths are kept as given."""
    out: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out.extend(str(p) for p in sorted(path.rglob("*")) if p.is_file() and input_kind(str(p)))
        else:
            out.append(item)
    return out


def face_record(emotions, probs: np.ndarray, va: np.ndarray | None, **where) -> dict:
    record = dict(where)
    record["probabilities"] = {e: round(float(p), 6) for e, p in zip(emotions, probs)}
    record["emotion"] = emotions[int(np.argmax(probs))]
    if va is not None:
        record["valence"], record["arousal"] = round(float(va[0]), 6), round(float(va[1]), 6)
    record["error"] = None
    return record


def read_image_face(path: str, crop: str) -> tuple[np.ndarray, list[int] | None, str]:
    """48x48 face pixels of an image file, its box and how it was found; raises ValueError why not."""
    from PIL import Image

    from client.inference.face_detection import detect_face
    from shared_models.preprocessing.faces import face_pixels, gray_image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.size[0] * im.size[1] > MAX_PIXELS:
                    raise ValueError(f"unreadable image: {im.size[0]}x{im.size[1]} pixels is more than {MAX_PIXELS:,}")
                im.load()
                gray = gray_image(im)
    except ValueError:
        raise
    except Exception as err:  # UnidentifiedImageError, truncated data, missing file, bombs
        raise ValueError(f"unreadable image ({type(err).__name__}: {err})") from None
    if crop == "whole":
        return face_pixels(gray), [0, 0, gray.size[0], gray.size[1]], "whole image"
    box = detect_face(np.asarray(gray))
    if box is None:
        raise ValueError("no face found (pass --crop whole for pictures that are already face crops)")
    face = gray.crop((box.x, box.y, box.x + box.w, box.y + box.h))
    return face_pixels(face), box.as_list(), "detector"


def read_clip_features(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Log-mel segments (1, 6, 128, 32) and mask (1, 6) of a clip, exactly as training computes them."""
    from client.data.loaders.audio_files import decode_clip
    from shared_models.audio_features import clip_segments
    from shared_models.dataset_format_error import DatasetFormatError

    try:
        wave = decode_clip(Path(path))
    except DatasetFormatError as err:
        raise ValueError(f"unreadable clip ({err.problem})") from None
    features, mask = clip_segments(wave)
    return features.numpy()[None], mask.numpy()[None]


def predict_file(engine, task: str, path: str, kind: str, *, crop: str, every: int, detect_every: int) -> Iterator[dict]:
    """The records of one input (several for a video); a failure is one error record naming it."""
    from shared_models.preprocessing.faces import face_batch
    from shared_models.taxonomy import EMOTIONS

    try:
        if kind == "video":
            from client.inference.video import video_faces

            for frame in video_faces(path, every=every, detect_every=detect_every, crop=crop):
                where = {"file": path, "frame": frame.index, "time_s": round(frame.time_s, 3)}
                if frame.pixels is None:
                    yield {**where, "box": None, "box_source": None, "error": "no face found in this frame"}
                    continue
                probs, va = engine.run((face_batch(frame.pixels[None]),))
                yield face_record(EMOTIONS, probs[0], None if va is None else va[0], **where, box=frame.box,
                                  box_source=frame.box_source)
            return
        if kind == "image":
            pixels, box, source = read_image_face(path, crop)
            probs, va = engine.run((face_batch(pixels[None]),))
            yield face_record(EMOTIONS, probs[0], None if va is None else va[0], file=path, box=box, box_source=source)
        elif kind == "clip":
            features, mask = read_clip_features(path)
            probs, va = engine.run((features, mask))
            yield face_record(EMOTIONS, probs[0], None if va is None else va[0], file=path, box=None, box_source=None)
        elif kind == "image+clip":
            face_path, _, clip_path = path.partition("+")
            pixels, box, source = read_image_face(face_path, crop)
            features, mask = read_clip_features(clip_path)
            probs, va = engine.run((face_batch(pixels[None]), features, mask))
            yield face_record(EMOTIONS, probs[0], None if va is None else va[0], file=path, box=box, box_source=source)
    except ValueError as err:
        yield {"file": path, "error": str(err)}


def predict_paths(run, engine, inputs: list[str], *, crop: str = "detect", every: int = 1,
                  detect_every: int = 5) -> Iterator[dict]:
    """Every record of every input, after refusing (ConfigError) any input the run's task cannot take."""
    from shared_models.config_error import ConfigError

    paths = expand_inputs(inputs)
    if not paths:
        raise ConfigError("no input files: pass images, clips, videos, FACE+CLIP pairs or folders of them")
    kinds = []
    for path in paths:
        kind = input_kind(path)
        if kind is None:
            raise ConfigError(f"{path}: not an image, clip or video file name (suffixes: .png .jpg .wav .mp4 ...)")
        check_task(run, path, kind)
        kinds.append(kind)
    for path, kind in zip(paths, kinds):
        yield from predict_file(engine, run.task, path, kind, crop=crop, every=every, detect_every=detect_every)
