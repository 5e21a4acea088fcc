"""Synthetic abdominal CT phantoms: 3D volumes with BTCV-numbered organ labels, Decathlon-layout
datasets of them, and ROCO-layout folders of 2D slices with reports that name the visible organs.

They stand in for real data in the tests, the demo and quick experiments, so they keep what matters
to the method: organs at their anatomical sides (RAS: +X is the patient's LEFT, +Y anterior,
+Z superior), CT-like HU with per-subject variation and noise, unlabelled distractors (bone, bowel,
lungs, fat), and reports whose organ words really match the pixels.

Anatomy is placed in body-relative coordinates (u, v across the abdominal cavity, w from the bottom
to the top of the volume) and sized in "body units" (the body's half-width), so the same seed gives
the same subject at any grid size or spacing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
from scipy import ndimage

from ..errors import MosmosError

# BTCV label values (the subset drawn here) and the canonical tag names of mosmos.tags.
BTCV_LABELS: dict[int, str] = {
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior vena cava",
    11: "pancreas",
}
_VALUE_OF = {name: value for value, name in BTCV_LABELS.items()}
# Later organs overwrite earlier ones where shapes touch (gallbladder in the liver's fossa,
# vessels through the liver and pancreas).
_PAINT_ORDER = ("liver", "gallbladder", "stomach", "spleen", "right kidney", "left kidney",
                "pancreas", "inferior vena cava", "aorta", "esophagus")
# Omitted at random in the 2D set (resected or out of a thin field of view); the liver never is,
# so most slices still have something to name.
_OMITTABLE = ("spleen", "gallbladder", "right kidney", "left kidney", "stomach", "pancreas",
              "esophagus")


class Phantom(NamedTuple):
    image: np.ndarray  # float32 HU, (X, Y, Z) voxel order
    label: np.ndarray  # uint8 BTCV values, same grid
    affine: np.ndarray  # 4x4 voxel -> RAS mm
    labels: dict  # {value: canonical tag} of the organs drawn in this case


def phantom_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Axis-aligned RAS affine with the volume centred on the origin."""
    affine = np.diag([float(s) for s in spacing] + [1.0])
    affine[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(shape, spacing)]
    return affine


def resolve_organs(organs) -> tuple[str, ...]:
    """Organ names (canonical tags) or BTCV values -> canonical names in paint order."""
    if organs is None:
        return _PAINT_ORDER
    names = set()
    for organ in organs:
        if isinstance(organ, (int, np.integer)):
            if int(organ) not in BTCV_LABELS:
                raise MosmosError(f"phantom organs: no organ with label value {organ} "
                                  f"(available: {sorted(BTCV_LABELS)})")
            names.add(BTCV_LABELS[int(organ)])
        else:
            name = str(organ).strip().lower()
            if name not in _VALUE_OF:
                raise MosmosError(f"phantom organs: unknown organ {organ!r} "
                                  f"(available: {', '.join(_PAINT_ORDER)})")
            names.add(name)
    return tuple(n for n in _PAINT_ORDER if n in names)


@dataclass
class _Grid:
    """World coordinates in body units of one volume, with body-relative placement helpers."""

    x: np.ndarray  # broadcastable (X,1,1)
    y: np.ndarray  # (1,Y,1)
    z: np.ndarray  # (1,1,Z)
    aspect: float  # body half-depth / half-width
    z_bottom: float
    z_length: float

    @property
    def shape(self) -> tuple:
        return (self.x.size, self.y.size, self.z.size)

    def box(self, low, high):
        """Index slices covering world box [low, high] and the coordinates inside it."""
        index = []
        for axis, lo, hi in zip((self.x.ravel(), self.y.ravel(), self.z.ravel()), low, high):
            i0, i1 = np.searchsorted(axis, lo), np.searchsorted(axis, hi, side="right")
            index.append(slice(int(i0), int(max(i0, i1))))
        sub = (self.x[index[0]], self.y[:, index[1]], self.z[:, :, index[2]])
        return tuple(index), sub


def _body_unit_mm(shape, spacing) -> float:
    """The body's nominal half-width (one "body unit") in mm."""
    return 0.45 * float(shape[0]) * float(spacing[0])


