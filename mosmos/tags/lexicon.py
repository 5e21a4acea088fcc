"""The rules of report text -> tags, as data: organ terms, look-alikes, side markers, contexts.

Every entry is matched on tokens (mosmos.tags.report.tokenize): a term is a list of alternatives
separated by " | ", each a sequence of space-separated token patterns, each pattern matched against
a whole token in lower case without accents (cased terms: against the token as written). A
hyphenated word whose first part is a bound prefix (trans-, infra-, peri-, ...) is one token without
its hyphen ("trans-oesophageal" -> "transoesophageal").
Where several entries match at the same token, the longest wins, and a look-alike beats an organ
term of the same length. The conventions are those of Testing/Data/roco_tags_labelling_rules.md.
"""

from __future__ import annotations

from typing import NamedTuple

# Organs with a right and a left member; a term naming one gives "<side> <organ>" tags.
PAIRED = ("kidney", "adrenal gland", "atrium", "ventricle")
BOTH = frozenset({"right", "left"})


class Term(NamedTuple):
    words: str                      # alternatives separated by " | ", each one or more token patterns
    organ: str | None               # a tag, a PAIRED organ, or None for a look-alike
    sides: frozenset = frozenset()  # sides the term itself names ("LV", "atria", "interatrial")
    cased: bool = False             # match the token as written (abbreviations)
    context: str = ""               # a CONTEXTS key the caption must have for the term to count
    why: str = ""                   # for a look-alike: what it is instead


def _left(words, organ, **kw):
    return Term(words, organ, frozenset({"left"}), **kw)


def _right(words, organ, **kw):
    return Term(words, organ, frozenset({"right"}), **kw)


def _both(words, organ, **kw):
    return Term(words, organ, BOTH, **kw)


ORGAN_TERMS: tuple[Term, ...] = (
    # liver
    Term(r"livers? | foie | (?:intra|peri|sub|retro|extra)?hepat\w*", "liver"),
    Term(r"HCC", "liver", cased=True),
    # spleen (the splenic vein belongs to the portal system, below)
    Term(r"spleens? | (?:peri)?splenic | \w*splenomegal\w* | splenosis | splenules? | splenunculi", "spleen"),
    Term(r"rate", "spleen", context="french"),
    # gallbladder
    Term(r"gallbladders? | gall bladders? | gallstones? | gall stones? | cholecyst\w* | cholelithiasis"
         r" | vesicule biliaire", "gallbladder"),
    # oesophagus and stomach
    Term(r"\w*o?esophag\w*", "esophagus"),
    Term(r"stomachs? | estomac | (?:peri)?gastric | gastr(?:itis|ostom\w*|oparesis|ojejun\w*|oo?esophag\w*"
         r"|oduoden(?:al|um)|opexy|otomy) | \w*esophagogastr\w* | pylor\w*", "stomach"),
    # aorta; its valve, root and sinuses are also the ascending aorta
    Term(r"\w*aort\w* | (?:supra|infra|juxta)renal aort\w*", "aorta"),
    Term(r"AAA|EVAR|TEVAR", "aorta", cased=True),
    Term(r"ascending aort\w* | ascending thoracic aort\w* | sinotubular | sinus(?:es)? of valsalva"
         r" | (?:right|left|non) coronary cusps? | noncoronary cusps?"
         r" | aortic (?:root|valves?|annul\w*|sinus\w*|cusps?|leaflets?|stenosis|regurgitation|insufficiency)",
         "ascending aorta"),
    # inferior vena cava
    Term(r"inferior vena cava\w* | inferior cava\w* | inferior caval | inferior caval vein | vena cavae?"
         r" | postcava | caval | (?:pre|retro|para|peri|infra|supra)caval | \w*aortocaval"
         r" | veine cave | veine cave inferieure", "inferior vena cava"),
    Term(r"IVC|VCI", "inferior vena cava", cased=True),
    # portal vein and splenic vein
    Term(r"(?:peri|intra|extra|spleno)?portal | porto\w* | splenic veins? | veine porte",
         "portal vein and splenic vein"),
    # pancreas
    Term(r"\w*pancrea\w*", "pancreas"),
    Term(r"ERCP", "pancreas", cased=True),
    # kidneys
    Term(r"kidney | renal | (?:peri|para|retro|intra)renal | \w*nephr\w* | pyel\w* | ureteropelvic | pelviureteric",
         "kidney"),
    Term(r"rein", "kidney", context="french"),
    Term(r"UPJ|PUJ", "kidney", cased=True),
    _both(r"kidneys | horseshoe kidneys?", "kidney"),
    _both(r"reins", "kidney", context="french"),
    _both(r"KUB", "kidney", cased=True),
    # adrenal glands
    Term(r"adrenal | adrenal gland | suprarenal | suprarenal gland | surrenale", "adrenal gland"),
    _both(r"adrenals | adrenal glands | suprarenal glands | surrenales", "adrenal gland"),
    # atria; the septum and its defect lie between both
    Term(r"atrium | atrial | oreillette", "atrium"),
    _both(r"atria | (?:inter|bi)atrial | atrial sept(?:um|al) | oreillettes", "atrium"),
    _both(r"ASD", "atrium", cased=True, context="cardiac"),
    _left(r"LAA?", "atrium", cased=True, context="cardiac"),
    _right(r"RA", "atrium", cased=True, context="cardiac"),
    # ventricles
    Term(r"ventricle | ventricular | ventriculogra\w* | ventricule", "ventricle"),
    _both(r"ventricles | (?:inter|bi)ventricular | ventricular sept(?:um|al) | ventricules", "ventricle"),
    _both(r"VSD", "ventricle", cased=True, context="cardiac"),
    _left(r"LV(?:OT|EF|H|EDD?|ESD?)?", "ventricle", cased=True, context="cardiac"),
    _right(r"RV(?:OT|H|EF)?", "ventricle", cased=True, context="cardiac"),
    # myocardium
    Term(r"\w*myocard\w* | myopericard\w* | cardiomyopath\w* | subendocardial", "myocardium"),
    # pulmonary artery
    Term(r"pulmonary arter(?:y|ies|ial) | pulmonary trunk | pulmonary (?:thrombo)?embol\w* | pulmonary angiogra\w*"
         r" | main pa", "pulmonary artery"),
    Term(r"CTPA", "pulmonary artery", cased=True),
)

