"""Report text -> organ tags: tokens -> candidate organ mentions -> side, context and exclusion rules -> tags.

The rules are the tables of mosmos.tags.lexicon; this module only applies them. Every mention keeps its
character span, so explain_tags() can say which words gave each tag.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

import numpy as np

from . import lexicon as lx
from .vocabulary import DASHES, PRETRAIN_TAGS, normalize_text


# ---------------------------------------------------------------------------------------------
# 1. Tokens

class Token(NamedTuple):
    norm: str    # lower case, no accents, a bound prefix's hyphen dropped
    cased: str   # as written, no accents
    start: int   # span in the caller's text
    end: int
    word: bool   # False for punctuation


_PIECE = re.compile(r"[^\W_]+(?:-[^\W_]+)*|[^\w\s-]")


def _plain(s: str) -> str:
    return s if s.isascii() else normalize_text(s)


def tokenize(text: str) -> list[Token]:
    """Words and punctuation marks with their spans; "trans-oesophageal" and "right-sided" are one word."""
    plain = text.isascii()
    if not plain:
        text = text.translate(DASHES)
    tokens: list[Token] = []
    for m in _PIECE.finditer(text):
        piece = m.group()
        if "-" not in piece:
            word = piece if plain else _plain(piece)
            tokens.append(Token(word.lower(), word, m.start(), m.end(), piece[0].isalnum()))
            continue
        pos, parts = m.start(), []
        for part in piece.split("-"):
            parts.append([_plain(part), pos, pos + len(part)])
            pos += len(part) + 1
        merged = [parts[0]]
        for part in parts[1:]:
            last = merged[-1]
            if last[0].lower() in lx.BOUND_PREFIXES or part[0].lower() in lx.BOUND_SUFFIXES:
                last[0], last[2] = last[0] + part[0], part[2]
            else:
                merged.append(part)
        tokens += [Token(word.lower(), word, start, end, True) for word, start, end in merged]
    return tokens


# ---------------------------------------------------------------------------------------------
# 2. Candidate mentions: the longest lexicon entry at each token; a look-alike beats an organ term

class _Entry(NamedTuple):
    words: tuple[re.Pattern, ...]
    term: lx.Term


_ENTRIES = [_Entry(tuple(re.compile(w) for w in alternative.split()), term)
            for term in (*lx.ORGAN_TERMS, *lx.LOOKALIKES) for alternative in term.words.split(" | ")]
# Most words start no entry: one alternation of all first words rules them out in a single test.
_ANY_FIRST = re.compile("|".join(f"(?:{e.words[0].pattern})" for e in _ENTRIES if not e.term.cased))
_ANY_FIRST_CASED = re.compile("|".join(f"(?:{e.words[0].pattern})" for e in _ENTRIES if e.term.cased))
_CONTEXTS = {name: re.compile(rf"(?<![\w-])(?:{pattern})(?![\w-])") for name, pattern in lx.CONTEXTS.items()}


class Mention(NamedTuple):
    term: lx.Term
    start: int                    # span of the organ words in the text
    end: int
    sides: frozenset = frozenset()  # right/left, from the term or the side words around it
    side_start: int = -1          # where the side words begin, when before the organ
    side_end: int = -1            # where they end, when after it


@functools.lru_cache(maxsize=1 << 16)
def _entries_from(norm: str, cased: str) -> tuple[_Entry, ...]:
    """The entries whose first word matches this token (words repeat, so this is cached)."""
    if not (_ANY_FIRST.fullmatch(norm) or _ANY_FIRST_CASED.fullmatch(cased)):
        return ()
    return tuple(e for e in _ENTRIES if e.words[0].fullmatch(cased if e.term.cased else norm))


def _match_at(tokens: list[Token], i: int, contexts: set[str]) -> list[tuple[int, lx.Term]]:
    found = []
    for entry in _entries_from(tokens[i].norm, tokens[i].cased):
        n = len(entry.words)
        if i + n > len(tokens) or (entry.term.context and entry.term.context not in contexts):
            continue
        for k in range(1, n):
            tok = tokens[i + k]
            if not tok.word or not entry.words[k].fullmatch(tok.cased if entry.term.cased else tok.norm):
                break
        else:
            found.append((n, entry.term))
    return found


def find_mentions(text: str) -> tuple[list[Mention], list[Mention], set[str]]:
    """Organ mentions and look-alikes (organ None) in reading order, and the caption's contexts."""
    tokens = tokenize(text)
    joined = " ".join(t.norm for t in tokens)
    contexts = {name for name, pattern in _CONTEXTS.items() if pattern.search(joined)}
    mentions, lookalikes = [], []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        found = _match_at(tokens, i, contexts) if tok.word else []
        if not found:
            i += 1
            continue
        n = max(length for length, _ in found)
        longest = [term for length, term in found if length == n]
        start, end = tok.start, tokens[i + n - 1].end
        if any(term.organ is None for term in longest):
            lookalikes.append(Mention(next(t for t in longest if t.organ is None), start, end))
        else:
            for term in dict.fromkeys(longest):
                mentions.append(_with_sides(Mention(term, start, end), tokens, i, i + n))
        i += n
    return mentions, lookalikes, contexts


# ---------------------------------------------------------------------------------------------
# 3. Sides, contexts and exclusions

def _side_word(tokens: list[Token], k: int, gap: int) -> str | None:
    tok = tokens[k]
    if gap == 0 and tok.cased in lx.SIDES_BEFORE_CASED:   # "R kidney", "(L) adrenal": only right before it
        return lx.SIDES_BEFORE_CASED[tok.cased]
    return lx.SIDES_BEFORE.get(tok.norm)


