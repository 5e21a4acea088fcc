"""Organ colours: TotalSegmentator's for the organs it knows, a stable hashed colour otherwise; and the title
an organ's attention overlay is shown with."""

from __future__ import annotations

import colorsys
import hashlib

from .names import name_key, normalize_tag
from .vocabulary import PRETRAIN_TAGS

# From TotalSegmentator's totalsegmentator_snomed_mapping.csv, column DicomRGBColor (Apache-2.0,
# wasserth/TotalSegmentator), so segments look as Slicer users know them from TotalSegmentator.
_TOTALSEG_COLORS: dict[str, tuple[int, int, int]] = {
    "spleen": (50, 170, 60), "right kidney": (34, 102, 136), "left kidney": (46, 138, 184),
    "gallbladder": (54, 216, 119), "esophagus": (190, 90, 170), "liver": (40, 140, 40),
    "stomach": (180, 70, 160), "aorta": (216, 108, 54), "inferior vena cava": (0, 70, 200),
    "portal vein and splenic vein": (0, 90, 220), "pancreas": (60, 150, 80),
    "right adrenal gland": (178, 128, 26), "left adrenal gland": (241, 172, 34),
    "myocardium": (200, 0, 20), "left atrium": (184, 0, 69), "left ventricle": (161, 0, 92),
    "right atrium": (136, 0, 51), "right ventricle": (119, 0, 68), "pulmonary artery": (180, 0, 0),
    # open-set organs that TotalSegmentator also colours
    "duodenum": (170, 80, 190), "urinary bladder": (54, 94, 216), "prostate": (91, 253, 156),
    "colon": (150, 40, 170), "small bowel": (160, 60, 180), "heart": (180, 0, 40), "trachea": (0, 180, 200),
    "brain": (216, 54, 149), "superior vena cava": (74, 144, 18), "pulmonary vein": (37, 107, 237),
    "spinal cord": (255, 215, 0), "thyroid gland": (250, 210, 60), "left atrial appendage": (68, 248, 62),
    "sternum": (215, 195, 165), "skull": (245, 225, 200), "coronary arteries": (200, 0, 0),
    "brachiocephalic trunk": (190, 10, 10),
}
# The organs outside the 20 that have a colour: the open-set names a typed-name check knows.
OPEN_SET_TAGS: tuple[str, ...] = tuple(n for n in _TOTALSEG_COLORS if n not in PRETRAIN_TAGS)
# TotalSegmentator has no ascending aorta class: a lighter shade of its aorta keeps the two apart.
ORGAN_COLORS: dict[str, tuple[int, int, int]] = {
    tag: _TOTALSEG_COLORS.get(tag, (240, 150, 90)) for tag in PRETRAIN_TAGS}


def color_for(name: str) -> tuple[int, int, int]:
    """RGB 0..255 for any organ name: known colours first, else a stable colour hashed from the name."""
    tag = normalize_tag(name)
    if tag:
        return ORGAN_COLORS[tag]
    key = name_key(name)
    if key in _TOTALSEG_COLORS:
        return _TOTALSEG_COLORS[key]
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    # Mid saturation and value so hashed colours stay visible on both CT greys and black.
    hue, sat, val = digest[0] / 255.0, 0.45 + 0.4 * digest[1] / 255.0, 0.6 + 0.35 * digest[2] / 255.0
    return _hsv_to_rgb255(hue, sat, val)


def _hsv_to_rgb255(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def attention_title(tag: str, labelled: bool = True) -> str:
    """What an attention overlay's values are, for its legend or panel title: for an organ the model labels,
    the probability that it wins among the labelled classes (losses.finetune.pta_probabilities); for an open-set
    organ, that it rather than background is there. Torch-free: the Slicer modules import it before PyTorch."""
    return f"P({tag} wins)" if labelled else f"P({tag} vs background)"
