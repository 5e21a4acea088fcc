"""Atomic writes: a file is staged beside its target, with the mode ``open()`` would give it (the user's umask),
and renamed over it, so that readers see the old file or the whole new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import MosmosError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    tmp = staging_file(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise MosmosError(f"{path}: cannot write ({e.strerror or e})") from None
        raise


def staging_file(path: Path, suffix: str = ".part") -> Path:
    """A new empty file beside ``path`` for an atomic write (then ``os.replace``), with the mode ``open()``
    gives a new file under the user's umask (mkstemp's own is 0600: a colleague could not read the result)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~current_umask())
        finally:
            os.close(fd)
    except OSError as e:
        raise MosmosError(f"{path}: cannot write ({e.strerror or e})") from None
    return Path(tmp)


def current_umask() -> int:
    try:  # Linux says it without changing it (other threads may be creating files meanwhile)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask
