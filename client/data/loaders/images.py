"""Reading one face image file safely: any common mode and size, never a crash, never a wrong face.

Used by the RAF-DB loader and by CREMA-D fusion frames. Returns a 48x48 (or
``side``) grayscale uint8 array, or a ``Skipped`` naming the problem:

- an image whose header claims more than ``MAX_PIXELS`` is refused before
  it is decoded (a PNG "claiming 20000x20000" would otherwise be Pillow's
  ``DecompressionBombError``, or gigabytes of memory just under its limit);
- 16-bit and 32-bit grayscale (``I;16``, ``I``) and float (``F``) images are
  scaled to 0-255 by their bit depth, not clipped (Pillow's ``convert("L")``
  clips every value above 255, so a 16-bit face would read as all white);
- colour, palette and CMYK images are converted to luminance (alpha is ignored);
- unreadable, truncated or non-image files are skipped with the reason.

Two kinds of image are kept but flagged (``flag_faces``), because they are
probably not faces yet are not malformed: a constant image (every pixel the
same, e.g. 300 all-black frames from a failed export) and an image under
``MIN_FACE_SIDE`` pixels on a side (a 1x1 "face" upscaled to 48x48). Data
check counts and names them; nodes and simulations log the counts.
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