def _make_grid(shape, spacing) -> _Grid:
    extent = np.array(shape, float) * np.array(spacing, float)
    half_width = _body_unit_mm(shape, spacing)
    coords = [(np.arange(n) - (n - 1) / 2.0) * s / half_width for n, s in zip(shape, spacing)]
    return _Grid(
        x=coords[0].reshape(-1, 1, 1).astype(np.float32),
        y=coords[1].reshape(1, -1, 1).astype(np.float32),
        z=coords[2].reshape(1, 1, -1).astype(np.float32),
        aspect=0.34 * extent[1] / half_width,
        z_bottom=float(coords[2][0]),
        z_length=float(coords[2][-1] - coords[2][0]) or 1.0,
    )


def _smooth_field(rng, p, scale, n_waves=5):
    """A smooth random field in [-2, 2]: a few low-frequency cosines, resolution-free."""
    field = 0.0
    for _ in range(n_waves):
        direction = rng.normal(size=3)
        direction *= rng.uniform(1.2, 3.0) / (np.linalg.norm(direction) + 1e-9)
        phase = rng.uniform(0, 2 * math.pi)
        field = field + np.cos(sum(p_ * float(d / s) for d, p_, s in zip(direction, p, scale)) + phase)
    return np.clip(field / math.sqrt(n_waves / 2.0), -2.0, 2.0)


def _in_box(grid, center, half, fn):
    """Evaluate ``fn(x, y, z)`` only inside the world box center +- half; +inf elsewhere."""
    out = np.full(grid.shape, np.inf, np.float32)
    index, (x, y, z) = grid.box(np.asarray(center) - half, np.asarray(center) + half)
    if all(i.stop > i.start for i in index):
        out[index] = fn(x, y, z)
    return out


def _ellipsoid(grid, rng, center, radii, angle=0.0, wobble=0.12):
    """Normalised distance (<1 inside) of a randomly perturbed, in-plane rotated ellipsoid."""
    c, s = math.cos(angle), math.sin(angle)
    field_rng = np.random.default_rng(rng.integers(2**63))
    # The field is bounded by 2, so the shape lies within the radii grown by 1 + 2 * wobble.
    half = np.array([max(radii[0], radii[1])] * 2 + [radii[2]]) * (1 + 2 * wobble) + 1e-3

    def fn(x, y, z):
        dx, dy, dz = x - float(center[0]), y - float(center[1]), z - float(center[2])
        p = (c * dx + s * dy, -s * dx + c * dy, dz + 0 * dx)
        d = np.sqrt(sum((q / float(r)) ** 2 for q, r in zip(p, radii)))
        return d + wobble * _smooth_field(field_rng, p, radii)

    return _in_box(grid, center, half, fn)


def _tube(grid, points, radius, radii_scale=(1.0, 1.0)):
    """Normalised distance to a tube running through ``points`` (sorted by z) with elliptic section."""
    pts = np.asarray(points, float)
    z = grid.z.ravel()
    cx = np.interp(z, pts[:, 2], pts[:, 0]).reshape(1, 1, -1).astype(np.float32)
    cy = np.interp(z, pts[:, 2], pts[:, 1]).reshape(1, 1, -1).astype(np.float32)
    inside_z = ((z >= pts[0, 2]) & (z <= pts[-1, 2])).reshape(1, 1, -1)
    d = np.sqrt(((grid.x - cx) / float(radius * radii_scale[0])) ** 2
                + ((grid.y - cy) / float(radius * radii_scale[1])) ** 2)
    return np.where(inside_z, d, np.inf)


def _chain(grid, rng, points, radii, wobble=0.1):
    """Normalised distance to a perturbed chain of spheres along a curve (the elongated pancreas)."""
    points = np.asarray(points, float)
    field_rng = np.random.default_rng(rng.integers(2**63))
    low = points.min(0) - max(radii) * (1 + 2 * wobble)
    high = points.max(0) + max(radii) * (1 + 2 * wobble)

    def fn(x, y, z):
        d = np.full(np.broadcast_shapes(x.shape, y.shape, z.shape), np.inf, np.float32)
        for (px, py, pz), r in zip(points, radii):
            d = np.minimum(d, np.sqrt((x - float(px)) ** 2 + (y - float(py)) ** 2 + (z - float(pz)) ** 2) / float(r))
        return d + wobble * _smooth_field(field_rng, (x + 0 * d, y, z), (0.3,) * 3)

    return _in_box(grid, (low + high) / 2, (high - low) / 2, fn)


def _bezier(p0, p1, p2, n):
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


@dataclass
class _Subject:
    image: np.ndarray
    label: np.ndarray
    lesion: np.ndarray | None  # boolean mask of a hypodense liver lesion, labelled as liver
    contrast: bool
    organs: tuple


