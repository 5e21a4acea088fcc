"""`mosmos segment` (or any command) in a background process: JSON-lines progress read by threads into a
queue that a GUI timer or a blocking loop drains; cancel kills the whole process tree. No Qt here."""

from __future__ import annotations

import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from mosmos.errors import MosmosError
from mosmos.options import CPU, normalize_device

PR_SET_PDEATHSIG = 1   # linux/prctl.h


def die_with_parent(sig: int = signal.SIGKILL):
    """A ``preexec_fn`` that has the kernel send ``sig`` to the child when the thread that started it dies (Linux;
    None elsewhere): a child holding a copy of patient data must not outlive its parent, even one killed by
    SIGKILL (the OOM killer), which runs no clean-up of its own."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl   # looked up here: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:   # the parent died before the request was made
            os.kill(os.getpid(), sig)

    return preexec


class Cancelled(Exception):
    """The user cancelled a running segmentation."""


def interpreter() -> str:
    """Slicer's own Python launcher when running inside Slicer, else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def segment_command(request, python: str | None = None) -> list[str]:
    """The child process that runs ``request`` (a mosmos.inference.request.SegmentRequest): ``mosmos segment``
    with the arguments that make the same request."""
    return [python or interpreter(), "-m", "mosmos", "segment", *request.to_argv()]


def child_environment(device: str = "auto") -> dict[str, str]:
    """This environment, with the bundled mosmos package importable by the child (Slicer's PythonSlicer does
    not see extension folders) and CUDA hidden when the user asked for the CPU."""
    import mosmos

    env = dict(os.environ)
    package_parent = str(Path(mosmos.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_parent] + [p for p in [env.get("PYTHONPATH")] if p])
    env["PYTHONUNBUFFERED"] = "1"
    if normalize_device(device) == CPU:
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    return env


def parse_line(line: str) -> dict:
    """A stdout line as an event: JSON objects with an "event" key as they are, anything else as a log line."""
    text = line.rstrip("\r\n")
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and "event" in obj:
            return obj
    return {"event": "log", "line": text}


class BackgroundProcess:
    """One child process. ``poll()`` returns the events that arrived so far and never blocks:
    {"event": "progress", "done", "total"}, {"event": "log", "line", "stream"}, ... and finally
    {"event": "exit", "returncode"}."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None):
        self.argv, self.env, self.cwd = list(argv), env, cwd
        self.returncode: int | None = None
        self.cancelled = False
        self._proc: subprocess.Popen | None = None
        self._events: queue.Queue = queue.Queue()
        self._stderr = collections.deque(maxlen=50)
        self._readers: list[threading.Thread] = []

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> "BackgroundProcess":
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # its own process group: a cancel reaches grandchildren too
            kwargs["preexec_fn"] = die_with_parent()
        try:
            self._proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd, text=True,
                                          encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        except OSError as e:
            raise MosmosError(f"{self.argv[0]}: cannot start ({e.strerror or e})") from None
        self._readers = [threading.Thread(target=self._read, args=(self._proc.stdout, "stdout"), daemon=True),
                         threading.Thread(target=self._read, args=(self._proc.stderr, "stderr"), daemon=True)]
        for t in self._readers:
            t.start()
        threading.Thread(target=self._wait_exit, daemon=True).start()
        return self

    def _read(self, stream, name: str) -> None:
        for line in stream:
            if name == "stdout":
                self._events.put(parse_line(line))
            else:
                text = line.rstrip("\r\n")
                if text:
                    self._stderr.append(text)
                    self._events.put({"event": "log", "line": text, "stream": "stderr"})
        stream.close()

    def _wait_exit(self) -> None:
        rc = self._proc.wait()
        for t in self._readers:
            t.join()
        self.returncode = rc
        self._events.put({"event": "exit", "returncode": rc})

    @property
    def running(self) -> bool:
        return self._proc is not None and self.returncode is None

    def poll(self) -> list[dict]:
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def next_event(self, timeout: float) -> dict | None:
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    def error_message(self) -> str:
        """The child's one-line error, without the "mosmos segment: error: " prefix."""
        for line in reversed(self._stderr):
            if ": error: " in line:
                return line.split(": error: ", 1)[1]
        if self._stderr:
            return self._stderr[-1]
        return f"exited with code {self.returncode}"

    def cancel(self, timeout: float = 3.0, wait: bool = True) -> None:
        """Stop the process and everything it started; returns once they are gone. ``wait=False`` returns at
        once (a GUI button): the stopping goes on in a thread and ends with the usual "exit" event."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self.cancelled = True
        if wait:
            self._stop(timeout)
        else:
            threading.Thread(target=self._stop, args=(timeout,), daemon=True).start()

    def _stop(self, timeout: float) -> None:
        _kill_tree(self._proc.pid, timeout)
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def wait(self, progress=None, poll_seconds: float = 0.1) -> int:
        """Block until the process ends. ``progress(done, total)`` returning False cancels
        (raises Cancelled). Raises MosmosError with the child's error line on a non-zero exit."""
        if self._proc is None:
            self.start()
        while True:
            event = self.next_event(poll_seconds)
            if event is None:
                continue
            if event["event"] == "progress" and progress is not None:
                if progress(int(event.get("done", 0)), int(event.get("total", 0))) is False:
                    self.cancel()
                    raise Cancelled("cancelled by the user")
            elif event["event"] == "exit":
                self.check()
                return event["returncode"]

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled("cancelled by the user")
        if self.returncode:
            raise MosmosError(self.error_message())


def _kill_tree(pid: int, timeout: float) -> None:
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is None:
        if os.name == "nt":
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(pid)], capture_output=True, check=False)
        else:
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return
    try:
        parent = psutil.Process(pid)
        procs = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)

