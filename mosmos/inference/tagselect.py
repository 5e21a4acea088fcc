"""Typed organ names -> what the engine computes for them.

Rule, per typed name (after mosmos.tags: synonyms, case, plurals, "kidneys" -> both sides):
1. a canonical tag the model has a label for -> label + attention map;
2. any other canonical tag, an open-set organ mosmos.tags knows (e.g. "duodenum", "urinary bladder"),
   or an unrecognised name whose closest known name (difflib distance 0.6) is such an open-set organ
   -> open-set: an attention map when the network provides open_set_maps, no label, and a notice;
3. an unrecognised name whose closest known name is a canonical tag or one of the model's labels
   ("livr") -> MosmosError "did you mean 'liver'?": a typo must not quietly lose the organ's label;
4. an unrecognised name far from every known name -> MosmosError listing the closest known names.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from .. import tags as tagmod
from ..errors import MosmosError, shorten


@dataclass
class TagSelection:
    labelled: list[str] = field(default_factory=list)   # canonical names the model labels
    open_set: list[str] = field(default_factory=list)   # names to attend to without a label
    notices: list[str] = field(default_factory=list)


def known_names(model_labels) -> list[str]:
    names = []
    for n in (*tagmod.PRETRAIN_TAGS, *model_labels, *tagmod.OPEN_SET_TAGS):
        if n not in names:
            names.append(n)
    return names


def closest(name: str, known: list[str], n: int = 3) -> list[str]:
    return sorted(known, key=lambda k: -difflib.SequenceMatcher(None, name.lower(), k.lower()).ratio())[:n]


def select_tags(tags, model_labels: list[str], open_set_supported: bool) -> TagSelection:
    """``tags``: None (every labelled organ), a "liver, spleen" string, or a list of names."""
    sel = TagSelection()
    if tags is None:
        sel.labelled = list(model_labels)
        return sel
    typed = [tags] if isinstance(tags, str) else list(tags)
    known = known_names(model_labels)
    for raw in typed:
        for name in tagmod.parse_tag_list(str(raw)):
            canonical = name in tagmod.PRETRAIN_TAGS or name in model_labels
            if not canonical and name not in tagmod.OPEN_SET_TAGS:
                near = tagmod.suggest(name, known)
                if not near:
                    raise MosmosError(f"tags: unknown organ name {shorten(name)!r}; closest known names: "
                                      f"{', '.join(closest(name, known))}")
                if near[0] in tagmod.PRETRAIN_TAGS or near[0] in model_labels:
                    raise MosmosError(f"tags: unknown organ name {shorten(name)!r}; did you mean {near[0]!r}?")
            if name in model_labels:
                if name not in sel.labelled:
                    sel.labelled.append(name)
                continue
            if name in sel.open_set:
                continue
            sel.open_set.append(name)
            note = f"no label available for {shorten(name)} (the model was not fine-tuned on it)"
            if not open_set_supported:
                note += "; this model gives no attention map for it either"
            sel.notices.append(note)
    if not sel.labelled and not sel.open_set:
        raise MosmosError("tags: no organ names given")
    return sel