def _build(seed, shape, spacing, organs, omit_prob) -> _Subject:
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise MosmosError(f"phantom shape {shape}: need three sizes of at least 4 voxels")
    rng = np.random.default_rng(seed)
    g = _make_grid(shape, spacing)
    full = np.broadcast_shapes(g.x.shape, g.y.shape, g.z.shape)
    j = lambda scale=0.04: rng.normal(0.0, scale)  # noqa: E731  (anatomical jitter)
    size = lambda: rng.uniform(0.88, 1.12)  # noqa: E731

    contrast = bool(rng.random() < 0.6)
    hu = {  # per-subject mean HU: portal-venous phase vs non-contrast
        "liver": (105, 58), "spleen": (115, 48), "kidney cortex": (170, 40), "kidney medulla": (110, 33),
        "gallbladder": (12, 10), "pancreas": (95, 45), "aorta": (175, 42), "inferior vena cava": (130, 40),
        "esophagus": (50, 40), "stomach wall": (70, 40), "muscle": (55, 50),
    }
    hu = {k: v[0 if contrast else 1] + rng.normal(0, 6) for k, v in hu.items()}
    image = np.full(full, -1000.0, np.float32)
    label = np.zeros(full, np.uint8)

    body_a, body_b = 1.0 * size(), g.aspect * size()
    body = (g.x / body_a) ** 2 + (g.y / body_b) ** 2 + 0 * g.z
    fat_layer = rng.uniform(0.08, 0.18)
    cav_a, cav_b = body_a - fat_layer - 0.06, body_b - fat_layer - 0.06
    cavity = ((g.x / cav_a) ** 2 + (g.y / cav_b) ** 2 + 0 * g.z) < 1

    def at(u, v, w):
        """Anatomical placement, scaled to this subject's abdominal cavity (average 0.81 units wide)."""
        return np.array([u * cav_a / 0.81, v * cav_b / (g.aspect - 0.19) * g.aspect,
                         g.z_bottom + w * g.z_length])
    image[body < 1] = -100 + rng.normal(0, 10)
    wall = (((g.x / (body_a - fat_layer)) ** 2 + (g.y / (body_b - fat_layer)) ** 2 + 0 * g.z) < 1) & ~cavity
    image[wall] = hu["muscle"]
    image[cavity] = -90 + rng.normal(0, 10)

    # Lung bases behind and beside the liver dome; organs painted later cover them.
    for side in (-1, 1):
        lung = _ellipsoid(g, rng, at(side * 0.5, -0.15, 1.12 + j()), (0.5, 0.6, 0.45)) < 1
        image[lung & cavity] = -860

    # Unlabelled bowel loops in the lower abdomen, some with gas.
    for _ in range(rng.integers(4, 9)):
        c = at(rng.uniform(-0.55, 0.55), rng.uniform(-0.1, 0.6), rng.uniform(0.0, 0.45))
        loop = (_ellipsoid(g, rng, c, (rng.uniform(0.08, 0.16),) * 2 + (0.12,), wobble=0.2) < 1) & cavity
        image[loop] = rng.choice([-600.0, 20.0, 35.0])

    # Spine (the bright unlabelled distractor), spinal canal, paraspinal and psoas muscles.
    spine_c = at(0.0, -0.45 + j(0.02), 0.5)
    r_body = 0.14 * size()
    for side in (-1, 1):
        muscle = _ellipsoid(g, rng, (side * 0.17, spine_c[1] - 0.25, 0), (0.15, 0.13, 9.0)) < 1
        image[muscle & (body < 1)] = hu["muscle"]
        psoas_r = 0.04 + 0.1 * np.clip(1.0 - (g.z - g.z_bottom) / g.z_length * 1.6, 0, 1)
        psoas = np.sqrt((g.x - side * 0.2) ** 2 + (g.y - spine_c[1] + 0.02) ** 2) < psoas_r
        image[psoas & cavity] = hu["muscle"]
    vert = np.broadcast_to(np.sqrt((g.x - spine_c[0]) ** 2 + (g.y - spine_c[1]) ** 2), full)
    disc = np.broadcast_to(np.mod(g.z * 40.0 + rng.uniform(0, 10), 10.0) < 1.8, full)
    bone = vert < r_body
    image[bone] = 250.0
    image[bone & disc] = 85.0
    image[(vert >= r_body * 0.8) & bone & ~disc] = 720 + rng.normal(0, 40)
    canal_y = spine_c[1] - r_body * 1.55
    canal = np.broadcast_to(np.sqrt((g.x - spine_c[0]) ** 2 + (g.y - canal_y) ** 2) < 0.055, full)
    arch = np.broadcast_to(np.sqrt((g.x - spine_c[0]) ** 2 + (g.y - canal_y) ** 2) < 0.1, full)
    spinous = np.broadcast_to((np.abs(g.x - spine_c[0]) < 0.035) & (g.y < canal_y) & (g.y > canal_y - 0.22), full)
    posterior = (arch | spinous) & ~canal & ~bone & (body < 0.85)
    image[posterior] = 650
    image[canal] = 15
    bone |= posterior

    # Rib sections near the body wall, present in the upper half, interrupted along z.
    for k in range(12):
        ang = math.pi * (0.15 + 0.7 * k / 11) * (1 if k % 2 else -1) - math.pi / 2
        rx, ry = (body_a - fat_layer - 0.03) * math.cos(ang), (body_b - fat_layer - 0.03) * math.sin(ang)
        rib = (np.sqrt((g.x - rx) ** 2 + (g.y - ry) ** 2) < 0.045) \
            & (np.mod(g.z * 6 + k * 0.37, 1.0) < 0.4) & (g.z > g.z_bottom + 0.5 * g.z_length)
        image[rib] = 600
        bone |= rib

    chosen = resolve_organs(organs)
    aorta_c = at(0.1 + j(0.02), -0.2, 0.5)
    ivc_c = at(-0.16 + j(0.02), -0.16, 0.5)
    lumen_hu, gas_fraction, has_gas = rng.uniform(5, 25), rng.uniform(0.15, 0.4), rng.random() < 0.7
    has_lesion, lesion_radius, lesion_hu = rng.random() < 0.3, rng.uniform(0.06, 0.12), rng.uniform(0, 25)
    late_rng = np.random.default_rng(rng.integers(2**63))  # lesion position and noise

    def liver():
        right = _ellipsoid(g, rng, at(-0.42 + j(), 0.0 + j(), 0.72 + j()), (0.45 * size(), 0.5, 0.62 * size()),
                           angle=j(0.15))
        left = _ellipsoid(g, rng, at(0.08 + j(), 0.45 + j(), 0.82 + j()), (0.4 * size(), 0.22, 0.32))
        return np.minimum(right, left) < 1

    def gallbladder():
        return _ellipsoid(g, rng, at(-0.28 + j(), 0.42 + j(), 0.48 + j()), (0.1, 0.09, 0.2 * size()),
                          angle=0.5) < 1

    def stomach():
        return _ellipsoid(g, rng, at(0.35 + j(), 0.3 + j(), 0.74 + j()), (0.28 * size(), 0.22, 0.4 * size()),
                          angle=-0.5 + j(0.2), wobble=0.18) < 1

    def spleen():
        c = at(0.55 + j(), -0.4 + j(), 0.72 + j())
        radii = np.array([0.17, 0.3, 0.38]) * size()
        outer = _ellipsoid(g, rng, c, radii, angle=-0.6)
        # The hilum side is concave: cut a smaller ellipsoid out of the anteromedial face.
        inner = _ellipsoid(g, rng, c + np.array([-0.75, 0.4, 0]) * radii[0], radii * (0.55, 0.7, 0.8),
                           angle=-0.6, wobble=0.05)
        return (outer < 1) & (inner > 1)

    def kidney(side):
        """Normalised distance, so the cortex can be told from the medulla."""
        w = 0.34 if side < 0 else 0.4  # the left kidney usually sits a little higher
        return _ellipsoid(g, rng, at(side * 0.42 + j(), -0.42 + j(), w + j()),
                          (0.13 * size(), 0.19 * size(), 0.5 * size()), angle=side * 0.5 + j(0.1))

    def pancreas():
        head = at(-0.2 + j(), 0.02 + j(), 0.45 + j())
        body_ = at(0.05 + j(), 0.15 + j(), 0.5 + j())
        tail = at(0.48 + j(), -0.2 + j(), 0.58 + j())
        return _chain(g, rng, _bezier(head, body_, tail, 16), np.linspace(0.1, 0.055, 16) * size()) < 1

    def vessel(center, top_w, radius, sway, section=(1.0, 1.0)):
        zs = np.linspace(0.0, top_w, 6)
        pts = [center[:2] + rng.normal(0, sway, 2) for _ in zs]
        pts = [(p[0], p[1], g.z_bottom + w * g.z_length) for p, w in zip(pts, zs)]
        pts[0] = (pts[0][0], pts[0][1], -1e3)  # continues below the volume
        return _tube(g, pts, radius, section) < 1

    def esophagus():
        pts = [at(0.18, 0.05, 0.8), at(0.06, -0.08, 0.9), at(0.0, -0.12, 1.0)]
        pts.append((pts[-1][0], pts[-1][1], 1e3))  # continues above the volume
        return _tube(g, pts, 0.055 * size(), (1.2, 0.8)) < 1

    draw = {
        "liver": liver, "gallbladder": gallbladder, "stomach": stomach, "spleen": spleen,
        "right kidney": lambda: kidney(-1), "left kidney": lambda: kidney(1), "pancreas": pancreas,
        "inferior vena cava": lambda: vessel(ivc_c, 0.9, 0.075 * size(), 0.015, (1.25, 0.8)),
        "aorta": lambda: vessel(aorta_c, 1.0, 0.085 * size(), 0.01),
        "esophagus": esophagus,
    }
    masks: dict[str, np.ndarray] = {}
    for name in _PAINT_ORDER:
        omitted = name in _OMITTABLE and rng.random() < omit_prob
        # Every organ is drawn, kept or not, so a seed gives the same subject for any organ subset.
        shape_ = draw[name]()
        if omitted or name not in chosen:
            continue
        if name.endswith("kidney"):
            m = np.broadcast_to(shape_ < 1, full) & cavity & ~bone
            image[m] = hu["kidney medulla"]
            image[m & (shape_ > 0.72)] = hu["kidney cortex"]
        else:
            m = np.broadcast_to(shape_, full) & cavity & ~bone
            image[m] = hu["stomach wall" if name == "stomach" else name]
        masks[name] = m
        label[m] = _VALUE_OF[name]
        if name == "stomach":
            lumen = ndimage.binary_erosion(m, iterations=1)
            image[lumen] = lumen_hu
            ys = np.nonzero(lumen.any(axis=(0, 2)))[0]
            if len(ys) and has_gas:  # gas rises anteriorly in a supine patient
                level = ys[-1] - gas_fraction * (ys[-1] - ys[0])
                image[lumen & (np.arange(full[1]).reshape(1, -1, 1) > level)] = -900

    lesion = None
    if "liver" in masks and has_lesion:  # a cyst; BTCV labels liver lesions as liver
        idx = np.argwhere(ndimage.binary_erosion(masks["liver"], iterations=3))
        if len(idx):
            centre = idx[late_rng.integers(len(idx))]
            radius_vox = lesion_radius * _body_unit_mm(shape, spacing) / np.asarray(spacing, float)
            ii = np.ogrid[tuple(slice(0, n) for n in full)]
            lesion = (sum(((a - c) / r) ** 2 for a, c, r in zip(ii, centre, radius_vox)) < 1) & masks["liver"]
            image[lesion] = lesion_hu

    # Partial-volume blur, then scanner noise.
    sigma = [0.45 * min(spacing) / s for s in spacing]
    image = ndimage.gaussian_filter(image, sigma)
    image += late_rng.normal(0.0, late_rng.uniform(10, 20), full).astype(np.float32)
    present = tuple(n for n in _PAINT_ORDER if n in masks)
    return _Subject(image.astype(np.float32), label, lesion, contrast, present)


