"""Helpers shared by the tests: where the real data lives, the command line in a subprocess,
JSON-lines events, and killing a run right after it has written a checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

# The real public data the tests read ships in Testing/Data (each source with its licence and SOURCE.md).
REAL_DATA = Path(__file__).resolve().parent / "Data"


def real_data(relative: str) -> Path:
    """``Testing/Data/<relative>``, failing (not skipping) with the path when a checkout lacks it."""
    path = REAL_DATA / relative
    assert path.exists(), (f"{path} is missing: the real test data ships with the repository in Testing/Data "
                           "(use a full git clone)")
    return path


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def mosmos_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mosmos", *args]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(mosmos_cmd(*args), capture_output=True, text=True, timeout=timeout)


def run_torchrun(nproc: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone -m mosmos ...`` on the CPU, one thread per process (the machine has few cores)."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node", str(nproc), "-m", "mosmos", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def kill_after_checkpoint(args: list[str], log: Path, before: str = "steps_per_epoch", timeout: float = 240) -> int:
    """Start ``mosmos *args`` (which must write events to ``log``), SIGKILL it as soon as it has
    written a checkpoint before step ``start[before]`` ("steps_per_epoch": inside the first epoch;
    "total_steps": anywhere before the end), and return the last step it logged."""
    proc = subprocess.Popen(mosmos_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            ev = events(log) if log.exists() else []
            start = next((e for e in ev if e["event"] == "start"), None)
            ckpts = [e["step"] for e in ev if e["event"] == "checkpoint"]
            if start and ckpts and ckpts[-1] < start[before]:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return max(e["step"] for e in events(log) if e["event"] == "step")
