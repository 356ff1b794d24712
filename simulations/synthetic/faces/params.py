"""What each synthetic face looks like, as numbers: difficulty knobs, skin tones, expression directions and
the per-sample parameters (pose, geometry, expression, lighting, occlusion) drawn for a batch of faces."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from shared_models.taxonomy import EMOTIONS
from simulations.synthetic.faces.population import FaceIdentity

@dataclass(frozen=True)
class FaceDifficulty:
    """How hard the synthetic faces are. Defaults are calibrated (docs/synthetic_data.md).

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


def _take(p: _FaceParams, rows: np.ndarray) -> _FaceParams:
    """The parameters of a subset of rows."""
    return _FaceParams(**{f.name: getattr(p, f.name)[rows] for f in fields(_FaceParams)})
