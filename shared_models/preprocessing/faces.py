"""A face picture to the model's input: the one function training and prediction both call.

``face_pixels``: any PIL image -> 48x48 grayscale uint8 (luminance, Lanczos); ``face_tensor``: -> float32
(1, 48, 48) in [0, 1]. Training's loaders and ``fedemo predict`` call these very functions
(tests/test_predict.py checks it), so a deployed model sees what it was trained on.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

FACE_SIDE = 48


def gray_image(im: Image.Image) -> Image.Image:
    """Luminance as mode "L", scaling 16-bit, 32-bit and float grayscale by their depth (not clipping at 255)."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16"):
            top = 65535.0
        elif mode == "I":  # 32-bit int: Pillow uses it for 16-bit PNGs too
            top = 65535.0 if values.max(initial=0) > 255 else 255.0
        else:  # float: [0, 1] or [0, 255]
            top = 1.0 if values.max(initial=0) <= 1.0 else 255.0
        scaled = np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L")
    return im.convert("L")


def face_pixels(im: Image.Image, side: int = FACE_SIDE) -> np.ndarray:
    """A face image (already cropped to the face) as ``side`` x ``side`` grayscale uint8."""
    gray = gray_image(im)
    if gray.size != (side, side):
        gray = gray.resize((side, side), Image.Resampling.LANCZOS)
    return np.asarray(gray, dtype=np.uint8).copy()


def face_tensor(pixels: np.ndarray):
    """uint8 (48, 48) -> float32 tensor (1, 48, 48) in [0, 1]: what every face model takes."""
    import torch  # here: prediction with an ONNX file never loads PyTorch

    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32) / 255.0).unsqueeze(0)


def face_batch(faces: np.ndarray) -> np.ndarray:
    """uint8 (N, 48, 48) -> float32 (N, 1, 48, 48) in [0, 1], as numpy (for ONNX Runtime); same scaling."""
    return (np.asarray(faces, dtype=np.float32) / 255.0)[:, None]
