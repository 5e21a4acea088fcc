"""The model card: what a model file is, in the words a clinician or a reviewer asks for (organs and label
values, modality, backbone, window and spacing, training data, training length, validation Dice, mosmos
version, date, the pre-trained model it started from). Training writes it into the header (``card``);
``mosmos info``, ``mosmos models list``, model indexes and the Slicer model selector read it from there."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from .filecache import once_per_file_version


@once_per_file_version
def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (what a model index lists, ``--sha256`` checks and a DICOM SEG names)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def training_card(*, stage: str, backbone: str, data: str | os.PathLike, cases: int, steps: int, epochs: int,
                  validation: dict[str, Any], description: str = "", label_ratio: float | None = None,
                  data_name: str = "", **fields: Any) -> dict[str, Any]:
    """The card written by ``mosmos pretrain`` / ``mosmos finetune`` (``fields``: stage-specific entries).
    Only the data folder's name is kept: its full path says nothing to the people a model is shared with.
    ``data_name``: the dataset's own name (dataset.json's "name"), which picks the QC reference profile."""
    return {"stage": stage, "backbone": backbone,
            "data": {"folder": Path(data).name, **({"name": data_name} if data_name else {}), "cases": cases,
                     "label_ratio": label_ratio},
            "training": {"epochs": epochs, "steps": steps}, "validation": validation,
            "mosmos_version": __version__, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "description": description, **fields}


def init_record(init: str, pretrained: str | os.PathLike | None) -> dict[str, Any]:
    """Where fine-tuning started: the init kind and, for a file, its name and SHA-256."""
    record: dict[str, Any] = {"kind": init}
    if pretrained and Path(pretrained).is_file():
        record.update(file=Path(pretrained).name, sha256=file_sha256(pretrained))
    elif pretrained:
        record["source"] = str(pretrained)  # an open_clip tag such as "openai"
    return record


def organs(header: dict[str, Any]) -> list[tuple[int, str]]:
    """(label value, organ) of a segmentation model, background left out, by value."""
    labels = header.get("labels") or {}
    return [(int(v), str(n)) for v, n in sorted(labels.items(), key=lambda kv: int(kv[0]))
            if int(v) != 0 and n != "background"]


def mean_dice(header: dict[str, Any]) -> float | None:
    value = ((header.get("card") or {}).get("validation") or {}).get("mean_dice")
    return float(value) if isinstance(value, (int, float)) else None


def summary(header: dict[str, Any]) -> dict[str, Any]:
    """The card's gist, as a model index lists it."""
    card = header.get("card") or {}
    return {"kind": header.get("kind"), "modality": header.get("modality"),
            "organs": [name for _, name in organs(header)], "backbone": card.get("backbone"),
            "mean_dice": mean_dice(header), "data": (card.get("data") or {}).get("folder"),
            "description": card.get("description", "")}


def card_lines(header: dict[str, Any]) -> list[str]:
    """The card as readable lines (``mosmos info``, the Slicer tooltip). Files written before cards existed
    show what their header holds."""
    card = header.get("card") or {}
    config = header.get("config") or {}
    prep = header.get("preprocessing") or {}
    lines = [f"kind: {header.get('kind', '?')} (format {header.get('format_version', '?')})"]
    if card.get("description"):
        lines.append(f"description: {card['description']}")
    if header.get("modality"):
        lines.append(f"modality: {header['modality']}")
    found = organs(header)
    if found:
        dice = (card.get("validation") or {}).get("dice") or {}
        lines.append("organs (label value = organ, validation Dice):")
        lines += [f"  {value} = {name}" + (f" (Dice {dice[name]:.3f})" if isinstance(dice.get(name), (int, float))
                                           else "") for value, name in found]
    elif config.get("tags"):
        lines.append("tags: " + ", ".join(config["tags"]))
    if mean_dice(header) is not None:
        lines.append(f"validation: mean Dice {mean_dice(header):.3f}")
    elif card.get("validation"):
        lines.append("validation: " + ", ".join(f"{k} {v}" for k, v in card["validation"].items()))
    backbone = card.get("backbone") or config.get("backbone")
    if backbone:
        lines.append(f"backbone: {backbone}" + (f", {config['arch']}" if config.get("arch") else ""))
    if prep.get("roi_size") or prep.get("spacing"):
        lines.append(f"roi: {prep.get('roi_size')}, spacing: {prep.get('spacing')} mm")
    data = card.get("data") or {}
    if data:
        extra = f", label budget {data['label_ratio']}" if data.get("label_ratio") is not None else ""
        lines.append(f"training data: {data.get('folder')} ({data.get('cases')} cases{extra})")
    training = card.get("training") or {}
    if training:
        lines.append(f"training: {training.get('epochs')} epochs, {training.get('steps')} steps")
    init = card.get("init") or {}
    if init:
        lines.append("init: " + init.get("kind", "?") + (f" from {init['file']} (SHA-256 {init['sha256']})"
                                                         if init.get("sha256") else ""))
    if card.get("mosmos_version") or card.get("date"):
        lines.append(f"made by mosmos {card.get('mosmos_version', '?')} on {card.get('date', '?')}")
    return lines
