"""Work on a file done once per version of it: remembered by the file's path, size and modification time, so
a file replaced or edited in place is read again, and an unchanged one (a model checked at every run of a
long-lived server) is not."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def once_per_file_version(fn: Callable[[str | os.PathLike], T]) -> Callable[[str | os.PathLike], T]:
    """``fn(path)``'s result, computed on the first call for each (path, size, mtime) of the file; an exception
    is not remembered."""
    done: dict[tuple, T] = {}

    @functools.wraps(fn)
    def cached(path: str | os.PathLike) -> T:
        try:
            st = os.stat(path)
        except OSError:
            return fn(path)   # fn reports the missing file in its own words
        key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
        if key not in done:
            done[key] = fn(path)
        return done[key]

    return cached
