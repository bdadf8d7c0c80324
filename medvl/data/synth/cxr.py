"""The chest radiograph phantom: a frontal projection of attenuation line integrals.

The image is built in normalised coordinates ``u`` (column / width, 0 = image left =
the patient's right on a PA or AP view) and ``v`` (row / height, 0 = top). Values are
attenuation line integrals (dimensionless, about 0 for air outside the body, ~0.5
in aerated lung, ~1.5 through the heart, +0.2..0.4 where bone adds, >3 for metal),
so the DICOM writer can store them as raw detector values with a rescale and a
photometric interpretation, as real radiographs do.

Each finding is drawn by its own function with its own random stream, so the same
phantom can be rendered with and without any one finding and only that finding's
pixels change (the basis of the ground-truth tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medvl.data.synth.plan import FindingSpec
from medvl.data.synth.shapes import (
    dome,
    ellipse,
    ellipse_radius,
    polyline_distance,
    soft_inside,
    texture,
)

_FINDING_STREAM = {
    "cardiomegaly": 11, "pleural_effusion": 12, "pneumothorax": 13, "consolidation": 14,
    "nodule": 15, "atelectasis": 16, "edema": 17, "support_device": 18,
}


@dataclass(frozen=True)
class CXRAnatomy:
    """Patient-level body habitus, shared by all of a patient's radiographs."""

    cx: float  # midline (u)
    thorax_hw: float  # half-width of the rib cage (u)
    apex_v: float  # lung apices (v)
    dome_v: float  # right hemidiaphragm dome (v); the left sits a little lower
    ctr: float  # cardiothoracic ratio
    heart_cv: float  # heart centre (v)
    heart_hh: float  # heart half-height (v)
    mediastinum_hw: float
    rib_step: float
    body_density: float  # soft-tissue line integral through the body centre


def sample_anatomy(seed: int) -> CXRAnatomy:
    """Draw a plausible body habitus from ``seed``."""
    rng = np.random.default_rng(seed)
    apex = float(rng.uniform(0.11, 0.16))
    dome_v = float(rng.uniform(0.70, 0.76))
    return CXRAnatomy(
        cx=float(rng.uniform(0.49, 0.51)),
        thorax_hw=float(rng.uniform(0.36, 0.41)),
        apex_v=apex,
        dome_v=dome_v,
        ctr=float(rng.uniform(0.38, 0.45)),
        heart_cv=float(dome_v - rng.uniform(0.075, 0.095)),
        heart_hh=float(rng.uniform(0.145, 0.165)),
        mediastinum_hw=float(rng.uniform(0.05, 0.065)),
        rib_step=float((dome_v - apex) / rng.uniform(8.5, 9.5)),
        body_density=float(rng.uniform(1.5, 1.8)),
    )


@dataclass
class CXRRender:
    """A rendered radiograph: attenuation image and one boolean mask per drawn finding."""

    attenuation: np.ndarray  # (rows, cols) float32
    masks: dict[str, np.ndarray]


class _Canvas:
    """Grid, anatomy and the masks later findings need (lungs, heart)."""

    def __init__(self, anatomy: CXRAnatomy, size: int, spacing: float, view: str | None) -> None:
        self.a = anatomy
        self.size = size
        self.px = 1.0 / size  # one pixel in u/v units
        self.mm = 1.0 / (size * spacing)  # one millimetre in u/v units
        c = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.u, self.v = np.meshgrid(c, c)  # (rows, cols)
        self.view = view or "PA"
        a = anatomy
        # AP films magnify the heart (it is further from the detector).
        ctr = a.ctr + (0.03 if self.view == "AP" else 0.0)
        self.heart_hw = ctr * a.thorax_hw
        # Filled by _base_image; findings use them to stay inside the lungs.
        self.lung: dict[str, np.ndarray] = {}  # side -> soft lung mask (rows, cols)
        self.lung_depth: dict[str, np.ndarray] = {}  # side -> relative air thickness
        self.lung_ellipse: dict[str, tuple[float, float, float, float]] = {}  # cu, cv, au, av
        self.markings = np.zeros((size, size), dtype=np.float32)  # vessel texture

    def side_sign(self, side: str) -> float:
        # The patient's right is on the image left for frontal views.
        return -1.0 if side == "right" else 1.0

    def dome_v(self, side: str) -> float:
        return self.a.dome_v + (0.015 if side == "left" else 0.0)


