"""The face rasteriser: soft (anti-aliased) shapes in face coordinates, vectorised over a batch, with
lighting, occluders, blur and noise; ``render_face`` draws one face."""

from __future__ import annotations

import numpy as np

from shared_models.taxonomy import AGE_BANDS, EMOTIONS
from simulations.synthetic.faces.params import SKIN_TONES, FaceDifficulty, _Batch, _FaceParams, _sample_params, _take
from simulations.synthetic.faces.population import FaceIdentity, sample_identity


def _col(x: np.ndarray) -> np.ndarray:
    """(B,) -> (B,1,1) float32 for broadcasting against the pixel grid."""
    return np.asarray(x, dtype=np.float32)[:, None, None]


def _soft(dist: np.ndarray, pix: np.ndarray) -> np.ndarray:
    """Coverage of a shape from its signed distance (negative inside), one pixel of anti-aliasing."""
    return np.clip(0.5 - dist / pix, 0.0, 1.0)


def _ellipse(u, v, cx, cy, a, b):
    """Approximate signed distance to an axis-aligned ellipse (exact on circles)."""
    r = np.sqrt(((u - cx) / a) ** 2 + ((v - cy) / b) ** 2)
    return (r - 1.0) * np.minimum(a, b)


def _segment(u, v, x0, y0, x1, y1, half_t):
    """Signed distance to a capsule (a thick line segment)."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((u - x0) * dx + (v - y0) * dy) / (dx * dx + dy * dy + 1e-9), 0.0, 1.0)
    return np.hypot(u - x0 - t * dx, v - y0 - t * dy) - half_t


def _face_coords(p: _FaceParams, size: int):
    """Map the pixel grid into each sample's face coordinates (applies pose)."""
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    px, py = grid[None, None, :], grid[None, :, None]
    c, s = _col(np.cos(p.angle)), _col(np.sin(p.angle))
    x, y = px - _col(p.tx), py - _col(p.ty)
    sc = _col(p.scale)
    u = (c * x + s * y) / sc
    v = (-s * x + c * y) / sc
    pix = np.float32(2.0 / size) / sc
    return px, py, u, v, pix


def _features(p: _FaceParams, u, v, pix) -> np.ndarray:
    """Darkness (0-1 coverage, may exceed 1 where features overlap) of facial features."""
    dark = np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=np.float32)
    # eyes (dark iris/lid region; opening scales the height)
    eye_h = _col(p.eye_h * np.maximum(p.eye_open, 0.15))
    for side in (-1.0, 1.0):
        ex = _col(side * p.eye_x)
        dark += _soft(_ellipse(u, v, ex, _col(p.eye_y), _col(p.eye_w), eye_h), pix)
        dark += 0.25 * _soft(_ellipse(u, v, ex, _col(p.eye_y) - 0.02, _col(p.eye_w) * 1.3, eye_h * 1.8), pix)
    # brows: inner end at x=0.1, outer end at x=0.46; raise lifts both, inner tilts the inner end
    by = _col(p.brow_y) - _col(p.brow_raise)
    inner_y = by - _col(p.brow_inner)
    for side in (-1.0, 1.0):
        dark += 0.9 * _soft(
            _segment(u, v, side * 0.1 * _col(p.face_w) / 0.7, inner_y, _col(side * p.eye_x * 1.5), by,
                     _col(p.brow_t)), pix)
    # nose: bridge shadow and nostrils
    dark += 0.25 * _soft(_segment(u, v, 0.0, -0.05, 0.0, 0.2, 0.018), pix)
    for side in (-1.0, 1.0):
        dark += 0.6 * _soft(_ellipse(u, v, side * 0.065, 0.25 - 0.04 * _col(p.wrinkle), 0.035, 0.022), pix)
    dark += _mouth(p, u, v, pix)
    _add_where(dark, p, p.wrinkle, u, v, pix, _nose_wrinkle)
    _add_where(dark, p, p.age_lines, u, v, pix, _forehead_lines)
    _add_where(dark, p, p.age_folds, u, v, pix, _folds)
    return dark


def _add_where(dark, p: _FaceParams, strength: np.ndarray, u, v, pix, draw) -> None:
    """Add ``draw`` only on the rows where ``strength`` matters (wrinkles are rare; saves time)."""
    rows = np.flatnonzero(strength > 0.02)
    if rows.size:
        dark[rows] += draw(_take(p, rows), u[rows], v[rows], pix[rows])


def _nose_wrinkle(p: _FaceParams, u, v, pix) -> np.ndarray:
    """Disgust: short horizontal creases across the nose bridge."""
    out = np.zeros(u.shape, dtype=np.float32)
    for k, y in enumerate((-0.06, 0.0, 0.06)):
        out += _soft(_segment(u, v, -0.08 + 0.01 * k, y, 0.08 - 0.01 * k, y, 0.012), pix)
    return 0.55 * _col(p.wrinkle) * out


def _mouth(p: _FaceParams, u, v, pix) -> np.ndarray:
    """Lip line along a parabola (corners lifted by ``curve``) plus the dark open interior."""
    mw = _col(np.maximum(p.mouth_w + p.width, 0.1))
    q = np.clip(1.0 - (u / mw) ** 2, 0.0, 1.0)  # 1 at centre, 0 at the corners
    centre = _col(p.mouth_y) - _col(p.curve) * (1.0 - q)
    dv = v - centre
    half_open = 0.5 * _col(p.open) * np.sqrt(q)
    upper = half_open + _col(p.lip_raise) * np.sqrt(q) * 1.2 + 0.035
    lower = half_open + 0.035
    inside = np.where(dv < 0, -dv - upper, dv - lower)  # vertical distance outside the mouth band
    width_edge = np.abs(u) - mw
    return 0.95 * _soft(np.maximum(inside, width_edge), pix)


