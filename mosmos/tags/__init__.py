"""Organ tags: the 20 pre-training tags, report text -> tags, typed/dataset names -> tags, colours.

- vocabulary: the tags and the shared text normalisation;
- lexicon + report: report or caption text -> tags (rules as data, applied by a token pipeline);
- names: typed organ names and dataset label names -> tags;
- colors: a colour for any organ name, and its attention overlay's title;
- terminology: the SNOMED CT codes of each organ (DICOM SEG, Slicer's terminology selector).
"""

from .colors import OPEN_SET_TAGS, ORGAN_COLORS, attention_title, color_for
from .names import expand_tag, normalize_tag, parse_tag_list, suggest
from .report import Reason, explain_tags, extract_tags, tag_vector
from .vocabulary import PRETRAIN_TAGS

__all__ = ["OPEN_SET_TAGS", "ORGAN_COLORS", "PRETRAIN_TAGS", "Reason", "attention_title", "color_for", "expand_tag",
           "explain_tags", "extract_tags", "normalize_tag", "parse_tag_list", "suggest", "tag_vector"]
