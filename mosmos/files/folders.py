"""Folders made on the way to a command's outputs, taken back when the command fails: a run that writes nothing
leaves nothing, not even an empty folder (its files are staged and renamed into place whole:
mosmos.inference.io.StagedWriter)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path


@contextmanager
def new_folders_removed_on_error(*outputs):
    """On an error in the block, remove the folders on the way to ``outputs`` (files or folders; None skipped)
    that were missing before it and are empty after it, deepest first. Enter it before the writer that stages the
    files, so that the writer has removed them by then."""
    missing = {path for output in outputs if output for path in (Path(output), *Path(output).parents)
               if not path.exists()}
    try:
        yield
    except BaseException:
        for folder in sorted(missing, key=lambda p: len(p.parts), reverse=True):
            try:
                folder.rmdir()
            except OSError:   # never made, a file, or holding what another run wrote meanwhile
                pass
        raise