def _forehead_lines(p: _FaceParams, u, v, pix) -> np.ndarray:
    """Age 40+: two horizontal lines above the brows."""
    out = np.zeros(u.shape, dtype=np.float32)
    for dy in (-0.14, -0.22):
        y = _col(p.brow_y) + dy
        out += _soft(_segment(u, v, -0.28, y, 0.28, y, 0.01), pix)
    return 0.4 * _col(p.age_lines) * out


def _folds(p: _FaceParams, u, v, pix) -> np.ndarray:
    """Age 70+: nasolabial folds (read a little like a frown) and crow's feet."""
    out = np.zeros(u.shape, dtype=np.float32)
    for side in (-1.0, 1.0):
        out += 1.3 * _soft(_segment(u, v, side * 0.12, 0.2, side * 0.3, 0.5, 0.014), pix)
        ex = _col(side * (p.eye_x + p.eye_w + 0.05))
        out += _soft(_segment(u, v, ex, _col(p.eye_y) - 0.04, ex + side * 0.06, _col(p.eye_y) - 0.07, 0.01), pix)
    return 0.35 * _col(p.age_folds) * out


def _render_batch(p: _FaceParams, size: int, rng: np.random.Generator) -> np.ndarray:
    """Rasterise a batch to uint8 (B, size, size)."""
    px, py, u, v, pix = _face_coords(p, size)
    face = _soft(_ellipse(u, v, 0.0, 0.0, _col(p.face_w), _col(p.face_h)), pix)
    head = _soft(_ellipse(u, v, 0.0, -0.12, _col(p.face_w) * 1.15, _col(p.face_h) * 1.1), pix)
    hair = head * np.maximum(v < _col(p.hairline), (1.0 - face) * (v < 0.15))
    img = _col(p.background) + 25.0 * py * _col(np.sign(p.background - 128.0))
    img = img + (_col(p.skin) - img) * face
    img = img + (_col(p.hair) - img) * hair
    feature_drop = 130.0 * _col(p.contrast) * np.minimum(_features(p, u, v, pix), 1.3) * face
    img = img - feature_drop * (_col(p.skin) / 185.0) ** 0.5
    img = _occlude(p, img, u, v, pix)
    img = img * _col(p.exposure) * (1.0 + _col(p.light_gx) * px + _col(p.light_gy) * py)
    img = _blur(img, p.blur_passes)
    img = img + rng.normal(size=img.shape).astype(np.float32) * _col(p.noise)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _occlude(p: _FaceParams, img, u, v, pix):
    """Paint the occluder of each sample that has one (bar over the eyes, or a hand)."""
    bar = np.maximum(np.abs(u - _col(p.occ_x)) - _col(p.occ_a), np.abs(v - _col(p.occ_y)) - _col(p.occ_b))
    hand = _ellipse(u, v, _col(p.occ_x), _col(p.occ_y), _col(p.occ_a), _col(p.occ_b))
    kind = _col(p.occ_kind)
    cover = np.where(kind == 1, _soft(bar, pix), np.where(kind == 2, _soft(hand, pix), 0.0))
    return img + (_col(p.occ_level) - img) * cover


def _blur(img: np.ndarray, passes: np.ndarray) -> np.ndarray:
    """Separable [1,2,1]/4 binomial blur, ``passes`` times per sample (edge-padded)."""
    out = img.copy()
    for k in range(1, int(passes.max(initial=0)) + 1):
        sel = passes >= k
        x = out[sel]
        x = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
        x = 0.25 * x[:, :-2, :] + 0.5 * x[:, 1:-1, :] + 0.25 * x[:, 2:, :]
        x = 0.25 * x[:, :, :-2] + 0.5 * x[:, :, 1:-1] + 0.25 * x[:, :, 2:]
        out[sel] = x
    return out


def render_face(
    emotion: str,
    demographics: dict[str, str],
    rng: np.random.Generator,
    size: int = 48,
    difficulty: FaceDifficulty | None = None,
    identity: FaceIdentity | None = None,
) -> np.ndarray:
    """One uint8 (size, size) grayscale face showing ``emotion``.

    ``demographics`` needs "sex", "age" (a taxonomy.AGE_BANDS entry) and
    "race". Pass the same ``identity`` for every frame of one person (e.g.
    frames paired with a speaker's clips); without it a fresh one is drawn.
    Deterministic given the state of ``rng``.
    """
    _check_demographics(demographics)
    if emotion not in EMOTIONS:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {EMOTIONS}")
    difficulty = difficulty or FaceDifficulty()
    identity = identity or sample_identity(rng, difficulty.identity_spread)
    batch = _Batch(
        emotion=np.array([EMOTIONS.index(emotion)]),
        sex=np.array([demographics["sex"]], dtype=object),
        age=np.array([demographics["age"]], dtype=object),
        race=np.array([demographics["race"]], dtype=object),
        identity=[identity],
    )
    return _render_batch(_sample_params(batch, rng, difficulty, size), size, rng)[0]


def _check_demographics(demographics: dict[str, str]) -> None:
    """Fail early, naming the attribute, instead of a KeyError deep in the renderer."""
    allowed = {"sex": ("male", "female"), "age": AGE_BANDS, "race": tuple(SKIN_TONES)}
    for attr, values in allowed.items():
        if demographics.get(attr) not in values:
            raise ValueError(f"demographics[{attr!r}] is {demographics.get(attr)!r}; expected one of {values}")