# Words and phrases that contain an organ term but do not name the organ.
LOOKALIKES: tuple[Term, ...] = (
    Term(r"\w*ectom\w*", None, why="removed organ"),
    Term(r"transo?esophag\w* | trans o?esophag\w* | trans gastric | trans hepatic\w*"
         r" | \w*esophagogastroduodenoscop\w*", None, why="route"),
    Term(r"mido?esophag\w* | mid o?esophag\w*", None, why="echo view", context="cardiac"),
    Term(r"(?:naso|oro) gastric | gastroduodenal arter\w*", None, why="tube or artery"),
    Term(r"(?:hepatic|splenic) flexures?", None, why="colon"),
    Term(r"portal phase | portal venous phase | portovenous phase | nephrographic phase", None, why="contrast phase"),
    Term(r"superior vena cava\w* | superior cava\w* | superior caval | superior caval vein | veine cave superieure",
         None, why="superior vena cava"),
    # brain and larynx ventricles, their horns and atria
    Term(r"(?:lateral|third|3rd|fourth|4th|cerebral|brain|temporal|occipital|frontal|laryngeal) ventric\w*"
         r" | (?:lateral|third|3rd) and (?:third|3rd|fourth|4th) ventric\w*"
         r" | atri(?:um|a) of the lateral ventric\w* | atri(?:um|a) of the (?:right|left) lateral ventric\w*"
         r" | horns? of the ventricles? | horns? of the (?:right|left) ventricles?"
         r" | ventricles? of the (?:brain|larynx)",
         None, why="brain ventricle"),
    # heart grooves, views, devices and rhythms named after a chamber
    Term(r"(?:inter|atrio)ventricular (?:grooves?|sulc\w*) | interatrial (?:grooves?|sulc\w*)", None,
         why="groove of the heart"),
    Term(r"(?:right|left) ventricular (?:inflow|outflow) (?:views?|planes?)"
         r" | (?:right|left) ventricular (?:inflow|outflow) tract (?:views?|planes?)"
         r" | (?:lvot|rvot) (?:views?|planes?)",
         None, why="echo view"),
    Term(r"(?:right|left) (?:ventricular|atrial) (?:leads?|wires?|electrodes?|catheters?)"
         r" | (?:right|left) (?:ventricular|atrial) pacing (?:leads?|wires?|electrodes?)"
         r" | biventricular (?:pacing|pacemakers?|pacers?|devices?|icds?|crt\w*)"
         r" | ventricular assist devices? | left ventricular assist devices? | lvads? | asd (?:devices?|occluders?)"
         r" | asd closure devices?", None, why="device"),
    Term(r"(?:LV|RV|RA|LA) (?:[Ll]eads?|[Cc]atheters?|[Ww]ires?)", None, cased=True, why="device"),
    Term(r"atrial (?:fibrillation|flutter|tachycardia|premature\w*|ectop\w*)"
         r" | ventricular (?:tachycardia|fibrillation|premature\w*|ectop\w*|arrhythmi\w*)", None, why="rhythm"),
)

