"""ROCO image–report pairs, read as the dataset ships.

Layouts accepted (``root`` may point at any level):

- GitHub release: ``<root>/data/<split>/radiology/{captions.txt, dlinks.txt, images/}``; the image
  of ``ROCO_x`` is ``images/<PMCID>_<figure>``, PMCID from the ``.tar.gz`` name in dlinks.txt.
  ``root`` may also be the ``data`` folder or one ``<split>/radiology`` folder.
- CSV variant: ``<split>data.csv`` (columns id, name, caption) with ``images/<name>`` beside it,
  found the same way (``<root>/<split>/radiology/traindata.csv``, ``<root>/train/traindata.csv``, ...).

Missing or unreadable images are never fatal. The scan checks that each image exists and that its
header identifies an image format (cheap: a few bytes per file, so a garbage file is counted as
unreadable without decoding 80,000 figures). A file that passes the header check but fails to decode
(truncated JPEG) is found when the dataset first loads it: that sample is replaced by the next
readable one, counted, and reported once per split, so a training loop never stops on a bad file.
"""

from __future__ import annotations

import csv
import functools
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import MosmosError

log = logging.getLogger("mosmos.data.roco")

_SPLIT_ORDER = ("train", "validation", "test")
_PMC = re.compile(r"(PMC\d+)\.tar\.gz")
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class RocoRecord:
    id: str
    image_path: Path
    caption: str


@dataclass
class RocoSplit:
    """One split's usable pairs and what was left out of it."""

    name: str
    folder: Path
    records: list = field(default_factory=list)
    captions: int = 0  # caption lines read
    missing: int = 0  # no image file (not downloaded, or no dlinks entry)
    unreadable: int = 0  # file present but not an image (found at scan time or on first load)
    empty: int = 0  # blank caption
    decode_warned: bool = False

    @property
    def usable(self) -> int:
        return len(self.records)

    def counts(self) -> dict:
        return {"folder": str(self.folder), "captions": self.captions, "usable": self.usable,
                "missing": self.missing, "unreadable": self.unreadable, "empty_captions": self.empty}

    def summary_line(self) -> str:
        line = (f"ROCO {self.name}: {self.captions} captions, {self.usable} usable pairs, "
                f"{self.missing} images missing, {self.unreadable} unreadable")
        if self.empty:
            line += f", {self.empty} empty captions"
        return line + f" ({self.folder})"


# ---- discovery -----------------------------------------------------------------------------------

def _split_name(folder: Path, csv_file: Path | None = None) -> str:
    if csv_file is not None:
        prefix = csv_file.name[: -len("data.csv")].rstrip("_-").lower()
        if prefix:
            return prefix
    if folder.name.lower() in ("radiology", "images") and folder.parent != folder:
        return folder.parent.name.lower()
    return folder.name.lower()


def _find_split_sources(root: Path) -> list[tuple[str, Path, Path | None]]:
    """(split, folder, csv file or None) for every split folder under ``root`` (at most 3 levels)."""
    found = []
    seen = set()
    frontier = [root]
    for _depth in range(4):
        nxt = []
        for folder in frontier:
            if folder in seen:
                continue
            seen.add(folder)
            csvs = sorted(folder.glob("*data.csv"))
            if (folder / "captions.txt").is_file():
                found.append((_split_name(folder), folder, None))
            elif csvs:
                found.extend((_split_name(folder, c), folder, c) for c in csvs)
            else:
                nxt.extend(sorted(p for p in folder.iterdir()
                                  if p.is_dir() and p.name.lower() not in ("images", "non-radiology")
                                  and not p.name.startswith(".")))
        if found:
            break
        frontier = nxt
    return found


def _check_split_folders(root: Path) -> None:
    """A ``<split>/radiology`` folder without captions names the folder, not just the root."""
    for base in (root, root / "data"):
        for split in _SPLIT_ORDER:
            folder = base / split / "radiology"
            if folder.is_dir() and not (folder / "captions.txt").is_file() and not any(folder.glob("*data.csv")):
                raise MosmosError(f"{folder}: no captions.txt (expected the ROCO layout "
                                  f"<root>/data/<split>/radiology/captions.txt)")