def make_phantom(seed, shape=(96, 96, 64), spacing=(1.5, 1.5, 2.0), organs=None, omit_prob=0.0) -> Phantom:
    """One synthetic abdominal CT: ``Phantom(image, label, affine, labels)``.

    ``seed`` is an int or a sequence of ints (same seed, same subject). ``organs`` restricts the drawn
    organs (canonical names or BTCV values; default all of BTCV_LABELS); ``omit_prob`` leaves out each
    organ but the liver, aorta and IVC with that probability. Label values are BTCV's whatever the subset.
    """
    s = _build(seed, shape, spacing, organs, omit_prob)
    labels = {_VALUE_OF[n]: n for n in sorted(s.organs, key=_VALUE_OF.get)}
    return Phantom(s.image, s.label, phantom_affine(shape, spacing), labels)


def write_decathlon_dataset(root, n_train, n_val, seed=0, shape=(96, 96, 64), spacing=(1.5, 1.5, 2.0),
                            organs=None) -> Path:
    """Write phantoms in the Medical Segmentation Decathlon layout; returns the dataset.json path.

    Images are int16 HU and labels uint8, both NIfTI with the RAS affine; validation cases live in
    imagesTr/labelsTr too and are listed under "validation", as in BTCV's dataset_0.json.
    """
    import nibabel as nib

    root = Path(root)
    names = resolve_organs(organs)
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    entries = {"training": [], "validation": []}
    for i in range(n_train + n_val):
        case = make_phantom([int(seed), i], shape, spacing, organs=names)
        name = f"phantom_{i:03d}.nii.gz"
        for sub, data in (("imagesTr", np.round(case.image).astype(np.int16)), ("labelsTr", case.label)):
            img = nib.Nifti1Image(data, case.affine)
            img.set_qform(case.affine, code=1)
            img.set_sform(case.affine, code=1)
            img.header.set_xyzt_units("mm")
            nib.save(img, str(root / sub / name))
        entries["training" if i < n_train else "validation"].append(
            {"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"})
    labels = {"0": "background"}
    labels.update({str(_VALUE_OF[n]): n for n in sorted(names, key=_VALUE_OF.get)})
    dataset = {
        "name": "MOSMOS phantoms",
        "description": "Synthetic abdominal CT phantoms with BTCV-numbered organ labels (mosmos.data.phantoms)",
        "reference": "generated", "licence": "CC0", "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": labels,
        "numTraining": n_train + n_val,
        "numTest": 0,
        "training": entries["training"],
        "validation": entries["validation"],
        "test": [],
    }
    path = root / "dataset.json"
    path.write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")
    return path


