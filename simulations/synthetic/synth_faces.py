"""Deterministic synthetic faces, written in the published FER2013 and RAF-DB layouts.

Real face datasets cannot be downloaded on our machines, yet the loaders,
partitioners, training loop and fairness reports need data that behaves like
them: a learnable but hard 7-class task, unequal classes, unequal demographic
groups, subjects with several images each, and groups on which a model does
measurably worse. This module draws such faces with numpy alone (Pillow only
writes JPEGs), vectorised over a batch so 12,000 faces take seconds.

How a face is drawn
-------------------
A face is an ellipse on a random background, with eyes, brows, nose, mouth,
hair and (with age) wrinkles, all painted with soft (anti-aliased) edges in
*face coordinates* (x right, y down, the face spans about [-0.75, 0.75] x
[-0.85, 0.85]). Pose is applied by mapping the pixel grid into face
coordinates, so rotation, shift and scale cost nothing extra.

Expression moves the parameters a real face moves (Ekman's action units,
simplified): mouth curvature, opening, width and upper-lip raise; brow height
and inner-brow angle; eye opening; nose wrinkle. Each emotion is a direction
in that parameter space (``_EXPRESSIONS``), scaled by a per-sample intensity
and perturbed by per-sample jitter. The directions overlap on purpose, as real
expressions do: fear and surprise both raise brows and widen eyes (fear
stretches the mouth, surprise drops the jaw); disgust and anger both lower the
brows and narrow the eyes (disgust wrinkles the nose and lifts the upper lip);
a weak sad face is close to a neutral one, especially on a subject whose
resting mouth turns down (``FaceIdentity.resting_curve``).

Demographics change appearance
------------------------------
* Race sets skin tone (the face's base intensity) *and* feature contrast:
  darker skin is drawn with a lower contrast between features and skin,
  as in underexposed photos of dark-skinned people in web-scraped datasets
  (``FaceDifficulty.dark_skin_contrast``; feature darkening also scales with
  the square root of skin intensity, so features on dark skin end up with
  about 40% of the contrast they have on light skin). Asian faces are drawn a
  little wider.
* Sex changes face width (male faces wider) and brow thickness.
* Age: children (0-3, 4-19) get rounder faces, larger eyes and lower-set
  features; 40-69 get faint forehead lines; 70+ get forehead lines, crow's
  feet and nasolabial folds (which look a little like a sad or smiling mouth)
  and weaker expressions (``FaceDifficulty.elderly_intensity``), as reported
  for older faces in expression-recognition benchmarks.

The groups that are harder are also rarer (``Population``): African-American
15%, 70+ 6%, so a model trained on the pooled data sees few of them, which is
what the fairness reports are meant to surface.

Nuisance: pose jitter, lighting gradient and exposure, background, hair,
occluders (a dark glasses-like bar over the eyes, or a skin-toned "hand" over
the mouth or a cheek), blur and Gaussian noise.

Subjects: every subject has fixed demographics and a ``FaceIdentity`` (small
fixed offsets of face geometry and a resting expression) and contributes
10-40 images, so a natural per-subject partitioning is possible.

Calibration (``FaceDifficulty`` defaults): FedEmo's ``face_cnn`` (Adam 1e-3,
batch 32, flip/shift augmentation) trained centrally on 3,000 faces reaches
about 67% after 5 epochs (chance 14%, majority class 25%), after a plateau at
the majority class for its first 1-2 epochs. With the earlier, harder setting
(intensity 0.2-1.1, jitter 0.3, noise 12, occlusion 0.25, rotation 12) a small
3-conv CNN reached 57-64% after 5 epochs, but face_cnn under federated
averaging stayed at the majority class for 10+ rounds, so the defaults were
eased. The group knobs are unchanged: on new subjects, African-American faces
scored 8-20 points and 70+ faces 10-17 points below the majority groups.
What made the task learnable in few epochs was feature *salience* (size and
contrast of eyes, brows, mouth); what caps accuracy is expression jitter and
weak intensities, so tune ``expression_jitter``/``intensity_range`` first.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image

from shared_models.taxonomy import AGE_BANDS, EMOTIONS, FER2013_CODES, RAFDB_CODES

# ---------------------------------------------------------------------------
# Knobs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceDifficulty:
    """How hard the synthetic faces are. Defaults are calibrated (module docstring).

    Raise ``noise_std``, ``occlusion_prob``, ``rotation_deg`` or
    ``expression_jitter``, or lower ``intensity_range``, to make the task harder.
    """

    noise_std: float = 10.0
    """Gaussian pixel noise std on the 0-255 scale (per sample scaled by U(0.5, 1.5))."""
    occlusion_prob: float = 0.2
    """Probability of one occluder (glasses bar over the eyes, or a hand over mouth/cheek)."""
    rotation_deg: float = 10.0
    """Max in-plane head rotation, degrees (uniform in +-)."""
    shift_frac: float = 0.07
    """Max face-centre shift as a fraction of the half image size."""
    scale_jitter: float = 0.10
    """Max relative face-size change (uniform in +-)."""
    intensity_range: tuple[float, float] = (0.35, 1.15)
    """Per-sample expression intensity, uniform in this range (1 = full prototype)."""
    expression_jitter: float = 0.22
    """Per-parameter expression noise, as a fraction of each parameter's typical swing."""
    lighting_strength: float = 0.45
    """Typical lighting gradient: relative brightness change from centre to edge (Gaussian, per sample)."""
    exposure_range: tuple[float, float] = (0.7, 1.2)
    """Global brightness gain, uniform in this range."""
    blur_prob: float = 0.4
    """Probability of a blur (1-2 binomial passes at 48 px, scaled with size)."""
    identity_spread: float = 1.0
    """Scale of per-subject geometry offsets and resting expression."""
    elderly_intensity: float = 0.55
    """Expression intensity multiplier for the 70+ age band."""
    dark_skin_contrast: float = 0.55
    """Feature-to-skin contrast for the darkest skin tone, relative to the lightest (1.0)."""


