"""The chest CT phantom: a volume in Hounsfield units on a RAS+ voxel grid.

World coordinates are millimetres with the origin at the centre of the field of view,
``x`` towards the patient's Right, ``y`` Anterior, ``z`` Superior (RAS+, as in NIfTI).
The array is indexed ``[i, j, k]`` along x, y, z, and the affine maps indices to world
coordinates, so the same array can be written as NIfTI directly or as an axial DICOM
series (LPS) by the writer.

Lobes are cut by an oblique (major) fissure on both sides and a horizontal (minor)
fissure on the right, so a finding placed "in the RLL" lies where a reader of the
volume would find the right lower lobe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medvl.data.synth.plan import FindingSpec
from medvl.data.synth.shapes import smooth_noise

_STREAM = {"nodule": 21, "consolidation": 22, "pleural_effusion": 23, "pneumothorax": 24, "atelectasis": 25}
LOBE_CODES = {"RUL": 1, "RML": 2, "RLL": 3, "LUL": 4, "LLL": 5}


@dataclass(frozen=True)
class CTAnatomy:
    """Patient-level body habitus for CT (millimetres)."""

    body_ax: float
    body_ay: float
    lung_ax: float
    lung_ay: float
    lung_cx: float  # |x| of each lung centre
    base_z: float  # diaphragm level relative to the FOV centre
    apex_z: float
    heart_r: float


def sample_ct_anatomy(seed: int) -> CTAnatomy:
    """Draw a CT body habitus from ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7]))
    return CTAnatomy(
        body_ax=float(rng.uniform(145, 165)),
        body_ay=float(rng.uniform(100, 118)),
        lung_ax=float(rng.uniform(50, 58)),
        lung_ay=float(rng.uniform(72, 82)),
        lung_cx=float(rng.uniform(72, 80)),
        base_z=float(rng.uniform(-95, -80)),
        apex_z=float(rng.uniform(85, 100)),
        heart_r=float(rng.uniform(45, 52)),
    )


