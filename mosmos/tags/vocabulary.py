"""The 20 pre-training organ tags and the text normalisation every tag matcher shares."""

from __future__ import annotations

import unicodedata

# The 13 BTCV organs, then the 7 MM-WHS substructures; this order is the order of every tag vector.
PRETRAIN_TAGS: tuple[str, ...] = (
    "spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
    "inferior vena cava", "portal vein and splenic vein", "pancreas", "right adrenal gland",
    "left adrenal gland", "myocardium", "left atrium", "left ventricle", "right atrium",
    "right ventricle", "ascending aorta", "pulmonary artery",
)

# Dash variants (hyphen, en/em dash, minus) become '-', one character for one, so spans keep their offsets.
DASHES = str.maketrans({c: "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212"})


def normalize_text(text: str) -> str:
    """Accents off (French/German captions) and dash variants to '-', so matching stays ASCII."""
    text = unicodedata.normalize("NFKD", text.translate(DASHES))
    return "".join(c for c in text if not unicodedata.combining(c))
