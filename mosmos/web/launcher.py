"""One trame server process per browser tab: a trame server shares its state (and so its MRML scene) with every
client that connects, so the page a user opens at the launcher's address is redirected to a session process of
its own, on a free port of the same host. A session exits a few minutes after its tab is closed (a reload within
that time finds its work again); one spare session is kept started so that a new tab opens without waiting."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

from aiohttp import web

from mosmos.errors import MosmosError

SESSION_START_S = 120      # a session builds Slicer's views before it listens (about 10-20 s on 2 cores)
SPARE_MAX_AGE = 0.8        # of the session timeout: an unclaimed spare is replaced before it exits


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Launcher:
    def __init__(self, host: str = "127.0.0.1", port: int = 8080, models: str | None = None,
                 data: str | None = None, maxSessions: int = 4, sessionTimeout: int = 300):
        self.host, self.port = host, port
        self.models, self.data = models, data
        self.maxSessions, self.sessionTimeout = maxSessions, sessionTimeout
        self.sessions: list[subprocess.Popen] = []
        self._spare: tuple[subprocess.Popen, int, float] | None = None

    def session_command(self, port: int) -> list[str]:
        argv = [sys.executable, "-m", "mosmos.web.app", "--host", self.host, "--port", str(port),
                "--timeout", str(self.sessionTimeout)]
        if self.models:
            argv += ["--models", self.models]
        if self.data:
            argv += ["--data", self.data]
        return argv

    def _spawn(self) -> tuple[subprocess.Popen, int, float]:
        self.sessions = [p for p in self.sessions if p.poll() is None]
        if len(self.sessions) >= self.maxSessions:
            raise MosmosError(f"{len(self.sessions)} sessions are open, the most this server runs at once; "
                              "close a tab, wait a few minutes and reload")
        port = free_port(self.host)
        proc = subprocess.Popen(self.session_command(port), stdin=subprocess.DEVNULL, start_new_session=True)
        self.sessions.append(proc)
        return proc, port, time.monotonic()

    async def _ready(self, proc: subprocess.Popen, port: int) -> int:
        deadline = time.monotonic() + SESSION_START_S
        while not listening(self.host, port):
            if proc.poll() is not None:
                raise MosmosError(f"the session process exited with code {proc.returncode}; see the server's log")
            if time.monotonic() > deadline:
                self.stop([proc])
                raise MosmosError(f"the session did not start within {SESSION_START_S} s")
            await asyncio.sleep(0.2)
        return port

    def _start_spare(self) -> None:
        """Start the next tab's session now: building Slicer's views takes longer than a page load should."""
        try:
            self._spare = self._spawn()
        except MosmosError:
            self._spare = None  # full: the next tab starts one when a session has ended

    async def start_session(self) -> int:
        spare, self._spare = self._spare, None
        # A spare that waited too long is about to shut itself down (no client within its timeout).
        stale = spare is not None and time.monotonic() - spare[2] > SPARE_MAX_AGE * self.sessionTimeout
        if spare is None or spare[0].poll() is not None or stale:
            if spare is not None:
                self.stop([spare[0]])
            spare = self._spawn()
        port = await self._ready(spare[0], spare[1])
        self._start_spare()
        return port

    async def new_tab(self, request: web.Request) -> web.StreamResponse:
        try:
            port = await self.start_session()
        except MosmosError as e:
            return web.Response(status=503, text=f"MOSMOS: {e}\n")
        raise web.HTTPFound(f"http://{request.url.host or self.host}:{port}/")

    @staticmethod
    def stop(procs: list[subprocess.Popen], timeout: float = 1.0) -> None:
        """SIGTERM every session's process group at once, SIGKILL what is left after ``timeout``."""
        running = [p for p in procs if p.poll() is None]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in running:
                try:
                    os.killpg(proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + timeout
            while any(p.poll() is None for p in running) and time.monotonic() < deadline:
                time.sleep(0.05)
            running = [p for p in running if p.poll() is None]
            if not running:
                return
        for proc in running:
            proc.wait()

    def stop_all(self) -> None:
        self.stop(self.sessions)
        self.sessions = []

    def run(self) -> None:
        app = web.Application()
        app.router.add_get("/", self.new_tab)

        async def on_startup(_app):
            self._start_spare()

        async def on_cleanup(_app):
            self.stop_all()

        app.on_startup.append(on_startup)
        app.on_cleanup.append(on_cleanup)
        try:
            web.run_app(app, host=self.host, port=self.port, print=None, handle_signals=True)
        except OSError as e:
            raise MosmosError(f"{self.host}:{self.port}: cannot listen ({e.strerror or e})") from None
        finally:
            self.stop_all()