def _sides_before(tokens: list[Token], i: int) -> tuple[set[str], int]:
    """Side words before token i ("left", "Lt", "rt.", "(L)", "right and left", "both"), and where they start."""
    k, gap = i - 1, 0
    while k >= 0:
        tok = tokens[k]
        if not tok.word:
            abbreviation_dot = tok.norm == "." and k > 0 and tokens[k - 1].norm in ("rt", "lt", "r", "l")
            if tok.norm in "()" or abbreviation_dot:
                k -= 1
                continue
            return set(), -1
        side = _side_word(tokens, k, gap)
        if side:
            sides, start = {side}, tok.start
            j = k - 1
            while j >= 0 and tokens[j].norm in lx.SIDE_JOINERS:   # "right and (the) left"
                j -= 1
                if j >= 0 and tokens[j].word and lx.SIDES_BEFORE.get(tokens[j].norm):
                    sides.add(lx.SIDES_BEFORE[tokens[j].norm])
                    start = tokens[j].start
                    break
            return sides, start
        if tok.norm in lx.FUNCTION_WORDS or gap == lx.SIDE_GAP:
            return set(), -1
        gap += 1
        k -= 1
    return set(), -1


def _sides_after(tokens: list[Token], j: int) -> tuple[set[str], int]:
    """Side words after the organ, and where they end: French "rein gauche" right after it, and
    "bilaterally" anywhere up to the end of the clause ("renal cysts are seen bilaterally")."""
    gap = 0
    for tok in tokens[j:j + lx.CLAUSE_WORDS]:
        if not tok.word:
            break
        side = lx.SIDES_AFTER.get(tok.norm)
        if side and (side == "both" or gap <= lx.SIDE_GAP):
            return {side}, tok.end
        gap += 1
    return set(), -1


def _with_sides(mention: Mention, tokens: list[Token], i: int, j: int) -> Mention:
    # Abbreviations carry their side ("LV"); written side words come before a plural's "both" ("right atria").
    if mention.term.organ not in lx.PAIRED or mention.term.cased:
        return mention._replace(sides=mention.term.sides)
    sides, side_start = _sides_before(tokens, i)
    side_end = -1
    if not sides:
        sides, side_end = _sides_after(tokens, j)
    if "both" in sides:
        sides = set(lx.BOTH)
    if not sides:
        return mention._replace(sides=mention.term.sides)
    return mention._replace(sides=frozenset(sides), side_start=side_start, side_end=side_end)


class Reason(NamedTuple):
    tag: str | None   # None: words that look like an organ but are not one
    words: str        # the words of the text that gave the tag
    note: str = ""


def _words(text: str, m: Mention) -> str:
    start = m.side_start if m.side_start >= 0 else m.start
    return text[start:max(m.end, m.side_end)]


def _context_veto(m: Mention, contexts: set[str]) -> str:
    """Why a mention does not count in this caption's contexts ('' when it counts)."""
    present, unless = lx.RULED_OUT_BY.get(m.term.organ, ("", ""))
    if present in contexts and unless not in contexts:
        return f"{present} text"
    need = lx.UNSIDED_NEEDS.get(m.term.organ)
    if need and not m.sides and need not in contexts:
        return f"no side and no {need} text"
    return ""


_ORDER = {tag: k for k, tag in enumerate(PRETRAIN_TAGS)}


def explain_tags(text: str) -> list[Reason]:
    """Each tag named in the text with the words that gave it, in PRETRAIN_TAGS order, then the
    look-alikes that were not taken for organs."""
    text = text or ""
    mentions, lookalikes, contexts = find_mentions(text)
    reasons: list[Reason] = []
    unsided: dict[str, list[Mention]] = {}
    for m in mentions:
        organ, veto = m.term.organ, _context_veto(m, contexts)
        if veto:
            lookalikes.append(m._replace(term=m.term._replace(organ=None, why=veto)))
        elif organ not in lx.PAIRED:
            reasons.append(Reason(organ, _words(text, m)))
        elif m.sides:
            reasons += [Reason(f"{side} {organ}", _words(text, m)) for side in sorted(m.sides)]
        else:
            unsided.setdefault(organ, []).append(m)
    # An organ without a side means both, unless the caption gives that organ a side elsewhere.
    sided: dict[str, set[str]] = {}
    for r in reasons:
        side, _, organ = r.tag.partition(" ")
        if organ in lx.PAIRED:
            sided.setdefault(organ, set()).add(side)
    for organ, ms in unsided.items():
        sides, note = (sided[organ], "side named elsewhere") if organ in sided else (lx.BOTH, "no side named: both")
        reasons += [Reason(f"{side} {organ}", _words(text, m), note) for m in ms for side in sorted(sides)]
    ascending = [r for r in reasons if r.tag == "ascending aorta"]
    if ascending and not any(r.tag == "aorta" for r in reasons):
        reasons.append(Reason("aorta", ascending[0].words, "implied by the ascending aorta"))
    reasons.sort(key=lambda r: _ORDER[r.tag])
    reasons += [Reason(None, text[m.start:m.end], m.term.why) for m in lookalikes]
    return list(dict.fromkeys(reasons))


def extract_tags(text: str) -> list[str]:
    """Canonical pre-training tags named in a report or caption, in PRETRAIN_TAGS order.

    Args:
        text: a radiology report or figure caption.
    """
    return list(dict.fromkeys(r.tag for r in explain_tags(text) if r.tag))


def tag_vector(text: str, tags: tuple[str, ...] | list[str] = PRETRAIN_TAGS) -> np.ndarray:
    """Multi-hot float32 vector over ``tags`` for the tags named in ``text``."""
    present = set(extract_tags(text))
    return np.array([tag in present for tag in tags], dtype=np.float32)