def sample_ct_grid(seed: int, shape: tuple[int, int, int]) -> np.ndarray:
    """A RAS+ affine with varied spacing for a grid of ``shape`` (field of view ~34-40 cm x ~22-30 cm)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 8]))
    sxy = float(rng.uniform(340, 400)) / shape[0]
    sy = sxy * shape[0] / shape[1]
    sz = float(rng.choice([250.0, 280.0, 300.0])) / shape[2]
    affine = np.diag([sxy, sy, sz, 1.0])
    affine[:3, 3] = [-(shape[0] - 1) * sxy / 2, -(shape[1] - 1) * sy / 2, -(shape[2] - 1) * sz / 2]
    return np.round(affine, 4)


def nodule_radius_mm(severity: float) -> float:
    """Radius of a CT nodule (5..14 mm)."""
    return 5.0 + 9.0 * severity


@dataclass
class CTRender:
    """A rendered CT volume (HU, float32, ``(x, y, z)``), its affine, lobe map and finding masks."""

    hu: np.ndarray
    affine: np.ndarray
    lobes: np.ndarray  # uint8 codes LOBE_CODES, 0 outside lungs
    masks: dict[str, np.ndarray]


def _world(affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    axes = [affine[d, d] * np.arange(shape[d], dtype=np.float32) + affine[d, 3] for d in range(3)]
    return np.meshgrid(*[a.astype(np.float32) for a in axes], indexing="ij")


def _lobe_map(an: CTAnatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray, lung_r: np.ndarray, lung_l: np.ndarray) -> np.ndarray:
    # Oblique fissure: from posterior-superior to anterior-inferior; below/behind it is the lower lobe.
    y_post, y_ant = -an.lung_ay, an.lung_ay
    z_post = an.apex_z - 0.35 * (an.apex_z - an.base_z)
    z_line = z_post + (y - y_post) / (y_ant - y_post) * (an.base_z + 10 - z_post)
    lower = z < z_line
    z_minor = an.base_z + 0.45 * (an.apex_z - an.base_z)
    lobes = np.zeros(x.shape, dtype=np.uint8)
    lobes[lung_r & lower] = LOBE_CODES["RLL"]
    lobes[lung_r & ~lower & (z < z_minor)] = LOBE_CODES["RML"]
    lobes[lung_r & ~lower & (z >= z_minor)] = LOBE_CODES["RUL"]
    lobes[lung_l & lower] = LOBE_CODES["LLL"]
    lobes[lung_l & ~lower] = LOBE_CODES["LUL"]
    return lobes


def _pick_voxel(rng: np.random.Generator, region: np.ndarray) -> tuple[int, int, int]:
    """A random voxel of ``region``, preferring its interior (eroded) when that is not empty."""
    from scipy.ndimage import binary_erosion

    inner = binary_erosion(region, iterations=3)
    pick = inner if inner.any() else region
    idx = np.flatnonzero(pick)
    flat = int(idx[int(rng.integers(len(idx)))])
    i, j, k = np.unravel_index(flat, region.shape)
    return int(i), int(j), int(k)


def render_ct(
    anatomy: CTAnatomy, findings: list[FindingSpec], *, shape: tuple[int, int, int], affine: np.ndarray, seed: int
) -> CTRender:
    """Render a chest CT phantom in HU.

    Args:
        anatomy: patient habitus (:func:`sample_ct_anatomy`).
        findings: CT findings (nodule, consolidation, atelectasis in a lobe given as
            ``zone``; pleural_effusion, pneumothorax by laterality).
        shape: grid ``(x, y, z)``.
        affine: RAS+ voxel-to-world matrix (diagonal; from :func:`sample_ct_grid`).
        seed: study seed for texture, noise and finding placement.
    """
    an = anatomy
    x, y, z = _world(affine, shape)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
    hu = np.full(shape, -1000.0, dtype=np.float32)
    r_body = np.sqrt((x / an.body_ax) ** 2 + ((y + 5) / an.body_ay) ** 2)
    hu[r_body < 1.0] = -100.0  # subcutaneous fat
    hu[r_body < 0.92] = 40.0  # muscle and soft tissue
    ribs = (np.abs(r_body - 0.86) < 0.035) & (np.sin(2 * np.pi * z / 24.0) > 0.2)
    hu[ribs] = 550.0
    spine = np.hypot(x, y + 65) < 17
    hu[spine] = 300.0
    hu[np.hypot(x, y + 65) < 11] = 180.0

    heart = ((x + 22) / (an.heart_r * 1.1)) ** 2 + ((y - 30) / an.heart_r) ** 2 + ((z - an.base_z - 45) / (an.heart_r * 1.1)) ** 2 < 1
    lungs = {}
    for side, sx in (("right", 1.0), ("left", -1.0)):
        cx = sx * an.lung_cx
        base = an.base_z + (8 if side == "right" else 0)  # right hemidiaphragm sits higher
        taper = np.sqrt(np.clip((an.apex_z - z) / 45.0, 0.0, 1.0))
        rr = np.sqrt(((x - cx) / (an.lung_ax * taper + 1e-3)) ** 2 + ((y + 5) / (an.lung_ay * taper + 1e-3)) ** 2)
        dome_z = base + 22 * np.clip(1 - rr**2, 0, 1)
        lungs[side] = (rr < 1.0) & (z > dome_z) & (z < an.apex_z) & ~heart
    hu[heart] = 40.0
    lung_all = lungs["right"] | lungs["left"]
    vessels = np.clip(smooth_noise(rng, shape, sigma=1.2), 0, None)
    hu[lung_all] = -860.0 + 110.0 * vessels[lung_all]
    lobes = _lobe_map(an, x, y, z, lungs["right"], lungs["left"])

    masks: dict[str, np.ndarray] = {}
    for f in sorted(findings, key=lambda f: _STREAM[f.name]):
        frng = np.random.default_rng(np.random.SeedSequence([int(seed), _STREAM[f.name]]))
        if f.name in ("pleural_effusion", "pneumothorax"):
            sides = ("right", "left") if f.laterality == "bilateral" else (f.laterality or "right",)
            mask = np.zeros(shape, dtype=bool)
            for side in sides:
                lung = lungs[side]
                depth = (0.25 + 0.45 * f.severity) * 2 * an.lung_ay
                if f.name == "pleural_effusion":
                    # Fluid layers in the dependent (posterior) pleural space, deeper at the base.
                    grad = np.clip((an.apex_z - z) / (an.apex_z - an.base_z), 0, 1)
                    region = lung & (y + 5 < -an.lung_ay + depth * grad)
                    hu[region] = 12.0 + frng.normal(0, 4, int(region.sum())).astype(np.float32)
                else:
                    # Air collects anteriorly (non-dependent) with no lung markings.
                    region = lung & (y + 5 > an.lung_ay - depth * 0.6)
                    hu[region] = -995.0
                mask |= region
            masks[f.name] = mask
            continue
        lobe = lobes == LOBE_CODES.get(f.zone or "", 0)
        if not lobe.any():
            continue
        i, j, k = _pick_voxel(frng, lobe)
        px, py, pz = x[i, j, k], y[i, j, k], z[i, j, k]
        d = np.sqrt((x - px) ** 2 + (y - py) ** 2 + (z - pz) ** 2)
        if f.name == "nodule":
            radius = nodule_radius_mm(f.severity)
            region = (d < radius) & lung_all
            hu[region] = 35.0 - 60.0 * (d[region] / radius) ** 4
        elif f.name == "consolidation":
            radius = 22.0 + 25.0 * f.severity
            patchy = smooth_noise(frng, shape, sigma=2.0)
            region = lobe & (d < radius * (1 + 0.25 * patchy))
            hu[region] = 25.0 + 15.0 * patchy[region]
            # Air bronchograms: thin aerated branches kept dark inside the opacity.
            hu[region & (np.abs(patchy) < 0.08)] = -700.0
        else:  # atelectasis: a band of collapsed lung along a plane through the lobe
            n = frng.normal(size=3)
            n /= np.linalg.norm(n)
            dist = np.abs((x - px) * n[0] + (y - py) * n[1] + (z - pz) * n[2])
            region = lobe & (dist < 4.0 + 6.0 * f.severity) & (d < 45)
            hu[region] = 30.0
        masks[f.name] = region
    hu += np.random.default_rng(np.random.SeedSequence([int(seed), 2])).normal(0, 12, shape).astype(np.float32)
    np.clip(hu, -1024.0, 3071.0, out=hu)  # the range a 12-bit scanner with intercept -1024 can store
    return CTRender(hu, affine, lobes, masks)
