"""Cohorts: `mosmos segment --inputs LIST|DIR --out DIR` segments many cases with one model load.

Each case gets its own folder OUT/<case>/ (labels.nii.gz, volumes.json, and with --attention NAME the maps in
OUT/<case>/NAME/), written in a staging folder beside it and renamed into place whole, so a case folder that
exists is complete: a run killed at any moment and started again skips the finished cases and redoes at most
the ones in flight. A case is claimed with a lock file (host and process id) made with O_EXCL, so two runs on
one output folder never write the same case; a lock whose process is gone (killed) is taken over.

A case name is one plain folder name, checked before any work (check_case_name): no path separator, nothing
that starts with "." (the names the cohort keeps for itself: OUT/.<case>.lock and the staging folder
OUT/.<case>.part, exact names, so that no case's clean-up can reach another case's files) and not the log's own
name; so no case writes outside OUT, or over the log.

Cases are shared out by rank: RANK/WORLD_SIZE under torchrun, SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT in a
Slurm job array; rank r takes cases r, r + N, r + 2N, ... of the sorted list. Every case ends as one line of
OUT/cases.csv (case, status, seconds, error, rank); a failed case is logged with its one-line error and the
run goes on, ending with exit code 1.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import MosmosError

LOG_NAME = "cases.csv"
LOG_FIELDS = ("case", "status", "seconds", "error", "rank")
LABELS, VOLUMES = "labels.nii.gz", "volumes.json"
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr")
LOCK_SUFFIX, STAGING_SUFFIX = ".lock", ".part"   # OUT/.<case>.lock and OUT/.<case>.part, the cohort's own names
# Bytes in a case name: a file name holds 255 (Linux, macOS, Windows), the lock's adds a dot and its suffix.
NAME_BYTES = 255 - 1 - max(len(LOCK_SUFFIX), len(STAGING_SUFFIX))


@dataclass
class Case:
    """One case of a cohort: a volume file or DICOM folder (``path``), or a DICOMweb ``study`` (and ``series``)."""
    name: str
    path: Path | None = None
    study: str | None = None
    series: str | None = None


def list_cases(inputs, dicomweb: str | None = None) -> list[Case]:
    """The cases of a folder (its volume files and DICOM series folders) or of a CSV manifest (a ``path`` column,
    relative to the manifest's folder, or a ``study`` column with optional ``series``, and an optional ``case``
    name), sorted by name; one-line errors for a manifest naming files that do not exist, for a case name that
    is not one plain folder name (check_case_name) and for a --dicomweb URL that carries credentials."""
    inputs = Path(inputs)
    if dicomweb:
        from .dicomweb import check_url

        check_url(dicomweb)
    if inputs.is_dir():
        cases = [Case(_case_name(p), path=p) for p in sorted(inputs.iterdir()) if _is_case(p)]
        if not cases:
            raise MosmosError(f"{inputs}: no volumes ({', '.join(VOLUME_SUFFIXES)}) and no DICOM series folders")
        for case in cases:
            check_case_name(case.name, case.path)
    elif inputs.is_file():
        cases = _manifest_cases(inputs, dicomweb)
    else:
        raise MosmosError(f"{inputs}: no such file or folder")
    seen: dict[str, Case] = {}
    for case in cases:
        if case.name in seen:
            raise MosmosError(f"{inputs}: two cases named {case.name!r}; give a 'case' column to tell them apart")
        seen[case.name] = case
    return sorted(cases, key=lambda c: c.name)


def check_case_name(name: str, where) -> None:
    """Refuse, in one line naming ``where`` (a file, or a manifest's line), a case name that is not one plain folder
    name inside OUT: a path separator, ".", ".." or any name starting with "." (the cohort's own lock and staging
    names), a control character (the name is printed in one-line messages), the log's name, or too long for the
    lock's name beside it."""
    reason = None
    if not name:
        reason = "is empty"
    elif "/" in name or "\\" in name:
        reason = "holds a path separator"
    elif name.startswith("."):
        reason = "starts with '.', as the cohort's own lock and staging folder names do"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        reason = "holds a control character"
    elif name.lower() == LOG_NAME:
        reason = "is the name of the cohort's log"
    elif len(os.fsencode(name)) > NAME_BYTES:
        reason = f"is longer than {NAME_BYTES} bytes"
    if reason:
        raise MosmosError(f"{where}: the case name {name!r} {reason}; a case name is one plain folder name in "
                          "--out (rename the input, or name the case in a manifest's 'case' column)")


def _is_case(path: Path) -> bool:
    from .dicom import is_dicom_file

    if path.name.startswith("."):
        return False
    if path.is_dir():
        return any(f.is_file() and is_dicom_file(f) for f in path.rglob("*"))
    return path.name.lower().endswith(VOLUME_SUFFIXES)


def _case_name(path: Path) -> str:
    for suffix in VOLUME_SUFFIXES:
        if path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def _manifest_cases(manifest: Path, dicomweb: str | None) -> list[Case]:
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            columns = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise MosmosError(f"{manifest}: cannot read the manifest ({e})") from None
    if "path" not in columns and "study" not in columns:
        raise MosmosError(f"{manifest}: a manifest needs a 'path' or a 'study' column (found: "
                          f"{', '.join(columns) or 'no rows'})")
    cases, missing = [], []
    for line, row in enumerate(rows, 2):
        name = (row.get("case") or "").strip()
        if (row.get("study") or "").strip():
            if not dicomweb:
                raise MosmosError(f"{manifest} line {line}: a study UID needs --dicomweb URL")
            study = row["study"].strip()
            cases.append(Case(name or study, study=study, series=(row.get("series") or "").strip() or None))
        else:
            text = (row.get("path") or "").strip()
            if not text:
                raise MosmosError(f"{manifest} line {line}: no path and no study")
            path = Path(text) if Path(text).is_absolute() else manifest.parent / text
            if not path.exists():
                missing.append(f"line {line}: {text}")
            cases.append(Case(name or _case_name(path), path=path))
        check_case_name(cases[-1].name, f"{manifest} line {line}")
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise MosmosError(f"{manifest}: {len(missing)} missing file{'s' if len(missing) > 1 else ''} "
                          f"({'; '.join(missing[:3])}{more})")
    return cases


def shard() -> tuple[int, int]:
    """(rank, number of ranks) from torchrun's RANK/WORLD_SIZE, else from a Slurm job array, else (0, 1)."""
    env = os.environ
    try:
        if "WORLD_SIZE" in env:
            rank, world = int(env.get("RANK", 0)), int(env["WORLD_SIZE"])
        elif "SLURM_ARRAY_TASK_COUNT" in env:
            rank = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
            world = int(env["SLURM_ARRAY_TASK_COUNT"])
        else:
            return 0, 1
    except (KeyError, ValueError) as e:
        raise MosmosError(f"cannot tell this process's share of the cases from the environment ({e})") from None
    if not 0 <= rank < world:
        raise MosmosError(f"rank {rank} is outside 0..{world - 1} (RANK/WORLD_SIZE or SLURM_ARRAY_TASK_*)")
    return rank, world


def staging_folder(out: Path, name: str) -> Path:
    """Where case ``name`` is written before it is renamed to OUT/<name>: one exact name, the case's alone (its
    lock keeps any other run out), so a killed run's leftover is found without a pattern that could match
    another case's (``p`` and ``p.x``, dotted study UIDs, a name with ``*``)."""
    return out / f".{name}{STAGING_SUFFIX}"


class CaseLock:
    """OUT/.<case>.lock, made with O_EXCL and naming its host and process; taken over when that process on this
    host is gone (a killed run), never while it lives or when it ran on another host."""

    def __init__(self, out: Path, name: str):
        self.path = out / f".{name}{LOCK_SUFFIX}"
        self.held = False

    def acquire(self) -> bool:
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale():
                    return False
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return True
        return False

    def _stale(self) -> bool:
        try:
            host, pid = self.path.read_text().split()
            pid = int(pid)
        except (OSError, ValueError):
            return time.time() - _mtime(self.path) > 60   # unreadable: being written, or debris
        if host != socket.gethostname():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return pid == os.getpid()   # a pid reused by this very process: an earlier run's lock

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def log_case(out: Path, row: dict) -> None:
    """Append one line to OUT/cases.csv (with the header when the file is new), in one write, so that ranks and
    parallel runs appending at once do not interleave within a line."""
    log = out / LOG_NAME
    try:
        fd = os.open(log, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(fd, (",".join(LOG_FIELDS) + "\n").encode())
        os.close(fd)
    except FileExistsError:
        pass
    line = _csv_line([row.get(k, "") for k in LOG_FIELDS])
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _csv_line(values) -> str:
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def run_case(case: Case, out: Path, rank: int, work, events) -> str:
    """Claim ``case``, run ``work(case, stage)`` (which writes the case's files into the folder ``stage``), rename
    the stage to OUT/<case>, and log the case; returns its status: "done", "failed" or "skipped" (finished
    already, or claimed by another run). A failure is one line in the log and never leaves a case folder."""
    lock = CaseLock(out, case.name)
    if (out / case.name).is_dir() or not lock.acquire():
        return "skipped"
    start = time.perf_counter()
    stage = None
    try:
        if (out / case.name).is_dir():   # finished by another run between the look and the lock
            return "skipped"
        stage = staging_folder(out, case.name)
        shutil.rmtree(stage, ignore_errors=True)   # a killed run's
        stage.mkdir()
        work(case, stage)
        os.rename(stage, out / case.name)   # the case appears whole
        stage = None
        status, error = "done", ""
    except MosmosError as e:
        status, error = "failed", str(e)
    except Exception as e:   # a bug or a reader's own error: the case fails, the cohort goes on
        status, error = "failed", f"{type(e).__name__}: {e}".splitlines()[0]
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        lock.release()
    seconds = round(time.perf_counter() - start, 2)
    print(f"mosmos segment: {case.name}: {status} in {seconds} s{': ' + error if error else ''}",
          file=sys.stderr, flush=True)
    events.emit("case", case=case.name, status=status, seconds=seconds, error=error)
    log_case(out, {"case": case.name, "status": status, "seconds": seconds, "error": error, "rank": rank})
    return status


def process_group(world: int):
    """Under torchrun, a gloo group so that every rank ends with the same exit code (torchrun stops the other
    ranks as soon as one exits non-zero); None alone or in a Slurm array, whose tasks end independently."""
    if world == 1 or "MASTER_ADDR" not in os.environ:
        return None
    import datetime

    import torch.distributed as dist

    # Ranks finish their shares at different times; the final all-reduce must wait for the slowest.
    dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    return dist


def total_failed(failed: int, group) -> int:
    if group is None:
        return failed
    import torch

    count = torch.tensor([failed])
    group.all_reduce(count)
    group.destroy_process_group()
    return int(count.item())
