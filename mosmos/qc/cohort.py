"""The cohort as its own reference: with at least ``MIN_CASES`` finished cases, each case's organ volumes and
positions against the cohort's robust distribution (median and MAD, so the outliers themselves do not widen
it). Position is the organ's centroid relative to the body's centre, per axis, in mm."""

from __future__ import annotations

import math

import numpy as np

MIN_CASES = 20
LIMIT = 4.0  # robust z beyond which a value is an outlier (about 1 in 15,000 of a normal distribution)
_AXES = ("right-left", "front-back", "head-foot")


def robust_z(values: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 MAD); NaN where the spread is zero."""
    values = np.asarray(values, float)
    med = np.nanmedian(values)
    mad = 1.4826 * np.nanmedian(np.abs(values - med))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (values - med) / mad if mad > 0 else np.full_like(values, np.nan)


def cohort_reasons(cases: dict[str, dict[str, dict]]) -> dict[str, dict[str, list[str]]]:
    """``cases``: case -> organ -> {"volume_ml", "offset_mm": (x, y, z) from the body's centre}. Returns
    case -> organ -> reasons, for the outliers only; nothing below ``MIN_CASES`` cases."""
    out: dict[str, dict[str, list[str]]] = {}
    if len(cases) < MIN_CASES:
        return out
    organs = sorted({o for per in cases.values() for o in per})
    names = list(cases)
    for organ in organs:
        vols = np.array([cases[c].get(organ, {}).get("volume_ml", math.nan) or math.nan for c in names], float)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = robust_z(np.log(vols))
        for c, zi, v in zip(names, z, vols):
            if np.isfinite(zi) and abs(zi) > LIMIT:
                out.setdefault(c, {}).setdefault(organ, []).append(
                    f"volume {v:.0f} mL is {'above' if zi > 0 else 'below'} the rest of the cohort "
                    f"(median {np.nanmedian(vols):.0f} mL, robust z {zi:+.1f})")
        offsets = np.array([cases[c].get(organ, {}).get("offset_mm") or (math.nan,) * 3 for c in names], float)
        for axis in range(3):
            z = robust_z(offsets[:, axis])
            for c, zi, v in zip(names, z, offsets[:, axis]):
                if np.isfinite(zi) and abs(zi) > LIMIT:
                    out.setdefault(c, {}).setdefault(organ, []).append(
                        f"lies {abs(v - np.nanmedian(offsets[:, axis])):.0f} mm away from where the cohort has it "
                        f"({_AXES[axis]}, robust z {zi:+.1f})")
    return out