@dataclass(frozen=True)
class SkinTone:
    """Base intensity of the face region and the contrast features have against it."""

    base: float  # mean skin intensity, 0-255
    spread: float  # per-subject std of the base
    contrast: float | None  # relative feature contrast (1 = full); None: FaceDifficulty.dark_skin_contrast


# Design choices (not published facts): intensity of a grayscale face by group.
SKIN_TONES: dict[str, SkinTone] = {
    "caucasian": SkinTone(base=185.0, spread=14.0, contrast=1.0),
    "asian": SkinTone(base=165.0, spread=14.0, contrast=0.9),
    "african_american": SkinTone(base=88.0, spread=12.0, contrast=None),
}


@dataclass(frozen=True)
class Population:
    """Group and class frequencies of the synthetic population (unequal, like web data)."""

    sex: dict[str, float] = field(default_factory=lambda: {"male": 0.5, "female": 0.5})
    race: dict[str, float] = field(
        default_factory=lambda: {"caucasian": 0.6, "african_american": 0.15, "asian": 0.25}
    )
    age: dict[str, float] = field(
        default_factory=lambda: {"0-3": 0.02, "4-19": 0.10, "20-39": 0.47, "40-69": 0.35, "70+": 0.06}
    )
    # FER2013-like class frequencies: happy most common, disgust rarest.
    emotions: dict[str, float] = field(
        default_factory=lambda: {
            "angry": 0.13, "disgust": 0.04, "fear": 0.13, "happy": 0.25,
            "sad": 0.16, "surprise": 0.11, "neutral": 0.18,
        }
    )
    images_per_subject: tuple[int, int] = (10, 40)


# ---------------------------------------------------------------------------
# Identities, subjects and demographics
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceIdentity:
    """Fixed per-subject geometry offsets (face units) and resting expression.

    Gives the images of one subject a shared look, which is what makes a
    per-subject (natural) client split non-IID.
    """

    eye_dx: float = 0.0  # eye spacing offset
    eye_dy: float = 0.0  # eye height offset
    mouth_dy: float = 0.0
    mouth_dw: float = 0.0  # mouth width offset
    brow_dy: float = 0.0
    face_w: float = 0.0  # face width offset
    resting_curve: float = 0.0  # >0: resting smile, <0: resting frown
    resting_brow: float = 0.0  # >0: inner brows rest raised
    skin: float = 0.0  # skin tone offset in units of the group's SkinTone.spread
    hair: float = 40.0  # hair intensity
    hairline: float = -0.62  # hairline height


def sample_demographics(rng: np.random.Generator, population: Population | None = None) -> dict[str, str]:
    """One person's sex, age band and race, drawn with the population's unequal frequencies."""
    population = population or Population()
    return {attr: _choice(rng, getattr(population, attr)) for attr in ("sex", "age", "race")}


