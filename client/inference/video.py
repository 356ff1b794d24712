"""Faces from a video file, frame by frame: decode, detect every n-th frame, carry the box, crop.

Detection is the costly step, so it runs on every ``detect_every``-th
classified frame; frames between reuse the last box (``box_source``
"carried"). A detection frame that finds no face drops the box, so frames
until the next detection report "no face found" rather than a stale crop.
``every`` classifies only every n-th frame (the others are decoded with
``grab`` and never converted). Crops go through the training preprocessing
(``shared_models.preprocessing.faces.face_pixels``, luminance from RGB).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass
class VideoFace:
    index: int
    time_s: float
    pixels: np.ndarray | None  # uint8 (48, 48), None when no face
    box: list[int] | None
    box_source: str | None


def video_faces(path: str, *, every: int = 1, detect_every: int = 5, crop: str = "detect") -> Iterator[VideoFace]:
    """One ``VideoFace`` per classified frame; ValueError when the file is not a readable video."""
    import cv2
    from PIL import Image

    from client.inference.face_detection import detect_face
    from shared_models.preprocessing.faces import face_pixels

    if every < 1 or detect_every < 1:
        raise ValueError("--every and --detect-every must be at least 1")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError("unreadable video (OpenCV cannot open it)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    fps = fps if fps > 0 else 25.0
    box, index, classified, frames = None, -1, 0, 0
    try:
        while True:
            index += 1
            if index % every:
                if not capture.grab():
                    break
                continue
            ok, frame = capture.read()
            if not ok:
                break
            frames += 1
            source = "carried"
            if crop == "whole":
                h, w = frame.shape[:2]
                box, source = (0, 0, w, h), "whole image"
            elif classified % detect_every == 0:
                found = detect_face(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
                box, source = (found.x, found.y, found.w, found.h) if found else None, "detector"
            classified += 1
            if box is None:
                yield VideoFace(index, index / fps, None, None, None)
                continue
            x, y, w, h = box
            rgb = np.ascontiguousarray(frame[y:y + h, x:x + w, ::-1])
            yield VideoFace(index, index / fps, face_pixels(Image.fromarray(rgb, "RGB")), [x, y, w, h], source)
    finally:
        capture.release()
    if frames == 0:
        raise ValueError("unreadable video (no frame could be decoded)")
