"""Typed organ names and dataset label names -> the canonical pre-training tags."""

from __future__ import annotations

import difflib
import re

from .vocabulary import normalize_text

# Keys are in name_key form. Dataset sources: BTCV dataset_0.json short names, AMOS dataset.json
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


def name_key(name: str) -> str:
    """Lower case, no accents, separators (_ - / .) as single spaces."""
    key = normalize_text(str(name)).lower()
    key = re.sub(r"[_\-/.,()]+", " ", key)
    key = re.sub(r"\bthe\b", " ", key)
    return " ".join(key.split())


_ALIAS_INDEX = {name_key(alias): tag for tag, aliases in _ALIASES.items() for alias in (tag, *aliases)}


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
    for key in _candidates(name_key(name)):
        if key in _ALIAS_INDEX:
            return _ALIAS_INDEX[key]
    return None


def expand_tag(name: str) -> list[str]:
    """Tags a typed name stands for: known -> canonical (pairs like 'kidneys' -> both sides);
    unknown -> the cleaned name itself, as an open-set tag; blank -> []."""
    key = name_key(name)
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
        by_key.setdefault(name_key(k), k)
    close = difflib.get_close_matches(name_key(name), list(by_key), n=n, cutoff=0.6)
    return [by_key[k] for k in close]