# ---- reading one split ---------------------------------------------------------------------------

def _read_tab_file(path: Path) -> list[list[str]]:
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if line.strip():
                rows.append(line.split("\t"))
    return rows


def _figure_names(folder: Path) -> dict[str, str]:
    """ROCO id -> image file name from dlinks.txt (``<PMCID>_<figure>``)."""
    path = folder / "dlinks.txt"
    names = {}
    if path.is_file():
        for row in _read_tab_file(path):
            if len(row) >= 3:
                m = _PMC.search(row[1])
                if m:
                    names[row[0].strip()] = f"{m.group(1)}_{row[2].strip()}"
    return names


def _pairs_from_captions(folder: Path) -> list[tuple[str, str, str | None]]:
    """(id, caption, image file name or None) from captions.txt + dlinks.txt."""
    path = folder / "captions.txt"
    names = _figure_names(folder)
    pairs = []
    for row in _read_tab_file(path):
        rid = row[0].strip()
        caption = " ".join(part.strip() for part in row[1:]).strip()
        pairs.append((rid, caption, names.get(rid)))
    return pairs


def _pairs_from_csv(path: Path) -> list[tuple[str, str, str | None]]:
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.DictReader(f)
        columns = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        if "name" not in columns or "caption" not in columns:
            raise MosmosError(f"{path}: expected columns id, name, caption; found {reader.fieldnames}")
        id_col = columns.get("id") or columns.get("roco_id")
        pairs = []
        for row in reader:
            name = (row[columns["name"]] or "").strip()
            rid = (row[id_col] or "").strip() if id_col else Path(name).stem
            pairs.append((rid, (row[columns["caption"]] or "").strip(), name or None))
    return pairs