# Hyphenated prefixes written with or without the hyphen; "-sided" joins its side word the same way.
BOUND_PREFIXES = frozenset({
    "trans", "infra", "supra", "juxta", "peri", "para", "retro", "intra", "inter", "extra", "mid", "naso", "oro",
    "bi", "sub", "gastro", "hepato", "spleno", "porto", "myo", "pelvi", "aorto", "cholangio", "ventriculo",
    "oesophago", "esophago"})
BOUND_SUFFIXES = frozenset({"sided"})

# Side markers, matched on the lower-case token; (cased) ones as written. "before" markers stand before
# the organ (English), "after" ones follow it (French "rein gauche").
SIDES_BEFORE = {"right": "right", "left": "left", "rt": "right", "lt": "left",
                "rightsided": "right", "leftsided": "left", "bilateral": "both", "both": "both"}
SIDES_BEFORE_CASED = {"R": "right", "L": "left"}
SIDES_AFTER = {"droit": "right", "droite": "right", "droits": "right", "gauche": "left",
               "bilaterally": "both", "bilateral": "both"}
# "bilaterally" reaches back to an organ over at most this many words of the same clause.
CLAUSE_WORDS = 6
# A side reaches its organ over at most this many other words, none of them a function word:
# "left lower pole of the kidney" is no side, "left lung and kidney" neither.
SIDE_GAP = 2
FUNCTION_WORDS = frozenset({"and", "or", "with", "of", "in", "to", "from", "at", "on", "by", "for", "via", "into",
                            "than", "but", "the", "a", "an", "is", "was", "were", "are", "which", "that"})
SIDE_JOINERS = frozenset({"and", "or", "&", "/", ",", "the"})  # "right and left", "right and the left"

# Caption-level contexts: word patterns (lower case, whole token) that put a caption in a context.
CONTEXTS = {
    "cardiac": (r"hearts?|cardiac|cardio\w*|\w*cardi(?:um|al|tis|ography|ogram|ographic)|echocardio\w*|coronar\w*"
                r"|mitral|tricuspid|\w*myocard\w*|valv\w*|chambers?|systol\w*|diastol\w*|cmr|parasternal|apical"
                r"|subcostal|tte|tee|transo?esophageal|(?:inter|bi)?atri(?:um|a|al)|(?:inter|bi)ventricular|fallot"
                r"|ventriculogra\w*|pacing|pacemakers?|lvef|ejection"),
    # a ventricle here is the brain's, unless the caption is also cardiac
    "brain": (r"brain|cerebr\w*|cerebell\w*|intracranial|cranial|skull|hydroceph\w*|csf|choroid|pellucidum|monro"
              r"|aqueduct\w*|ventriculoperitoneal|ventriculomegal\w*|periventricular|paraventricular|thalam\w*"
              r"|glioma|meningioma|ependymoma|suprasellar|pineal|hemispher\w*"),
    "french": r"montrant|coupe|avec|une|objectivant|echographie|tdm|realisee|apres|sans|du|des|les",
}
# Organs that count only in a context, and contexts that rule an organ out when the other is absent.
UNSIDED_NEEDS = {"ventricle": "cardiac"}          # a bare "ventricle" outside cardiac text is the brain's
RULED_OUT_BY = {"ventricle": ("brain", "cardiac")}  # (context present, unless this one is present too)
