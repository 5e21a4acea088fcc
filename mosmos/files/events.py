"""Progress for people (a bar on a terminal) and for programs (JSON-lines events)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO


class EventLog:
    """Appends one JSON object per line to a file (or stdout with ``"-"``) and flushes each line,
    so a reader (the Slicer training module) sees events as they happen."""

    def __init__(self, target: str | Path | TextIO | None):
        self._own = False
        if target is None:
            self._f = None
        elif target == "-":
            self._f = sys.stdout
        elif hasattr(target, "write"):
            self._f = target
        else:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            self._f = open(target, "a", encoding="utf-8")
            self._own = True

    def emit(self, event: str, **fields: Any) -> None:
        if self._f is None:
            return
        self._f.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields}) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._own and self._f is not None:
            self._f.close()
        self._f = None

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: int, desc: str, initial: int = 0, enabled: bool | None = None):
    """A tqdm bar on an interactive terminal, a silent one otherwise."""
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, initial=initial, disable=not enabled, dynamic_ncols=True, leave=False)