def sample_identity(rng: np.random.Generator, spread: float = 1.0) -> FaceIdentity:
    """A random identity; ``spread`` scales how different subjects look."""
    g = rng.normal(size=8) * spread
    return FaceIdentity(
        eye_dx=0.025 * g[0], eye_dy=0.025 * g[1], mouth_dy=0.03 * g[2], mouth_dw=0.025 * g[3],
        brow_dy=0.025 * g[4], face_w=0.025 * g[5], resting_curve=0.035 * g[6], resting_brow=0.02 * g[7],
        skin=float(np.clip(rng.normal(), -2.5, 2.5)),
        hair=float(rng.uniform(10.0, 200.0)),
        hairline=float(rng.uniform(-0.72, -0.5)),
    )


@dataclass(frozen=True)
class SynthSubject:
    """A synthetic person: an id, fixed demographics, an identity and an image count."""

    subject_id: str
    demographics: dict[str, str]
    identity: FaceIdentity
    n_images: int


def sample_subjects(
    n_images: int, rng: np.random.Generator, population: Population | None = None, spread: float = 1.0
) -> list[SynthSubject]:
    """Subjects whose image counts (10-40 each, the last one truncated) sum to ``n_images``."""
    population = population or Population()
    lo, hi = population.images_per_subject
    subjects: list[SynthSubject] = []
    remaining = n_images
    while remaining > 0:
        count = min(remaining, int(rng.integers(lo, hi + 1)))
        demo = sample_demographics(rng, population)
        subjects.append(SynthSubject(f"s{len(subjects):05d}", demo, sample_identity(rng, spread), count))
        remaining -= count
    return subjects


def sample_emotions(n: int, rng: np.random.Generator, population: Population | None = None) -> np.ndarray:
    """``n`` emotion indices with the population's class frequencies, every class present when n >= 7.

    Counts are allocated by largest remainder (then shuffled) rather than drawn
    independently, so small test datasets still contain the rare classes.
    """
    population = population or Population()
    probs = np.array([population.emotions[e] for e in EMOTIONS], dtype=float)
    probs /= probs.sum()
    counts = np.floor(probs * n).astype(int)
    if n >= len(EMOTIONS):
        counts = np.maximum(counts, 1)
    while counts.sum() > n:
        counts[np.argmax(counts)] -= 1
    order = np.argsort(-(probs * n - np.floor(probs * n)))
    i = 0
    while counts.sum() < n:
        counts[order[i % len(order)]] += 1
        i += 1
    labels = np.repeat(np.arange(len(EMOTIONS)), counts)
    return rng.permutation(labels).astype(np.int64)