def _base_image(cv: _Canvas, heart_hw: float, rng: np.random.Generator) -> np.ndarray:
    """Body, lungs, heart, mediastinum, diaphragm, spine, ribs, clavicles and lung markings."""
    a, u, v, px = cv.a, cv.u, cv.v, cv.px
    body_hw = a.thorax_hw + 0.07
    # Neck narrower than the chest at the top of the image.
    neck = np.clip((v - 0.02) / 0.10, 0.0, 1.0)
    hw = 0.11 + (body_hw - 0.11) * neck
    body = dome(np.abs(u - a.cx) / hw)
    img = a.body_density * body
    img += 0.25 * soft_inside(v - cv.dome_v("right") - 0.02, 0.04) * body  # abdomen thicker

    heart = ellipse(u, v, a.cx + 0.33 * heart_hw, a.heart_cv, heart_hw, a.heart_hh, 1.5 * px)
    heart_top = a.heart_cv - a.heart_hh * 0.8
    mediastinum = soft_inside(a.mediastinum_hw - np.abs(u - a.cx), 1.5 * px) * soft_inside(
        heart_top + 0.02 - v, 1.5 * px
    )
    central = np.maximum(heart, mediastinum)
    img += 0.25 * heart * dome(ellipse_radius(u, v, a.cx + 0.33 * heart_hw, a.heart_cv, heart_hw, a.heart_hh))

    for side in ("right", "left"):
        s = cv.side_sign(side)
        lcu = a.cx + s * 0.52 * a.thorax_hw
        lau = 0.47 * a.thorax_hw
        d_v = cv.dome_v(side)
        lcv = (a.apex_v + d_v) / 2 + 0.06
        lav = (d_v - a.apex_v) / 2 + 0.06
        r = ellipse_radius(u, v, lcu, lcv, lau, lav)
        # Diaphragm dome: highest mid-hemithorax, lowest at the costophrenic angle.
        dome_curve = d_v - 0.045 * np.clip(1.0 - ((u - lcu) / lau) ** 2, 0.0, 1.0)
        lung = soft_inside((1.0 - r) * lau, 1.5 * px) * soft_inside(dome_curve - v, 1.5 * px)
        lung = lung * (1.0 - central)
        depth = dome(r) ** 0.5 * lung
        cv.lung[side] = lung
        cv.lung_depth[side] = depth
        cv.lung_ellipse[side] = (lcu, lcv, lau, lav)
        img -= 1.05 * depth

    # Spine and vertebral bodies (row-periodic density), behind the mediastinum.
    spine = soft_inside(0.032 - np.abs(u - a.cx), 1.5 * px)
    img += spine * (0.14 + 0.04 * np.cos(2 * np.pi * v / (a.rib_step * 0.9)))

    du = np.abs(u - a.cx)
    lateral = soft_inside(du - 0.03, 2 * px) * soft_inside(a.thorax_hw + 0.015 - du, 2 * px)
    # Posterior ribs: ten curved bands, one pass: distance to the nearest rib centre line.
    curve = 0.17 * (du / a.thorax_hw) ** 1.8 - 0.035 * (du / a.thorax_hw)
    t = (v - (a.apex_v - 0.01) - curve) / a.rib_step
    k = np.clip(np.rint(t), 0, 9)
    ribs = soft_inside(0.013 / 2 - np.abs(t - k) * a.rib_step, 1.5 * px)
    img += 0.14 * ribs * lateral
    for s in (-1.0, 1.0):  # clavicles
        pts = np.array([[a.cx + s * 0.035, 0.15], [a.cx + s * 0.18, 0.115], [a.cx + s * 0.32, 0.10]])
        img += 0.30 * soft_inside(0.011 - polyline_distance(u, v, pts, reach=0.02), 1.5 * px)

    # Lung markings: vessel-like texture, denser near the hila.
    tex = np.clip(texture(rng, img.shape, sigma=max(1.0, 2.5 * cv.size / 512)), 0.0, None)
    hila = np.zeros_like(img)
    for s in (-1.0, 1.0):
        hila += np.exp(-(np.hypot(u - (a.cx + s * 0.11), v - 0.45) / 0.16))
    cv.markings = (0.07 * tex * (0.6 + hila)).astype(np.float32)
    lungs = cv.lung["right"] + cv.lung["left"]
    img += cv.markings * lungs
    return img.astype(np.float32)


