"""Organ tags: the 20 pre-training tags, report text -> tags, typed/dataset names -> tags, colours.

Report text is matched with regular expressions after normalisation. The labelling conventions these
rules implement (and that Testing/Data/roco_tags_sample.tsv was labelled with) are:

- A tag means "this organ is named in the caption", negated or not: a negated finding ("no liver
  lesion") still shows the organ, and captions rarely negate, so negation is not handled.
- Adjectives and organ-named vessels count for the organ (hepatic artery -> liver, renal vein ->
  kidney), except the splenic vein, which belongs to "portal vein and splenic vein".
- A kidney, adrenal, atrium or ventricle mentioned without a side means both sides, unless the same
  caption names a side for that organ elsewhere ("renal cell carcinoma of the left kidney").
- "ascending aorta" (and the aortic root/valve/sinuses) also implies "aorta".
- Routes, phases and look-alikes are not organs: transesophageal, transhepatic, portal venous phase,
  nasogastric tube, hepatic/splenic flexure, infrarenal aorta, brain ventricles.
- Bare "ventricular" counts for the heart only in a cardiac context; LV/RV/LA/RA only there too.
"""

from __future__ import annotations

import colorsys
import difflib
import hashlib
import re
import unicodedata

import numpy as np

PRETRAIN_TAGS: tuple[str, ...] = (
    "spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
    "inferior vena cava", "portal vein and splenic vein", "pancreas", "right adrenal gland",
    "left adrenal gland", "myocardium", "left atrium", "left ventricle", "right atrium",
    "right ventricle", "ascending aorta", "pulmonary artery",
)

# ---------------------------------------------------------------------------------------------
# Report text -> tags

