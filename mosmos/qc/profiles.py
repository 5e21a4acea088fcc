"""Reference profiles: what a normal segment of each organ looks like in the population a model was made for.

- ``adult``: real adult scans. Volume bounds from the reference organ masses of ICRP Publication 89 (Basic
  anatomical and physiological data for use in radiological protection: reference values, Ann ICRP 32(3-4),
  2002, table 2.8; adult male / female), at 1.05 g/mL: a volume is plausible from half the female reference to
  twice the male one. A range is a plausibility bound, not a diagnosis (an enlarged spleen is a finding, a
  40 mL liver is a failed segmentation). Organs whose size varies too much with age, filling or disease
  (pancreas, adrenal glands, bladder, bowel, vessels) get no volume bound.
- ``phantom``: the demo's generated phantoms (``mosmos.data.phantoms``), about a fifth of adult size.
  Bounds from the volumes of 40 phantoms (seeds 200..239, the demo's held-out grid, 96^3 at 2 mm;
  ``benchmarks/bench_qc.py --derive-profile`` measures them again), from 1/1.25 of the smallest to 1.25
  times the largest. The generator draws its organs mirrored against the RAS convention of NIfTI (its
  "right" organs lie at world -x, the patient's left in RAS), so this profile's right side is world -x.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import MosmosError

_DENSITY = 1.05  # g/mL, soft tissue
# ICRP 89 reference masses (g), adult male and female; the kidneys' are of the pair.
_ICRP_89_MASS = {"liver": (1800, 1400), "spleen": (150, 130), "kidney": (155, 137.5)}
_PHANTOM_VOLUMES = {  # mL: smallest and largest of seeds 200..239
    "spleen": (13.5, 54.4), "right kidney": (16.7, 45.7), "left kidney": (19.1, 50.2), "gallbladder": (3.2, 6.7),
    "esophagus": (2.1, 3.3), "liver": (252.0, 487.6), "stomach": (30.4, 105.0), "aorta": (18.9, 40.3),
    "inferior vena cava": (17.3, 28.7), "pancreas": (6.1, 18.5)}
_PHANTOM_MARGIN = 1.25

# Organs with one side, besides those whose name says it. Organs at or near the midline have none.
_SIDE = {"liver": "right", "gallbladder": "right", "spleen": "left", "stomach": "left"}
# Solid organs that are one piece in every healthy adult; tubes, bowel, lobes and bones are left out (at
# 3 mm a normal pancreas or small bowel falls apart into pieces).
COMPACT = frozenset({"liver", "spleen", "right kidney", "left kidney", "gallbladder", "heart", "urinary bladder"})


@dataclass(frozen=True)
class Profile:
    name: str
    volumes: dict = field(default_factory=dict)  # organ -> (low, high) mL
    right_sign: int = 1  # +1: the patient's right is world +x (RAS); -1: mirrored
    description: str = ""

    def volume_range(self, organ: str) -> tuple[float, float] | None:
        return self.volumes.get(organ)


def _adult_volumes() -> dict:
    out = {}
    for organ, (male, female) in _ICRP_89_MASS.items():
        bound = (0.5 * female / _DENSITY, 2.0 * male / _DENSITY)
        for name in ((f"right {organ}", f"left {organ}") if organ == "kidney" else (organ,)):
            out[name] = tuple(round(b, 1) for b in bound)
    return out


PROFILES = {
    "adult": Profile("adult", _adult_volumes(), 1, "real adult scans (ICRP 89 reference organ masses)"),
    "phantom": Profile("phantom", {o: (round(lo / _PHANTOM_MARGIN, 1), round(hi * _PHANTOM_MARGIN, 1))
                                   for o, (lo, hi) in _PHANTOM_VOLUMES.items()}, -1,
                       "the demo's generated phantoms (mosmos.data.phantoms)"),
}
# What a training dataset says that makes the phantom profile apply (phantoms.write_decathlon_dataset's name).
_PHANTOM_DATA = re.compile(r"phantom", re.IGNORECASE)


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise MosmosError(f"unknown QC profile {name!r} (choose {', '.join(PROFILES)})") from None


def profile_for_model(header: dict) -> Profile:
    """The profile a model file's training data calls for: its card's data name, folder or description naming
    phantoms -> ``phantom``; anything else -> ``adult``."""
    card = header.get("card") or {}
    data = card.get("data") or {}
    said = " ".join(str(x) for x in (data.get("name"), data.get("folder"), card.get("description")) if x)
    return PROFILES["phantom" if _PHANTOM_DATA.search(said) else "adult"]


def organ_side(organ: str) -> str | None:
    """'right', 'left' or None for an organ name (canonical tag or any cleaned name such as 'lung lower lobe
    left')."""
    words = organ.lower().replace("_", " ").split()
    if "right" in words and "left" not in words:
        return "right"
    if "left" in words and "right" not in words:
        return "left"
    return _SIDE.get(organ)