def _finding_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _FINDING_STREAM[name]]))


def _sides(f: FindingSpec) -> tuple[str, ...]:
    return ("right", "left") if f.laterality == "bilateral" else (f.laterality or "right",)


def _zone_v(cv: _Canvas, side: str, zone: str | None) -> tuple[float, float]:
    top, bottom = cv.a.apex_v + 0.03, cv.dome_v(side) - 0.05
    third = (bottom - top) / 3
    k = {"upper": 0, "middle": 1, "lower": 2}.get(zone or "middle", 1)
    return top + k * third, top + (k + 1) * third


def _point_in_lung(cv: _Canvas, side: str, zone: str | None, rng: np.random.Generator, margin: float) -> tuple[float, float]:
    """A point well inside the given lung zone (falls back to the zone centre)."""
    v0, v1 = _zone_v(cv, side, zone)
    lung = cv.lung[side]
    for _ in range(30):
        pv = float(rng.uniform(v0, v1))
        lcu, _, lau, _ = cv.lung_ellipse[side]
        pu = float(lcu + rng.uniform(-0.55, 0.55) * lau)
        r, c = int(pv * cv.size), int(pu * cv.size)
        m = max(1, int(margin * cv.size))
        patch = lung[max(0, r - m): r + m + 1, max(0, c - m): c + m + 1]
        if patch.size and patch.min() > 0.99:
            return pu, pv
    lcu, _, _, _ = cv.lung_ellipse[side]
    return float(lcu), float((v0 + v1) / 2)