def _choice(rng: np.random.Generator, freqs: dict[str, float]) -> str:
    names = list(freqs)
    p = np.array([freqs[k] for k in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


# ---------------------------------------------------------------------------
# Expression space
# ---------------------------------------------------------------------------

# Parameters an expression moves, and their typical swing (used to scale jitter).
_EXPR_PARAMS: tuple[str, ...] = (
    "curve", "open", "width", "lip_raise", "brow_raise", "brow_inner", "eye_open", "wrinkle",
)
_EXPR_SCALE = np.array([0.15, 0.18, 0.07, 0.07, 0.1, 0.1, 0.4, 0.6])

# Full-intensity displacement of each parameter per emotion (face units; eye_open
# relative; wrinkle 0-1). curve > 0 lifts the mouth corners; brow_inner > 0
# raises the inner brow ends (sad/fear), < 0 lowers them (anger).
_EXPRESSIONS: dict[str, tuple[float, ...]] = {
    #            curve  open  width lip   brow  inner  eye   wrinkle
    "neutral":  (0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.0),
    "happy":    (0.22, 0.07, 0.07, 0.00, 0.01, 0.00, -0.25, 0.0),
    "surprise": (0.00, 0.34, -0.08, 0.00, 0.16, 0.03, 0.60, 0.0),
    "fear":     (-0.05, 0.16, 0.10, 0.00, 0.11, 0.10, 0.45, 0.0),
    "angry":    (-0.06, 0.00, -0.06, 0.00, -0.07, -0.15, -0.40, 0.0),
    "disgust":  (-0.08, 0.04, -0.03, 0.08, -0.05, -0.08, -0.35, 1.0),
    "sad":      (-0.15, 0.00, -0.03, 0.00, 0.02, 0.13, -0.20, 0.0),
}
_EXPR_MATRIX = np.array([_EXPRESSIONS[e] for e in EMOTIONS], dtype=float)


# ---------------------------------------------------------------------------
# Per-sample parameters (vectorised over a batch)
# ---------------------------------------------------------------------------


@dataclass
class _FaceParams:
    """Every number that determines one batch of faces; each field is a float array (B,)."""

    # pose and photometry
    angle: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    scale: np.ndarray
    background: np.ndarray
    skin: np.ndarray
    contrast: np.ndarray
    light_gx: np.ndarray
    light_gy: np.ndarray
    exposure: np.ndarray
    noise: np.ndarray
    blur_passes: np.ndarray
    # geometry
    face_w: np.ndarray
    face_h: np.ndarray
    eye_x: np.ndarray
    eye_y: np.ndarray
    eye_w: np.ndarray
    eye_h: np.ndarray
    brow_y: np.ndarray
    brow_t: np.ndarray
    mouth_y: np.ndarray
    mouth_w: np.ndarray
    hair: np.ndarray
    hairline: np.ndarray
    age_lines: np.ndarray  # forehead lines strength 0-1
    age_folds: np.ndarray  # nasolabial folds / crow's feet strength 0-1
    # expression (after intensity and jitter)
    curve: np.ndarray
    open: np.ndarray
    width: np.ndarray
    lip_raise: np.ndarray
    brow_raise: np.ndarray
    brow_inner: np.ndarray
    eye_open: np.ndarray
    wrinkle: np.ndarray
    # occluder: 0 none, 1 glasses bar, 2 hand
    occ_kind: np.ndarray
    occ_x: np.ndarray
    occ_y: np.ndarray
    occ_a: np.ndarray
    occ_b: np.ndarray
    occ_level: np.ndarray


@dataclass
class _Batch:
    """Per-sample inputs of the parameter sampler, aligned arrays of length B."""

    emotion: np.ndarray  # int index into EMOTIONS
    sex: np.ndarray  # object
    age: np.ndarray  # object
    race: np.ndarray  # object
    identity: list[FaceIdentity]


def _contrast(tone: SkinTone, d: FaceDifficulty) -> float:
    return d.dark_skin_contrast if tone.contrast is None else tone.contrast


def _expression(
    batch: _Batch, ids: dict[str, np.ndarray], rng: np.random.Generator, d: FaceDifficulty
) -> dict[str, np.ndarray]:
    """Expression parameters: prototype x intensity + jitter + the subject's resting face."""
    intensity = rng.uniform(*d.intensity_range, size=len(batch.emotion))
    intensity *= np.where(batch.age == "70+", d.elderly_intensity, 1.0)
    values = _EXPR_MATRIX[batch.emotion] * intensity[:, None]
    values += rng.normal(size=values.shape) * _EXPR_SCALE * d.expression_jitter
    expr = {name: values[:, i] for i, name in enumerate(_EXPR_PARAMS)}
    expr["curve"] = expr["curve"] + ids["resting_curve"]
    expr["brow_inner"] = expr["brow_inner"] + ids["resting_brow"]
    expr["open"] = np.maximum(expr["open"], 0.0)  # a mouth cannot open less than shut
    expr["lip_raise"] = np.maximum(expr["lip_raise"], 0.0)
    expr["wrinkle"] = np.clip(expr["wrinkle"], 0.0, 1.2)
    expr["eye_open"] = np.clip(expr["eye_open"], -0.7, 1.0)
    return expr


def _identity_array(identities: list[FaceIdentity], name: str) -> np.ndarray:
    return np.array([getattr(i, name) for i in identities], dtype=float)


def _sample_params(batch: _Batch, rng: np.random.Generator, d: FaceDifficulty, size: int) -> _FaceParams:
    """Draw pose, photometry, geometry and expression for every sample of a batch."""
    b = len(batch.emotion)
    ids = {f.name: _identity_array(batch.identity, f.name) for f in fields(FaceIdentity)}
    u = lambda lo, hi: rng.uniform(lo, hi, size=b)  # noqa: E731 - local shorthand

    child = np.isin(batch.age, ["0-3", "4-19"])
    baby = batch.age == "0-3"
    elderly = batch.age == "70+"
    male = batch.sex == "male"

    tone_base = np.array([SKIN_TONES[r].base for r in batch.race])
    tone_spread = np.array([SKIN_TONES[r].spread for r in batch.race])
    contrast = np.array([_contrast(SKIN_TONES[r], d) for r in batch.race])
    skin = tone_base + tone_spread * ids["skin"]

    ratio = np.where(male, 0.82, 0.76) + np.where(batch.race == "asian", 0.03, 0.0)
    ratio = np.where(child, 0.9, ratio) + np.where(baby, 0.04, 0.0)
    face_h = np.full(b, 0.86)
    face_w = face_h * ratio + ids["face_w"]

    expr = _expression(batch, ids, rng, d)

    feature_shift = np.where(child, 0.06, 0.0) + np.where(baby, 0.04, 0.0)  # big forehead
    occ_kind = np.where(rng.random(b) < d.occlusion_prob, np.where(rng.random(b) < 0.5, 1, 2), 0)
    hand_low = rng.random(b) < 0.6
    blur_scale = max(1, round(size / 48))

    return _FaceParams(
        angle=np.deg2rad(u(-d.rotation_deg, d.rotation_deg)),
        tx=u(-d.shift_frac, d.shift_frac),
        ty=u(-d.shift_frac, d.shift_frac),
        scale=1.0 + u(-d.scale_jitter, d.scale_jitter),
        background=u(20.0, 230.0),
        skin=skin,
        contrast=contrast * u(0.85, 1.15),
        light_gx=rng.normal(size=b) * d.lighting_strength / 1.4,
        light_gy=rng.normal(size=b) * d.lighting_strength / 1.4,
        exposure=u(*d.exposure_range),
        noise=d.noise_std * u(0.5, 1.5),
        blur_passes=np.where(rng.random(b) < d.blur_prob, rng.integers(1, 3, size=b), 0) * blur_scale,
        face_w=face_w,
        face_h=face_h,
        eye_x=0.30 * ratio / 0.8 + ids["eye_dx"],
        eye_y=-0.12 + feature_shift + ids["eye_dy"],
        eye_w=np.where(child, 0.15, 0.13),
        eye_h=np.where(child, 0.095, 0.08),
        brow_y=-0.30 + feature_shift + ids["brow_dy"],
        brow_t=np.where(male, 0.06, 0.05),
        mouth_y=0.45 + 0.5 * feature_shift + ids["mouth_dy"],
        mouth_w=np.where(child, 0.22, 0.27) + ids["mouth_dw"],
        hair=ids["hair"],
        hairline=ids["hairline"],
        age_lines=np.select([batch.age == "40-69", elderly], [0.35, 0.8], 0.0) * u(0.6, 1.2),
        age_folds=np.where(elderly, u(0.5, 1.0), 0.0),
        curve=expr["curve"], open=expr["open"], width=expr["width"], lip_raise=expr["lip_raise"],
        brow_raise=expr["brow_raise"], brow_inner=expr["brow_inner"], eye_open=1.0 + expr["eye_open"],
        wrinkle=expr["wrinkle"],
        occ_kind=occ_kind,
        occ_x=np.where(occ_kind == 2, u(-0.35, 0.35), u(-0.05, 0.05)),
        occ_y=np.where(occ_kind == 2, np.where(hand_low, u(0.3, 0.6), u(0.0, 0.3)), -0.12 + u(-0.04, 0.04)),
        occ_a=np.where(occ_kind == 2, u(0.22, 0.38), u(0.55, 0.7)),
        occ_b=np.where(occ_kind == 2, u(0.18, 0.3), u(0.07, 0.11)),
        occ_level=np.where(occ_kind == 2, skin * u(0.9, 1.15), u(10.0, 50.0)),
    )


# ---------------------------------------------------------------------------
# Rasteriser (vectorised soft shapes in face coordinates)
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Public rendering API
# ---------------------------------------------------------------------------


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


@dataclass
class SynthFaceSet:
    """A generated face dataset with everything the generator knows about each row."""

    faces: np.ndarray  # uint8 (N, size, size)
    labels: np.ndarray  # int64 indices into taxonomy.EMOTIONS
    subjects: np.ndarray  # object array of subject ids
    demographics: dict[str, np.ndarray]  # "sex", "age", "race" -> object arrays
    split: np.ndarray  # object array, "train" or "test"
    landmarks: np.ndarray | None = None  # float32 (N, 5, 2) pixel (x, y): eyes, nose tip, mouth corners

    def __len__(self) -> int:
        return len(self.labels)


def generate_faces(
    n: int,
    seed: int,
    size: int = 48,
    difficulty: FaceDifficulty | None = None,
    test_fraction: float = 0.2,
    population: Population | None = None,
) -> SynthFaceSet:
    """``n`` faces from ~n/25 subjects, rows shuffled, with a random train/test split.

    Labels, subjects, demographics and split depend only on ``seed``,
    ``test_fraction`` and ``population`` (not on ``size`` or ``difficulty``),
    so the FER2013 and RAF-DB writers describe the same population when given
    the same seed. ``landmarks`` (eyes, nose tip, mouth corners, pixel
    coordinates) follow each face's pose.
    """
    difficulty = difficulty or FaceDifficulty()
    data, subjects, owner = _generate_meta(n, seed, test_fraction, population, difficulty.identity_spread)
    batch = _Batch(data.labels, data.demographics["sex"], data.demographics["age"], data.demographics["race"],
                   [subjects[i].identity for i in owner])
    params = _sample_params(batch, np.random.default_rng([seed, 1]), difficulty, size)
    pixel_rng = np.random.default_rng([seed, 2])
    data.faces = np.empty((n, size, size), dtype=np.uint8)
    chunk = max(8, _CHUNK_PIXELS // (size * size))  # keeps the float32 work arrays cache-sized
    for start in range(0, n, chunk):
        rows = np.arange(start, min(n, start + chunk))
        data.faces[rows] = _render_batch(_take(params, rows), size, pixel_rng)
    data.landmarks = _landmarks(params, size)
    return data


_CHUNK_PIXELS = 300_000


def _take(p: _FaceParams, rows: np.ndarray) -> _FaceParams:
    """The parameters of a subset of rows."""
    return _FaceParams(**{f.name: getattr(p, f.name)[rows] for f in fields(_FaceParams)})


def _generate_meta(
    n: int, seed: int, test_fraction: float, population: Population | None, spread: float
) -> tuple[SynthFaceSet, list[SynthSubject], np.ndarray]:
    """Everything about a generated set except pixels (cheap: no rendering)."""
    population = population or Population()
    rng = np.random.default_rng([seed, 0])
    subjects = sample_subjects(n, rng, population, spread)
    owner = rng.permutation(np.repeat(np.arange(len(subjects)), [s.n_images for s in subjects]))
    labels = sample_emotions(n, rng, population)
    split = np.where(rng.random(n) < test_fraction, "test", "train").astype(object)
    demo = {a: np.array([subjects[i].demographics[a] for i in owner], dtype=object) for a in ("sex", "age", "race")}
    subject_ids = np.array([subjects[i].subject_id for i in owner], dtype=object)
    empty = np.empty((n, 0, 0), dtype=np.uint8)
    return SynthFaceSet(empty, labels, subject_ids, demo, split), subjects, owner


def _landmarks(p: _FaceParams, size: int) -> np.ndarray:
    """Eye centres, nose tip and mouth corners in pixel coordinates, (B, 5, 2)."""
    mw = np.maximum(p.mouth_w + p.width, 0.1)
    corner_y = p.mouth_y - p.curve
    u = np.stack([-p.eye_x, p.eye_x, np.zeros_like(p.eye_x), -mw, mw], axis=1)
    v = np.stack([p.eye_y, p.eye_y, np.full_like(p.eye_y, 0.22), corner_y, corner_y], axis=1)
    c, s, sc = np.cos(p.angle)[:, None], np.sin(p.angle)[:, None], p.scale[:, None]
    x = p.tx[:, None] + sc * (c * u - s * v)
    y = p.ty[:, None] + sc * (s * u + c * v)
    return np.stack([(x + 1.0) * size / 2.0, (y + 1.0) * size / 2.0], axis=-1).astype(np.float32)


# ---------------------------------------------------------------------------
# Writers in the published layouts
# ---------------------------------------------------------------------------

_FER_CODE = {name: code for code, name in FER2013_CODES.items()}
_RAF_CODE = {name: code for code, name in RAFDB_CODES.items()}
_RAF_GENDER = {"male": 0, "female": 1, "unsure": 2}
_RAF_RACE = {"caucasian": 0, "african_american": 1, "asian": 2}
_PIXEL_TEXT = [str(i) for i in range(256)]


def write_fer2013(out_dir: Path, n: int, seed: int, difficulty: FaceDifficulty | None = None) -> Path:
    """Write ``fer2013.csv`` (published layout) and the ``fer2013_demographics.csv`` sidecar.

    Usage: train rows -> Training; test rows alternate PublicTest/PrivateTest
    (so ~80/10/10). The sidecar (``row,subject,sex,age,race``, row = 0-based
    data row) is ours: real FER2013 has no demographics.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = generate_faces(n, seed, 48, difficulty)
    usage = _fer_usage(data.split)
    path = out_dir / "fer2013.csv"
    with open(path, "w", newline="") as f:
        f.write("emotion,pixels,Usage\n")
        for label, face, use in zip(data.labels, data.faces.reshape(n, -1), usage):
            pixels = " ".join([_PIXEL_TEXT[x] for x in face.tolist()])
            f.write(f"{_FER_CODE[EMOTIONS[label]]},{pixels},{use}\n")
    with open(out_dir / "fer2013_demographics.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["row", "subject", "sex", "age", "race"])
        for i in range(n):
            w.writerow([i, data.subjects[i], data.demographics["sex"][i], data.demographics["age"][i],
                        data.demographics["race"][i]])
    return path


def _fer_usage(split: np.ndarray) -> list[str]:
    """Training for train rows; test rows alternate PublicTest / PrivateTest."""
    out, k = [], 0
    for s in split:
        if s == "train":
            out.append("Training")
        else:
            out.append("PublicTest" if k % 2 == 0 else "PrivateTest")
            k += 1
    return out


@dataclass(frozen=True)
class RafdbRecord:
    """What the RAF-DB writer recorded for one image (row of the label file)."""

    name: str  # e.g. train_00001.jpg
    emotion: str
    sex: str  # male | female | unsure (as annotated)
    age: str
    race: str
    source_row: int  # row of generate_faces(n, seed, 100) it came from


def rafdb_records(n: int, seed: int, unsure_fraction: float = 0.03) -> list[RafdbRecord]:
    """The label-file rows ``write_rafdb(…, n, seed)`` writes, train first, in file order.

    Cheap (no rendering), so tests and reports can know what was written.
    A small fraction of images get gender "unsure" (code 2), as in RAF-DB.
    """
    data = _generate_meta(n, seed, 0.2, None, 1.0)[0]
    unsure = np.random.default_rng([seed, 10]).random(n) < unsure_fraction
    records: list[RafdbRecord] = []
    for part, digits in (("train", 5), ("test", 4)):
        rows = np.flatnonzero(data.split == part)
        for k, row in enumerate(rows, start=1):
            records.append(RafdbRecord(
                name=f"{part}_{k:0{digits}d}.jpg", emotion=EMOTIONS[data.labels[row]],
                sex="unsure" if unsure[row] else str(data.demographics["sex"][row]),
                age=str(data.demographics["age"][row]), race=str(data.demographics["race"][row]),
                source_row=int(row),
            ))
    return records


def write_rafdb(out_dir: Path, n: int, seed: int, difficulty: FaceDifficulty | None = None) -> Path:
    """Write RAF-DB basic: label list, 100x100 RGB aligned JPEGs, manual attribute files.

    Files are named and ordered as ``rafdb_records(n, seed)`` lists them.
    """
    out_dir = Path(out_dir)
    for sub in ("EmoLabel", "Image/aligned", "Annotation/manual"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    data = generate_faces(n, seed, 100, difficulty)
    records = rafdb_records(n, seed)
    lines = []
    for rec in records:
        stem = rec.name[:-4]
        gray = data.faces[rec.source_row]
        Image.fromarray(np.stack([gray] * 3, axis=-1)).save(
            out_dir / "Image/aligned" / f"{stem}_aligned.jpg", quality=92)
        attributes = _rafdb_attributes(rec, data.landmarks[rec.source_row])
        (out_dir / "Annotation/manual" / f"{stem}_manu_attri.txt").write_text(attributes)
        lines.append(f"{rec.name} {_RAF_CODE[rec.emotion]}\n")
    (out_dir / "EmoLabel/list_patition_label.txt").write_text("".join(lines))
    return out_dir


def _rafdb_attributes(rec: RafdbRecord, landmarks: np.ndarray) -> str:
    """Five landmark lines (eyes, nose tip, mouth corners), then gender, race and age codes."""
    body = "".join(f"{x:.2f}\t{y:.2f}\n" for x, y in landmarks)
    return body + f"{_RAF_GENDER[rec.sex]}\n{_RAF_RACE[rec.race]}\n{AGE_BANDS.index(rec.age)}\n"