def _normalize_text(text: str) -> str:
    """Accents off (French/German captions), dash variants to '-', so patterns stay ASCII."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    return re.sub(r"[\u2010-\u2015\u2212]", "-", text)


# Phrases that contain an organ word but do not show the organ. They are blanked with a separator
# so that a side word before them cannot reach an organ word after them.
_MASKS = re.compile("|".join([
    r"\btrans-?o?esophag\w*", r"\bmid-?o?esophageal\s+(?:level|view)", r"\w*esophagogastroduodenoscop\w*",
    r"\btrans-?hepatic\w*", r"\bhepatic\s+flexure", r"\bsplenic\s+flexure",
    r"\bporto-?venous\s+phase", r"\bportal[\s-]+(?:venous\s+)?phase", r"\bnephrographic\s+phase",
    r"\b(?:naso|oro)-?gastric", r"\bgastro-?duodenal\s+arter\w*", r"\bgastro-?intestinal\b",
    r"\b(?:infra|juxta)-?renal\b", r"\bsupra-?renal(?=\s+(?:abdominal\s+)?aort)",
    r"\bsuperior\s+(?:vena\s+)?cava\w*", r"\bsuperior\s+caval\b",
    # brain ventricles, including sided ones ("right lateral ventricle")
    r"\b(?:lateral|third|3rd|fourth|4th|cerebral|brain)\s+ventricl\w*",
    r"\batri(?:um|a)\s+of\s+the\s+(?:\w+\s+)?lateral\s+ventricl\w*",
    r"\w*ventriculomegal\w*", r"\bperi-?ventricul\w*", r"\bventriculo-?(?:peritoneal|atrial|stom)\w*",
    r"\bintra-?ventricul\w*\s+(?:hemorrhag|haemorrhag|bleed)\w*",
    r"\b(?:hemorrhag|haemorrhag|hemorragie)\w*\s+intra-?ventricul\w*",
]), re.I)

# Unpaired organs: one pattern each, matched on the masked lower-case text.
_SINGLE = {
    "spleen": r"\bspleens?\b|\bsplenic\b(?!\s+veins?)|\w*splenomegal\w*|\bsplenosis\b",
    "gallbladder": r"\bgall[\s-]?bladders?\b|\bcholecyst(?!ectom)\w*|\bgall[\s-]?stones?\b|\bcholelithiasis\b",
    "esophagus": r"\w*o?esophag\w*|\boeso\w*",
    "liver": r"\blivers?\b|\b(?:intra|peri|sub)?-?hepat\w*|\bhcc\b",
    "stomach": (r"\bstomachs?\b|\bgastric\b|\bgastr(?:itis|ostom\w*|oparesis|ojejunostom\w*|o-?o?esophag\w*"
                r"|o-?duodenal)\b|\w*esophagogastr\w*"),
    "aorta": r"\w*aort\w*",
    "inferior vena cava": r"\binferior\s+(?:vena\s+)?cava\w*|\bvena\s+cavae?\b|\bivc\b|\bpost-?cava\b",
    "portal vein and splenic vein": (r"\bportal\s+vein\w*|\bportal\s+venous\b|\bsplenic\s+veins?\b"
                                     r"|\bspleno-?portal\w*|\bporto-?splenic\w*|\bporto-?mesenteric\w*"),
    "pancreas": r"\b(?:peri)?pancrea\w*",
    "myocardium": r"\w*myocard\w*|\bcardiomyopath\w*|\bsubendocardial\b",
    "ascending aorta": (r"\bascending\s+(?:thoracic\s+)?aort\w*"
                        r"|\baortic\s+(?:root|valve\w*|annulus|sinus\w*|cusp\w*)"
                        r"|\bsinus(?:es)?\s+of\s+valsalva\b|\bsino-?tubular\b"),
    "pulmonary artery": (r"\bpulmonary\s+(?:arter(?:y|ies|ial)|trunk|embol\w*|angiogra\w*)\b|\bctpa\b"
                         r"|\bmain\s+pa\b"),
}
_SINGLE_RE = {tag: re.compile(p) for tag, p in _SINGLE.items()}
# Aortic abbreviations, matched in capitals only: lower-case look-alikes are ordinary words.
_SINGLE_CASED = {"aorta": re.compile(r"\b(?:AAA|EVAR|TEVAR)\b")}

# Paired organs: the organ word, and words that always mean both sides.
_PAIRED = {
    "kidney": (r"\bkidneys?\b|\brenal\b|\b(?:peri|para|retro)-?renal\b|\w*nephr(?!ectom|ograph)\w*",
               r"\bhorseshoe\s+kidney"),
    "adrenal gland": (r"\badrenals?(?:\s+glands?)?\b|\bsupra-?renal\b", r"(?!)"),  # (?!) never matches
    "atrium": (r"\batri(?:um|a|al)\b|\batrial\s+appendage\b", r"\b(?:bi|inter)-?atrial\b"),
    "ventricle": (r"\bventricl\w*|\bventricular\b|\bventriculo?gra\w*",
                  r"\b(?:bi|inter)-?ventricular\b|\bventricular\s+septal\s+defect"),
}
# Function words may not sit between a side and its organ: "left lung and kidney" is not the left kidney.
_GAP = r"(?:[\s-]+(?!(?:and|or|with|of|in|to|from|at|on|by|for|via|into|than|but|the)\b)[a-z]+){0,2}?"
_SIDE = (r"\b(?P<s1>right|left|bilateral|both)(?:\s*(?:,|and|&|or|/)\s*(?:the\s+)?(?P<s2>right|left))?"
         r"(?:[\s-]+sided)?")
_PAIRED_RE = {
    organ: (re.compile(f"(?:{_SIDE}{_GAP}[\\s-]+)?(?P<organ>{word})"),
            re.compile(both), re.compile(f"(?:{word})[\\s,]+bilaterally"))
    for organ, (word, both) in _PAIRED.items()
}
# Chamber abbreviations, case-sensitive, trusted only in cardiac text.
_CHAMBER_ABBREV = {
    "left atrium": re.compile(r"\bLAA?\b"), "right atrium": re.compile(r"\bRA\b"),
    "left ventricle": re.compile(r"\bLV(?:OT|EF|H|AD)?\b"), "right ventricle": re.compile(r"\bRV(?:OT|H)?\b"),
}
_CARDIAC_CONTEXT = re.compile(
    r"heart|cardiac|cardio|\w*cardi(?:um|al|tis|ography|ogram)\b|coronar|mitral|tricuspid|myocard|valv"
    r"|chamber|septal|systol|diastol|\bcmr\b|parasternal|apical|\btte\b|\btee\b|\becho\b|trans-?o?esophageal"
    r"|\batri(?:um|a|al)\b|fallot")


def _paired_sides(organ: str, text: str, cardiac: bool) -> set[str]:
    """Sides ('right'/'left') of a paired organ named in the text, per the unsided-means-both rule."""
    mention, both, trailing_both = _PAIRED_RE[organ]
    if both.search(text) or trailing_both.search(text):
        return {"right", "left"}
    sided: set[str] = set()
    unsided = False
    for m in mention.finditer(text):
        sides = {s for s in (m.group("s1"), m.group("s2")) if s}
        if sides & {"bilateral", "both"}:
            sides = {"right", "left"}
        if sides:
            sided |= sides
        elif organ != "ventricle" or cardiac:
            # A bare "ventricle" outside cardiac text is most likely a brain ventricle.
            unsided = True
    if unsided and not sided:
        return {"right", "left"}
    return sided


def extract_tags(text: str) -> list[str]:
    """Canonical pre-training tags named in a report or caption, in PRETRAIN_TAGS order."""
    original = _normalize_text(text or "")
    lower = _MASKS.sub(" | ", original.lower())
    found: set[str] = set()
    for tag, pattern in _SINGLE_RE.items():
        if pattern.search(lower):
            found.add(tag)
    for tag, pattern in _SINGLE_CASED.items():
        if pattern.search(original):
            found.add(tag)
    cardiac = bool(_CARDIAC_CONTEXT.search(original.lower()))
    for organ in _PAIRED:
        found |= {f"{side} {organ}" for side in _paired_sides(organ, lower, cardiac)}
    if cardiac:
        found |= {tag for tag, pattern in _CHAMBER_ABBREV.items() if pattern.search(original)}
    if "ascending aorta" in found:
        found.add("aorta")
    return [tag for tag in PRETRAIN_TAGS if tag in found]


def tag_vector(text: str, tags: tuple[str, ...] | list[str] = PRETRAIN_TAGS) -> np.ndarray:
    """Multi-hot float32 vector over ``tags`` for the tags named in ``text``."""
    present = set(extract_tags(text))
    return np.array([tag in present for tag in tags], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Typed names and dataset label names -> tags

# Keys are in _name_key form. Dataset sources: BTCV dataset_0.json short names, AMOS dataset.json
# (including its "arota" typo), TotalSegmentator class names, MM-WHS structure names/abbreviations.
_ALIASES: dict[str, tuple[str, ...]] = {
    "spleen": ("spleen", "splenic", "spl", "sp"),
    "right kidney": ("right kidney", "rkid", "rk", "kidney right", "right renal", "r kidney", "kidney r"),
    "left kidney": ("left kidney", "lkid", "lk", "kidney left", "left renal", "l kidney", "kidney l"),
    "gallbladder": ("gallbladder", "gall bladder", "gall", "gb", "cholecyst"),
    "esophagus": ("esophagus", "oesophagus", "eso", "esophageal", "oesophageal", "gullet"),
    "liver": ("liver", "hepatic", "hepar", "liv"),
    "stomach": ("stomach", "sto", "gastric", "stom"),
    "aorta": ("aorta", "aortic", "ao", "arota", "abdominal aorta", "thoracic aorta", "descending aorta"),
    "inferior vena cava": ("inferior vena cava", "ivc", "postcava", "vena cava inferior", "inferior cava",
                           "vena cava", "infrahepatic vena cava"),
    "portal vein and splenic vein": ("portal vein and splenic vein", "veins", "portal vein", "splenic vein",
                                     "portal splenic vein", "portal and splenic vein", "pv", "psv",
                                     "portal vein splenic vein", "portal venous system"),
    "pancreas": ("pancreas", "pancreatic", "panc"),
    "right adrenal gland": ("right adrenal gland", "right adrenal", "rad", "adrenal gland right",
                            "right suprarenal gland", "right suprarenal", "rag"),
    "left adrenal gland": ("left adrenal gland", "left adrenal", "lad", "adrenal gland left",
                           "left suprarenal gland", "left suprarenal", "lag"),
    "myocardium": ("myocardium", "myocardial", "myo", "heart myocardium", "lv myocardium",
                   "myocardium of the left ventricle", "left ventricular myocardium", "heart muscle"),
    "left atrium": ("left atrium", "la", "heart atrium left", "left atrial", "left atrium blood cavity",
                    "left atrial blood cavity", "atrium left"),
    "left ventricle": ("left ventricle", "lv", "heart ventricle left", "left ventricular",
                       "left ventricle blood cavity", "left ventricular blood cavity", "ventricle left"),
    "right atrium": ("right atrium", "ra", "heart atrium right", "right atrial", "right atrium blood cavity",
                     "right atrial blood cavity", "atrium right"),
    "right ventricle": ("right ventricle", "rv", "heart ventricle right", "right ventricular",
                        "right ventricle blood cavity", "right ventricular blood cavity", "ventricle right"),
    "ascending aorta": ("ascending aorta", "aa", "asc aorta", "aorta ascending", "ascending thoracic aorta",
                        "aortic root"),
    "pulmonary artery": ("pulmonary artery", "pa", "pulmonary trunk", "main pulmonary artery",
                         "pulmonary arteries", "mpa", "pulm artery"),
}
# Plural or side-less names that stand for both members of a pair in a typed list.
_PAIR_NAMES = {
    "kidneys": ("right kidney", "left kidney"), "kidney": ("right kidney", "left kidney"),
    "renal": ("right kidney", "left kidney"),
    "adrenal glands": ("right adrenal gland", "left adrenal gland"),
    "adrenal gland": ("right adrenal gland", "left adrenal gland"),
    "adrenals": ("right adrenal gland", "left adrenal gland"),
    "adrenal": ("right adrenal gland", "left adrenal gland"),
    "atria": ("left atrium", "right atrium"), "ventricles": ("left ventricle", "right ventricle"),
}


def _name_key(name: str) -> str:
    """Lower case, no accents, separators (_ - / .) as single spaces."""
    key = _normalize_text(str(name)).lower()
    key = re.sub(r"[_\-/.,()]+", " ", key)
    key = re.sub(r"\bthe\b", " ", key)
    return " ".join(key.split())


_ALIAS_INDEX = {_name_key(alias): tag for tag, aliases in _ALIASES.items() for alias in (tag, *aliases)}


def _singular(key: str) -> str:
    words = []
    for w in key.split():
        if w.endswith("ies") and len(w) > 4:
            w = w[:-3] + "y"
        elif w.endswith("s") and not w.endswith(("ss", "us", "is")) and len(w) > 3:
            w = w[:-1]
        words.append(w)
    return " ".join(words)


def _candidates(key: str) -> list[str]:
    """The key, its singular, and both with a trailing side moved first ('kidney right' -> 'right kidney')."""
    out = [key, _singular(key)]
    for k in list(out):
        words = k.split()
        if len(words) > 1 and words[-1] in ("right", "left"):
            out.append(" ".join([words[-1], *words[:-1]]))
    return out


def normalize_tag(name: str) -> str | None:
    """Canonical pre-training tag for a typed organ name or dataset label name, None if unknown."""
    for key in _candidates(_name_key(name)):
        if key in _ALIAS_INDEX:
            return _ALIAS_INDEX[key]
    return None


def expand_tag(name: str) -> list[str]:
    """Tags a typed name stands for: known -> canonical (pairs like 'kidneys' -> both sides);
    unknown -> the cleaned name itself, as an open-set tag; blank -> []."""
    key = _name_key(name)
    if not key:
        return []
    if key in _PAIR_NAMES:
        return list(_PAIR_NAMES[key])
    tag = normalize_tag(name)
    return [tag] if tag else [key]


def parse_tag_list(text: str) -> list[str]:
    """'liver, Spleen; kidneys' -> ['liver', 'spleen', 'right kidney', 'left kidney'] (order kept,
    duplicates dropped, unknown names kept as open-set tags)."""
    out: list[str] = []
    for part in re.split(r"[,;\n]+", text or ""):
        for tag in expand_tag(part):
            if tag not in out:
                out.append(tag)
    return out


def suggest(name: str, known, n: int = 3) -> list[str]:
    """Up to ``n`` names from ``known`` closest to ``name`` (for 'did you mean' messages)."""
    known = list(known)
    by_key: dict[str, str] = {}
    for k in known:
        by_key.setdefault(_name_key(k), k)
    close = difflib.get_close_matches(_name_key(name), list(by_key), n=n, cutoff=0.6)
    return [by_key[k] for k in close]


# ---------------------------------------------------------------------------------------------
# Colours

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
# TotalSegmentator has no ascending aorta class: a lighter shade of its aorta keeps the two apart.
ORGAN_COLORS: dict[str, tuple[int, int, int]] = {
    tag: _TOTALSEG_COLORS.get(tag, (240, 150, 90)) for tag in PRETRAIN_TAGS}


def color_for(name: str) -> tuple[int, int, int]:
    """RGB 0..255 for any organ name: known colours first, else a stable colour hashed from the name."""
    tag = normalize_tag(name)
    if tag:
        return ORGAN_COLORS[tag]
    key = _name_key(name)
    if key in _TOTALSEG_COLORS:
        return _TOTALSEG_COLORS[key]
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    # Mid saturation and value so hashed colours stay visible on both CT greys and black.
    hue, sat, val = digest[0] / 255.0, 0.45 + 0.4 * digest[1] / 255.0, 0.6 + 0.35 * digest[2] / 255.0
    return _hsv_to_rgb255(hue, sat, val)


def _hsv_to_rgb255(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))