# ---- 2D slices with reports, in the ROCO layout ------------------------------------------------

_PHRASES = {
    "liver": ("the liver", "the hepatic parenchyma", "a normal liver", "the liver parenchyma"),
    "spleen": ("the spleen", "the splenic parenchyma", "a normal-sized spleen"),
    "right kidney": ("the right kidney", "right kidney"),
    "left kidney": ("the left kidney", "left kidney"),
    "kidneys": ("both kidneys", "bilateral kidneys", "the kidneys bilaterally"),
    "gallbladder": ("the gallbladder", "the gall bladder", "a distended gallbladder"),
    "esophagus": ("the distal esophagus", "the oesophagus", "the esophageal lumen"),
    "stomach": ("the stomach", "the gastric lumen"),
    "aorta": ("the abdominal aorta", "the aorta", "the aortic lumen"),
    "inferior vena cava": ("the IVC", "the inferior vena cava"),
    "pancreas": ("the pancreas", "the pancreatic parenchyma"),
}
_AXIAL = (
    "{Phase} axial CT of the {region} showing {organs}.",
    "Axial {phase} CT image demonstrating {organs}.",
    "CT abdomen, axial section, shows {organs}.",
    "Axial computed tomography at the level of {level} depicting {organs}.",
    "Transverse {phase} CT section of the {region}: {organs}.",
    "Axial CT scan of the {region} ({phase}) showing normal appearance of {organs}.",
)
_CORONAL = (
    "Coronal reformatted CT image showing {organs}.",
    "Coronal {phase} CT of the abdomen demonstrating {organs}.",
)
_EMPTY = (
    "Axial CT section through the {region}.",
    "Axial {phase} CT image of the {region} showing bowel loops.",
)
_LESION = (" with a small hypodense lesion (arrow)", " containing a hypodense cyst (arrow)")
# What a report names: every organ visible in the slice, or (as most ROCO captions do) only the organs a
# finding is in, which a model can only tell by looking at the organ (README, the pre-training study).
REPORT_STYLES = ("visible", "findings")
_FINDING_ORGANS = ("liver", "spleen", "right kidney", "left kidney", "stomach", "gallbladder", "pancreas")
_FINDINGS = ("hypodense lesion", "hyperdense lesion", "small mass", "cyst")