def _header_ok(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size[0] > 0 and img.size[1] > 0
    except Exception:  # any decoder complaint means "not an image"
        return False


def _read_split(name: str, folder: Path, csv_file: Path | None, check: str) -> RocoSplit:
    pairs = _pairs_from_csv(csv_file) if csv_file is not None else _pairs_from_captions(folder)
    source = csv_file if csv_file is not None else folder / "captions.txt"
    if not pairs:
        raise MosmosError(f"{source}: no captions in the file")
    split = RocoSplit(name=name, folder=folder, captions=len(pairs))
    images = folder / "images"
    try:
        present = {e.name for e in os.scandir(images) if e.is_file()} if images.is_dir() else set()
    except OSError:
        present = set()
    candidates = []
    for rid, caption, file_name in pairs:
        if not caption:
            split.empty += 1
            continue
        if file_name is None:  # no dlinks entry: some mirrors name the files by ROCO id
            file_name = next((rid + e for e in _IMAGE_EXTS if rid + e in present), None)
        if file_name is None or file_name not in present:
            split.missing += 1
            continue
        candidates.append(RocoRecord(rid, images / file_name, caption))
    if check == "header" and candidates:
        with ThreadPoolExecutor(max_workers=8) as pool:
            ok = list(pool.map(_header_ok, (r.image_path for r in candidates), chunksize=64))
        split.records = [r for r, good in zip(candidates, ok) if good]
        split.unreadable = len(candidates) - len(split.records)
    else:
        split.records = candidates
    return split


def _ordered(names):
    return sorted(names, key=lambda n: (_SPLIT_ORDER.index(n) if n in _SPLIT_ORDER else len(_SPLIT_ORDER), n))


def scan_roco(root, check: str = "header", warn: bool = True) -> dict[str, RocoSplit]:
    """Find and read every ROCO split under ``root``: ``{split: RocoSplit}`` in train/validation/test
    order. ``check``: "header" (default: the file must open as an image) or "exists". Logs one
    warning line per split that lost pairs."""
    if check not in ("header", "exists"):
        raise MosmosError(f"check={check!r}: use 'header' or 'exists'")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MosmosError(f"{root}: ROCO folder not found")
    _check_split_folders(root)
    sources = _find_split_sources(root)
    if not sources:
        what = "the folder is empty" if not any(root.iterdir()) else "no captions.txt or <split>data.csv found"
        raise MosmosError(f"{root}: {what} (expected the ROCO layout <root>/data/<split>/radiology/"
                          f"captions.txt with images/, or <split>data.csv with images/)")
    splits: dict[str, RocoSplit] = {}
    for name, folder, csv_file in sources:
        if name in splits:
            raise MosmosError(f"{folder}: a second '{name}' split (the first is {splits[name].folder})")
        splits[name] = _read_split(name, folder, csv_file, check)
    splits = {n: splits[n] for n in _ordered(splits)}
    if warn:
        for split in splits.values():
            _log_split(split)
    return splits


def _log_split(split: RocoSplit) -> None:
    lost = split.missing or split.unreadable or split.empty
    log.log(logging.WARNING if lost else logging.INFO, split.summary_line())


def summarize_roco(root) -> dict[str, dict]:
    """Per-split counts (folder, captions, usable, missing, unreadable, empty_captions) for a folder
    check in a user interface; never warns."""
    return {name: split.counts() for name, split in scan_roco(root, warn=False).items()}


# ---- dataset -------------------------------------------------------------------------------------

def _default_tags_fn(tags: Sequence[str] | None) -> Callable[[str], np.ndarray]:
    from .. import tags as tag_module  # lazily: keeps this reader importable on its own

    if tags is None:
        return tag_module.tag_vector
    return functools.partial(tag_module.tag_vector, tags=tuple(tags))  # picklable for spawned workers


class RocoDataset:
    """Map-style dataset of ROCO pairs: ``(image, report, tag_vector)``.

    ``image`` is a PIL RGB image, or ``transform(image)``; ``tag_vector`` is ``tags_fn(report)``,
    by default ``mosmos.tags.tag_vector`` (the 20 pre-training tags) or, with ``tags=[...]``, a vector
    over those canonical tags. ``splits``: None for every split found, or names like ("train",).
    """

    def __init__(self, root, splits=None, transform=None, tags_fn=None, tags=None, check="header"):
        found = scan_roco(root, check=check, warn=False)
        if isinstance(splits, str):
            splits = (splits,)
        names = list(found) if splits is None else [s.lower() for s in splits]
        unknown = [s for s in names if s not in found]
        if unknown:
            raise MosmosError(f"{root}: no ROCO split {', '.join(unknown)} (found: {', '.join(found)})")
        self.splits = {n: found[n] for n in names}
        for split in self.splits.values():
            _log_split(split)
        self.records = [(n, r) for n in names for r in found[n].records]
        if not self.records:
            counts = "; ".join(self.splits[n].summary_line() for n in names)
            raise MosmosError(f"{root}: no usable image-report pairs ({counts}); the images come from "
                              f"ROCO's own download script, into images/ beside captions.txt")
        self.transform = transform
        self.tags_fn = tags_fn if tags_fn is not None else _default_tags_fn(tags)
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, i: int):
        from PIL import Image

        split, record = self.records[i]
        try:
            with Image.open(record.image_path) as img:
                return img.convert("RGB")
        except Exception as exc:  # truncated or corrupt past the header: skip, count, tell once
            self._bad.add(i)
            info = self.splits[split]
            info.unreadable += 1
            if not info.decode_warned:
                info.decode_warned = True
                log.warning(f"ROCO {split}: {record.image_path.name} could not be decoded ({exc}); "
                            f"skipping it and any other undecodable image of this split")
            return None

    def __getitem__(self, index: int):
        n = len(self.records)
        for k in range(n):
            i = (index + k) % n
            if i in self._bad:
                continue
            image = self._load(i)
            if image is not None:
                report = self.records[i][1].caption
                if self.transform is not None:
                    image = self.transform(image)
                return image, report, self.tags_fn(report)
        raise MosmosError(f"ROCO: none of the {n} images could be decoded")

    def counts(self) -> dict[str, dict]:
        return {n: s.counts() for n, s in self.splits.items()}