def _effusion(cv: _Canvas, f: FindingSpec, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros_like(img)
    for side in _sides(f):
        lcu, _, lau, _ = cv.lung_ellipse[side]
        s = cv.side_sign(side)
        level = cv.dome_v(side) - (0.05 + 0.17 * f.severity) + float(rng.uniform(-0.01, 0.01))
        # Meniscus: the fluid climbs the lateral chest wall.
        lat = np.clip((cv.u - lcu) * s / lau + 1.0, 0.0, 2.0) / 2.0
        meniscus = level - 0.07 * lat**2
        fluid = soft_inside(cv.v - meniscus, 2 * cv.px) * cv.lung[side]
        img += 1.0 * fluid * (0.35 + cv.lung_depth[side])
        mask = np.maximum(mask, fluid)
    return mask


def _pneumothorax(cv: _Canvas, f: FindingSpec, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    side = _sides(f)[0]
    lcu, lcv, lau, lav = cv.lung_ellipse[side]
    s = cv.side_sign(side)
    gap = 0.025 + 0.06 * f.severity
    # The lung edge retracts medially and downwards from the apex and lateral wall.
    r_in = ellipse_radius(cv.u, cv.v, lcu - s * gap * 0.6, lcv + gap * 0.7, lau - gap, lav - gap)
    upper = soft_inside(lcv + 0.12 - cv.v, 0.02)
    space = cv.lung[side] * soft_inside(r_in - 1.0, 1.5 * cv.px / lau) * upper
    img -= space * (cv.markings + 0.18)
    line = soft_inside(0.5 * 3 * cv.px - np.abs(r_in - 1.0) * lau, cv.px) * cv.lung[side] * upper
    img += 0.22 * line * (1.0 - space)
    return space


def _consolidation(cv: _Canvas, f: FindingSpec, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    side = _sides(f)[0]
    radius = 0.07 + 0.06 * f.severity
    pu, pv = _point_in_lung(cv, side, f.zone, rng, margin=0.02)
    blob = np.exp(-((np.hypot(cv.u - pu, (cv.v - pv) * 0.85) / radius) ** 2) * 1.2)
    patchy = np.clip(0.8 + 0.3 * texture(rng, img.shape, sigma=7.0 * cv.size / 512), 0.0, 1.0)
    dens = np.clip(blob * patchy * 1.6 - 0.25, 0.0, 1.0) * cv.lung[side]
    # Cut the faint fringe so the mask (dens > 0.5 after the soft edge) covers all drawn opacity.
    dens = np.where(dens > 0.12, np.clip((dens - 0.12) / 0.06, 0.0, 1.0) * dens, 0.0).astype(np.float32)
    img += (0.45 + 0.5 * f.severity) * dens * (0.4 + cv.lung_depth[side]) - cv.markings * dens * 0.5
    return (dens > 0).astype(np.float32)


def nodule_radius_mm(severity: float) -> float:
    """Radius of a radiograph nodule; 8..14 mm (2.9-5 pixels at 128x128) survives downsampling."""
    return 8.0 + 6.0 * severity


def _nodule(cv: _Canvas, f: FindingSpec, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    side = _sides(f)[0]
    r = nodule_radius_mm(f.severity) * cv.mm
    pu, pv = _point_in_lung(cv, side, f.zone, rng, margin=r * 1.3)
    # Only the nodule's neighbourhood is computed; the rest of the image is untouched.
    n = cv.size
    r0, r1 = max(0, int((pv - r) * n) - 2), min(n, int((pv + r) * n) + 3)
    c0, c1 = max(0, int((pu - r) * n) - 2), min(n, int((pu + r) * n) + 3)
    win = (slice(r0, r1), slice(c0, c1))
    rr = np.hypot(cv.u[win] - pu, cv.v[win] - pv) / r
    img[win] += (0.6 + 0.3 * f.severity) * np.sqrt(dome(rr))  # flat-topped: solid, not a faint haze
    mask = np.zeros_like(img)
    mask[win] = soft_inside((1.0 - rr) * r, cv.px) * cv.lung[side][win]
    return mask


def _atelectasis(cv: _Canvas, f: FindingSpec, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    side = _sides(f)[0]
    s = cv.side_sign(side)
    pu, pv = _point_in_lung(cv, side, f.zone, rng, margin=0.02)
    length = 0.10 + 0.08 * f.severity
    angle = np.deg2rad(rng.uniform(-20, 5))  # nearly horizontal plate, sloping down medially
    du, dv = np.cos(angle) * length / 2, np.sin(angle) * length / 2
    pts = np.array([[pu - s * du, pv - dv], [pu + s * du, pv + dv]])
    thick = (0.008 + 0.012 * f.severity) * (1 + 0.6 * np.clip((cv.u - pu) * s / length + 0.5, 0, 1))
    band = soft_inside(thick - polyline_distance(cv.u, cv.v, pts, reach=0.04), 1.5 * cv.px) * cv.lung[side]
    img += (0.5 + 0.4 * f.severity) * band * (0.4 + cv.lung_depth[side])
    return band


def _edema(cv: _Canvas, f: FindingSpec, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    a = cv.a
    haze = np.zeros_like(img)
    for side in ("right", "left"):
        s = cv.side_sign(side)
        d = np.hypot(cv.u - (a.cx + s * 0.12), (cv.v - 0.47) * 0.8)
        haze = np.maximum(haze, np.exp(-((d / (0.13 + 0.06 * f.severity)) ** 2)) * cv.lung[side])
    img += (0.45 + 0.45 * f.severity) * haze * (0.5 + 0.5 * texture(rng, img.shape, 6.0 * cv.size / 512).clip(-1, 1) * 0.3)
    return np.clip((haze - 0.35) / 0.3, 0.0, 1.0)


def _support_device(cv: _Canvas, f: FindingSpec, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    a = cv.a
    width = max(1.5, 3.0 * cv.size / 512) * cv.px
    paths = []
    if "ett" in f.devices:
        tip = float(rng.uniform(0.27, 0.33))
        paths.append(np.array([[a.cx + 0.005, 0.0], [a.cx, 0.12], [a.cx - 0.004, tip]]))
    if "ngt" in f.devices:
        paths.append(np.array([[a.cx + 0.012, 0.0], [a.cx + 0.008, 0.40], [a.cx + 0.03, cv.dome_v("left")],
                               [a.cx + 0.12, cv.dome_v("left") + 0.08], [a.cx + 0.16, cv.dome_v("left") + 0.06]]))
    if "cvc" in f.devices:
        paths.append(np.array([[a.cx - 0.30, 0.13], [a.cx - 0.14, 0.17], [a.cx - 0.035, 0.24], [a.cx - 0.03, 0.33]]))
    dist = np.full(img.shape, np.inf, dtype=np.float32)
    for p in paths:
        dist = np.minimum(dist, polyline_distance(cv.u, cv.v, p, reach=4 * width))
    tubes = soft_inside(width / 2 - dist, cv.px)
    mask = tubes
    if "ecg" in f.devices:
        ring = np.zeros_like(img)
        for pu, pv in ((a.cx - 0.22, 0.30), (a.cx + 0.24, 0.30), (a.cx + 0.26, 0.62)):
            d = np.abs(np.hypot(cv.u - pu, cv.v - pv) - 0.018)
            ring = np.maximum(ring, soft_inside(width / 2 - d, cv.px))
        mask = np.maximum(mask, ring)
    img += 2.2 * mask
    return mask


_DRAW = {
    "pleural_effusion": _effusion, "pneumothorax": _pneumothorax, "consolidation": _consolidation,
    "nodule": _nodule, "atelectasis": _atelectasis, "edema": _edema, "support_device": _support_device,
}


def render_cxr(
    anatomy: CXRAnatomy,
    findings: list[FindingSpec],
    *,
    size: int,
    spacing: float,
    seed: int,
    view: str | None = "PA",
) -> CXRRender:
    """Render a frontal chest radiograph phantom.

    Args:
        anatomy: the patient's habitus (:func:`sample_anatomy`).
        findings: what to draw; hedged findings are drawn at their (low) severity.
        size: rows and columns.
        spacing: pixel spacing in mm (sets nodule size in pixels).
        seed: study seed; lung texture, noise and each finding's placement derive from it.
        view: ``PA`` or ``AP`` (AP magnifies the heart slightly).

    Returns:
        The attenuation image (float32, line integrals) and a boolean mask per finding.
    """
    cv = _Canvas(anatomy, size, spacing, view)
    heart_hw = cv.heart_hw
    cardio = next((f for f in findings if f.name == "cardiomegaly"), None)
    if cardio is not None:
        heart_hw = (0.56 + 0.10 * cardio.severity + (0.03 if cv.view == "AP" else 0.0)) * anatomy.thorax_hw
    base_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
    img = _base_image(cv, heart_hw, base_rng)
    masks: dict[str, np.ndarray] = {}
    if cardio is not None:
        # The enlarged silhouette is the finding; its mask is the heart shadow.
        masks["cardiomegaly"] = ellipse(
            cv.u, cv.v, anatomy.cx + 0.33 * heart_hw, anatomy.heart_cv, heart_hw, anatomy.heart_hh, cv.px
        ) > 0.5
    for f in sorted(findings, key=lambda f: list(_FINDING_STREAM).index(f.name)):
        if f.name == "cardiomegaly":
            continue
        soft = _DRAW[f.name](cv, f, img, _finding_rng(seed, f.name))
        masks[f.name] = soft > 0.5
    noise_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2]))
    img += 0.012 * texture(noise_rng, img.shape, sigma=0.0)  # quantum noise (white)
    np.clip(img, 0.0, 4.0, out=img)
    return CXRRender(img.astype(np.float32), masks)