class PhantomSlice(NamedTuple):
    image: np.ndarray  # uint8 (H, W), radiological display: patient's right on the left, anterior up
    label: np.ndarray  # uint8 (H, W) BTCV values on the image's pixels (what the report's organs are)
    report: str
    organs: tuple  # canonical tags named in the report = organs visible in the slice
    plane: str  # "axial" or "coronal"
    volume: int  # which generated subject the slice comes from


def _join(items):
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _report(rng, organs, lesion, plane, contrast, w):
    phase = rng.choice(("contrast-enhanced", "portal venous phase") if contrast else ("non-contrast", "unenhanced"))
    region = "lung bases" if w > 0.9 else "upper abdomen" if w > 0.5 else rng.choice(("abdomen", "mid abdomen"))
    level = ("T11", "T12", "L1", "L2", "L3")[min(4, int((1 - w) * 5))]
    if not organs:
        return rng.choice(_EMPTY).format(region=region, phase=phase)
    names = list(organs)
    if "right kidney" in names and "left kidney" in names and rng.random() < 0.7:
        names = [n for n in names if not n.endswith("kidney")] + ["kidneys"]
    rng.shuffle(names)
    items = []
    for n in names:
        text = str(rng.choice(_PHRASES[n]))
        if n == "liver" and lesion:
            text += str(rng.choice(_LESION))
        items.append(text)
    templates = _CORONAL if plane == "coronal" else _AXIAL
    return str(rng.choice(templates)).format(
        organs=_join(items), phase=phase, Phase=phase[0].upper() + phase[1:], region=region, level=level)


