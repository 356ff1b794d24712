"""Finding the face in a photo or video frame: OpenCV's bundled Haar cascade (frontal face).

Why this detector: it ships inside ``opencv-python-headless`` (``cv2.data.haarcascades``),
so a hospital's machine needs no model download, and it runs in a few
milliseconds on one core at 640x480. OpenCV 5.0's wheel no longer bundles
the cascades (nor ``CascadeClassifier``) and its DNN face detector (YuNet)
needs a separate model file, hence the pin to opencv 4.x in pyproject.toml.

Large images are searched at a reduced size (longest side ``SEARCH_SIDE``)
and the box is scaled back; faces smaller than ``MIN_FACE_FRACTION`` of the
image's short side are ignored. The largest face wins (one person per
picture: the patient in front of the camera).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

CASCADE_FILE = "haarcascade_frontalface_default.xml"
SEARCH_SIDE = 640
MIN_FACE_FRACTION = 0.1
MIN_FACE_PX = 24  # the cascade's own window


@dataclass(frozen=True)
class Box:
    """A face box in the image's own pixels: left, top, width, height."""

    x: int
    y: int
    w: int
    h: int

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]


@functools.lru_cache(maxsize=1)
def _cascade():
    import cv2

    path = cv2.data.haarcascades + CASCADE_FILE
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"OpenCV's bundled face detector {path} cannot be loaded (opencv-python-headless 4.x "
                           "ships it; 5.0 does not)")
    return cascade


def detect_face(gray: np.ndarray) -> Box | None:
    """The largest frontal face in a uint8 grayscale image (H, W), or None."""
    import cv2

    h, w = gray.shape[:2]
    scale = min(1.0, SEARCH_SIDE / max(h, w))
    small = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA) if scale < 1.0 else gray
    side = max(MIN_FACE_PX, int(MIN_FACE_FRACTION * min(small.shape[:2])))
    if min(small.shape[:2]) < side:
        return None
    found = _cascade().detectMultiScale(small, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
    if len(found) == 0:
        return None
    x, y, bw, bh = max((tuple(int(v) for v in f) for f in found), key=lambda b: b[2] * b[3])
    return Box(round(x / scale), round(y / scale), round(bw / scale), round(bh / scale))
