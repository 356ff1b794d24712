"""Reading one face image file safely: any common mode and size, never a crash, never a wrong face.

Returns a 48x48 (or ``side``) grayscale uint8 array or a ``Skipped`` naming the problem: oversized headers
refused before decoding, 16/32-bit and float images scaled by bit depth (not clipped), colour converted to
luminance, unreadable files skipped. Constant images and tiny ones are kept but flagged (``flag_faces``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from client.data.loaders.base import Skipped, os_problem
from shared_models.preprocessing.faces import face_pixels

MAX_PIXELS = 40_000_000  # e.g. 8000 x 5000; RAF-DB originals are far smaller
MIN_FACE_SIDE = 24  # half the models' 48 px: below it a face is mostly interpolation
FLAG_CONSTANT = "constant image"
FLAG_SMALL = f"image under {MIN_FACE_SIDE} px"
FLAG_EXPLAINED: dict[str, str] = {
    FLAG_CONSTANT: "every pixel has the same value: there is no face to learn from (a failed export?)",
    FLAG_SMALL: f"narrower or shorter than {MIN_FACE_SIDE} px, upscaled to 48x48: mostly interpolation",
}


def flag_faces(refs, faces: np.ndarray, sizes: list[tuple[int, int]] | None = None) -> dict[str, list[str]]:
    """Refs of constant faces and of faces whose source was under ``MIN_FACE_SIDE`` px (``sizes``: (w, h))."""
    flat = faces.reshape(len(faces), -1)
    flags = {FLAG_CONSTANT: [str(r) for r, c in zip(refs, flat.min(axis=1) == flat.max(axis=1)) if c]}
    if sizes is not None:
        flags[FLAG_SMALL] = [str(r) for r, (w, h) in zip(refs, sizes) if min(w, h) < MIN_FACE_SIDE]
    return {kind: found for kind, found in flags.items() if found}


def read_face(path: Path, ref: str, side: int = 48) -> np.ndarray | Skipped:
    """The image at ``path`` as ``side`` x ``side`` grayscale uint8, or a ``Skipped`` saying why not."""
    read = read_face_sized(path, ref, side)
    return read if isinstance(read, Skipped) else read[0]


def read_face_sized(path: Path, ref: str, side: int = 48) -> tuple[np.ndarray, tuple[int, int]] | Skipped:
    """``read_face`` plus the image's own (width, height), for ``flag_faces``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width <= 0 or height <= 0:
                    return Skipped(ref, f"image has an empty size {width}x{height}")
                if width * height > MAX_PIXELS:
                    return Skipped(ref, f"image claims {width}x{height} pixels, more than the "
                                        f"{MAX_PIXELS:,} a face image may have (not decoded)")
                return face_pixels(im, side), (width, height)  # the preprocessing prediction uses too
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        return Skipped(ref, f"image refused as a decompression bomb ({err})")
    except FileNotFoundError:
        return Skipped(ref, "image not found")
    except PermissionError as err:
        return Skipped(ref, f"cannot read image: {os_problem(err)}")
    except Exception as err:  # UnidentifiedImageError, truncated data (OSError), SyntaxError, ValueError, ...
        return Skipped(ref, f"unreadable image ({type(err).__name__}: {err})")