def _with_findings(rng, item: "PhantomSlice") -> "PhantomSlice":
    """``item`` with a small blob of another grey level in 0-2 of its visible organs and a report naming only
    those organs (none: a report naming no organ)."""
    candidates = [o for o in item.organs if o in _FINDING_ORGANS]
    k = min(int(rng.choice((0, 1, 1, 2))), len(candidates))
    image = item.image.astype(np.float32)
    rows, cols = np.mgrid[:image.shape[0], :image.shape[1]]
    found = []
    for organ in (rng.choice(candidates, size=k, replace=False) if k else ()):
        mask = item.label == _VALUE_OF[organ]
        ys, xs = np.nonzero(mask)
        if len(ys) < 4:
            continue
        i, radius = rng.integers(len(ys)), rng.uniform(1.2, 2.2)
        blob = ((rows - ys[i]) ** 2 + (cols - xs[i]) ** 2 <= radius**2) & mask
        image[blob] += rng.choice((-1, 1)) * rng.uniform(50, 90)
        found.append(str(organ))
    plane = "Coronal" if item.plane == "coronal" else "Axial"
    report = (f"{plane} CT image showing a {rng.choice(_FINDINGS)} in the {_join(found)}." if found else
              f"{plane} CT section of the abdomen without focal abnormality.")
    return item._replace(image=np.clip(image, 0, 255).astype(np.uint8), report=report, organs=tuple(found))


def _window(hu, rng):
    """A soft-tissue display window around the one fine-tuning reads CT with (-175..250 HU), varied as
    published figures vary, so pre-training sees organs at the grey levels fine-tuning will."""
    from .transforms import DEFAULTS

    low, high = DEFAULTS["a_min"], DEFAULTS["a_max"]
    level = (low + high) / 2 + rng.uniform(-15, 15)
    width = (high - low) * rng.uniform(0.88, 1.12)
    return (np.clip((hu - level + width / 2) / width, 0, 1) * 255 + 0.5).astype(np.uint8)


