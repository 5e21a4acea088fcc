"""`mosmos web` started for a test on a free loopback port (test_web_browser.py, test_web_security*.py), and the
look into what it leaves on disk and in the process table."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

from helpers import mosmos_cmd

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def mosmos_web(tmp: Path, env: dict, *options):
    """`mosmos web` with ``options`` on a free loopback port, its log in tmp/server.log, its temporary root (and
    so every session's folder) under tmp/tmpdir; stopped (with its sessions) on the way out, if still running."""
    from mosmos.web.launcher import free_port

    port = free_port("127.0.0.1")
    (tmp / "tmpdir").mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TMPDIR=str(tmp / "tmpdir")) | env
    log = (tmp / "server.log").open("a")
    proc = subprocess.Popen(mosmos_cmd("web", "--port", str(port), *options),
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "port": port, "proc": proc, "tmp": tmp, "log": tmp / "server.log"}
    finally:
        proc.terminate()  # the launcher stops its sessions on the way out
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()


def wait_listening(server, timeout: float = 90.0) -> None:
    """Until the launcher accepts connections (it listens once its first spare session has been started)."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        assert server["proc"].poll() is None, server["log"].read_text()[-2000:]
        try:
            socket.create_connection(("127.0.0.1", server["port"]), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "the launcher did not listen"
            time.sleep(0.3)


def session_folders(server) -> list[Path]:
    """The sessions' folders in the launcher's temporary root (under the server's TMPDIR)."""
    return sorted((server["tmp"] / "tmpdir").glob("mosmos-web-*/launcher-*/*/"))


def files_left(server) -> list[str]:
    """Every file under the server's TMPDIR (where the launcher's temporary root is, and where anything a session
    or its runs wrote to a temporary folder would be) but the running launchers' lock files and torch's compile
    cache (torchinductor_<user>, made at import: no data of a volume)."""
    tmpdir = server["tmp"] / "tmpdir"
    return sorted(str(p.relative_to(tmpdir)) for p in tmpdir.rglob("*")
                  if p.is_file() and p.name != "launcher.lock" and not p.relative_to(tmpdir).parts[0].startswith(
                      "torchinductor_"))


def descendants(server) -> list:
    """The launcher's processes below it (sessions and their segmentation runs), as psutil processes."""
    import psutil

    try:
        return psutil.Process(server["proc"].pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def session_processes(server) -> list:
    return [c for c in descendants(server) if "mosmos.web.app" in " ".join(c.cmdline())]


def gone(procs, timeout: float) -> bool:
    """Whether every process of ``procs`` (psutil) has exited within ``timeout`` seconds."""
    import psutil

    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return not alive


def stub_models(tmp: Path) -> tuple[Path, dict]:
    """A models folder holding the stand-in model (Testing/inference_stub.py) as stub.mosmos, and the environment
    that registers its architecture in the server's processes (through sitecustomize) but the launcher's: it
    imports no torch in production, and with torch loaded its interpreter's exit alone took over 5 s on 2 busy
    cores."""
    import sys

    sys.path.insert(0, str(ROOT / "Testing"))
    import inference_stub

    models, site = tmp / "models", tmp / "site"
    models.mkdir()
    site.mkdir()
    inference_stub.write_stub_model(models / "stub.mosmos", spacing=(3.0, 3.0, 3.0))
    (site / "sitecustomize.py").write_text(f"import sys\nsys.path.insert(0, {str(ROOT / 'Testing')!r})\n"
                                           "if sys.orig_argv[1:4] != ['-m', 'mosmos', 'web']:\n"
                                           "    import inference_stub\n")
    return models, {"PYTHONPATH": os.pathsep.join([str(ROOT), str(site)])}