def phantom_slices(n_pairs, seed=0, image_size=64, min_area=0.0025, coronal_fraction=0.15,
                   omit_prob=0.15, reports: str = "visible") -> list[PhantomSlice]:
    """``n_pairs`` 2D CT slices with reports naming exactly the organs visible in each (``reports="findings"``:
    naming only the organs given a finding, see _with_findings; the slices are otherwise the same).

    A few low-resolution 3D subjects are generated and sliced (mostly axially, at every level, so
    different organs show). An organ is visible when it covers at least ``min_area`` of the slice
    (and 6 pixels). Images are rendered at up to 128 pixels and resized to ``image_size``.
    """
    from PIL import Image

    if reports not in REPORT_STYLES:
        raise MosmosError(f"reports {reports!r}: use one of {', '.join(REPORT_STYLES)}")
    if n_pairs <= 0:
        return []
    rng = np.random.default_rng([int(seed), 2])
    findings_rng = np.random.default_rng([int(seed), 4])
    side = int(min(max(image_size, 16), 128))
    nz = max(16, side // 2)
    shape, spacing = (side, side, nz), (144.0 / side, 144.0 / side, 128.0 / nz)
    per_volume = int(nz * 0.8)
    out: list[PhantomSlice] = []
    volume = 0
    while len(out) < n_pairs:
        s = _build([int(seed), 1, volume], shape, spacing, None, omit_prob)
        picks = []
        for z in rng.choice(nz, size=per_volume, replace=False):
            if rng.random() < coronal_fraction:
                y = int(rng.uniform(0.3, 0.65) * side)
                picks.append(("coronal", (slice(None), y, slice(None)), 0.6))
            else:
                picks.append(("axial", (slice(None), slice(None), int(z)), z / (nz - 1)))
        for plane, index, w in picks:
            lab = s.label[index]
            threshold = max(6, min_area * lab.size)
            counts = np.bincount(lab.ravel(), minlength=max(BTCV_LABELS) + 1)
            visible = tuple(n for n in _PAINT_ORDER if counts[_VALUE_OF[n]] >= threshold)
            lesion = s.lesion is not None and "liver" in visible and s.lesion[index].sum() >= 4
            pixels = _window(s.image[index], rng)[:, ::-1].T  # rows: anterior (or superior) first
            img = Image.fromarray(np.ascontiguousarray(pixels))
            labels = Image.fromarray(np.ascontiguousarray(lab[:, ::-1].T))
            if img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.BILINEAR)
                labels = labels.resize((image_size, image_size), Image.NEAREST)
            item = PhantomSlice(np.asarray(img), np.asarray(labels),
                                _report(rng, visible, lesion, plane, s.contrast, w), visible, plane, volume)
            out.append(_with_findings(findings_rng, item) if reports == "findings" else item)
            if len(out) == n_pairs:
                break
        volume += 1
    return out


def _split_sizes(n, splits, fractions):
    if fractions is None:
        fractions = [1.0] if len(splits) == 1 else [0.8] + [0.2 / (len(splits) - 1)] * (len(splits) - 1)
    if len(fractions) != len(splits) or min(fractions) < 0 or sum(fractions) <= 0:
        raise MosmosError(f"split_fractions {fractions}: need one non-negative fraction per split {splits}")
    total = float(sum(fractions))
    sizes = [int(round(n * f / total)) for f in fractions]
    sizes[0] += n - sum(sizes)
    return sizes


def write_roco_folder(root, n_pairs, seed=0, image_size=64, splits=("train", "validation"),
                      split_fractions=None, image_format="jpg", reports: str = "visible") -> Path:
    """Write phantom slice/report pairs as ROCO ships them and return ``root``:
    ``<root>/data/<split>/radiology/{captions.txt, dlinks.txt, images/<PMCID>_<figure>}``.

    Each split gets its own subjects (no subject is shared between splits); each subject is one
    fake PMC article whose figures are its slices. ``split_fractions`` default: 80% train, the rest
    shared equally by the other splits. ``reports``: what the reports name (phantom_slices).
    """
    from PIL import Image

    if image_format not in ("jpg", "png"):
        raise MosmosError(f"image_format {image_format!r}: use 'jpg' or 'png'")
    root = Path(root)
    rng = np.random.default_rng([int(seed), 3])
    roco_id = 0
    for k, (split, n) in enumerate(zip(splits, _split_sizes(int(n_pairs), tuple(splits), split_fractions))):
        folder = root / "data" / split / "radiology"
        (folder / "images").mkdir(parents=True, exist_ok=True)
        pmc = {}
        captions, dlinks = [], []
        for fig, item in enumerate(phantom_slices(n, seed=int(seed) * 1000 + k, image_size=image_size,
                                                            reports=reports)):
            roco_id += 1
            pmc.setdefault(item.volume, int(rng.integers(1_000_000, 9_999_999)))
            pmcid = f"PMC{pmc[item.volume]}"
            figure = f"phantom-{pmc[item.volume]}-g{fig:03d}.{image_format}"
            rid = f"ROCO_{roco_id:05d}"
            h = f"{pmc[item.volume]:x}"[-4:]
            captions.append(f"{rid}\t {item.report}\n")
            dlinks.append(f"{rid}\twget -r ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/{h[:2]}/{h[2:]}/"
                          f"{pmcid}.tar.gz -P /path/to/Dir\t{figure}\n")
            path = folder / "images" / f"{pmcid}_{figure}"
            if image_format == "jpg":
                Image.fromarray(item.image).save(path, quality=92)
            else:
                Image.fromarray(item.image).save(path)
        (folder / "captions.txt").write_text("".join(captions), encoding="utf-8")
        (folder / "dlinks.txt").write_text("".join(dlinks), encoding="utf-8")
    return root
