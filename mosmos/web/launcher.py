"""One public port for every browser tab. A trame server shares its state (and so its MRML scene) with every
client that connects, so each tab still gets a session process of its own, listening on a loopback port; the
launcher sends the tab to ``session/<id>/`` and forwards that path's HTTP and websocket traffic to the session's
process, so one SSH tunnel or one reverse-proxy location reaches everything. Sign-in (auth.py) is checked before
anything else: a refused request gets 401 and starts no session. A session ends when its tab has been gone for
``sessionTimeout`` seconds (the trame server exits by itself), or when nothing has passed between it and its tab for
``idleTimeout`` seconds (the launcher stops it); either way its upload folder goes with it. One spare session is kept started so
that a new tab opens without waiting."""

from __future__ import annotations

import asyncio
import dataclasses
import html
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from mosmos.errors import MosmosError

from .auth import COOKIE, SignIn

SESSION_START_S = 120      # a session builds Slicer's views before it listens (about 10-20 s on 2 cores)
SPARE_MAX_AGE = 0.8        # of the session timeout: an unclaimed spare is replaced before it exits
SESSION_HOST = "127.0.0.1"  # sessions are reached through the launcher only
REAP_EVERY_S = 5.0
# Per-connection headers (RFC 9110 7.6.1) are the proxy's own business on each side; Host names the session.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "host"}


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


@dataclasses.dataclass
class SessionProcess:
    proc: subprocess.Popen
    port: int
    uploads: Path                   # the session's upload folder, removed when it ends
    started: float
    lastActive: float


def _page(status: int, text: str) -> web.Response:
    """A refusal the browser shows as a page: the message, and a link back to the launcher's address."""
    body = (f"<!doctype html><title>MOSMOS</title><body style='font-family: sans-serif'>"
            f"<p id='message'>MOSMOS: {html.escape(text)}</p></body>")
    return web.Response(status=status, text=body, content_type="text/html")


class Launcher:
    def __init__(self, host: str = "127.0.0.1", port: int = 8080, models: str | None = None,
                 data: str | None = None, maxSessions: int = 4, sessionTimeout: int = 300,
                 signIn: SignIn | None = None, idleTimeout: float = 1800, maxUploadMb: float = 2048):
        self.host, self.port = host, port
        self.models, self.data = models, data
        self.maxSessions, self.sessionTimeout = maxSessions, sessionTimeout
        self.signIn, self.idleTimeout, self.maxUploadMb = signIn, idleTimeout, maxUploadMb
        self.sessions: dict[str, SessionProcess] = {}    # claimed by a tab, by session id
        self._spare: tuple[str, SessionProcess] | None = None
        self.uploadsRoot = Path(tempfile.mkdtemp(prefix="mosmos-web-uploads-"))
        self._client: aiohttp.ClientSession | None = None

    def session_command(self, port: int, uploads: Path) -> list[str]:
        argv = [sys.executable, "-m", "mosmos.web.app", "--host", SESSION_HOST, "--port", str(port),
                "--timeout", str(self.sessionTimeout), "--uploads", str(uploads),
                "--max-upload-mb", str(self.maxUploadMb)]
        if self.models:
            argv += ["--models", self.models]
        if self.data:
            argv += ["--data", self.data]
        return argv

    def _running(self) -> list[SessionProcess]:
        spare = [self._spare[1]] if self._spare else []
        return [s for s in [*self.sessions.values(), *spare] if s.proc.poll() is None]

    def _spawn(self) -> tuple[str, SessionProcess]:
        self.reap()
        if len(self._running()) >= self.maxSessions:
            raise MosmosError(f"{self.maxSessions} sessions are open, the most this server runs at once; "
                              "close a tab, wait a few minutes and reload")
        sid = secrets.token_urlsafe(12)
        uploads = self.uploadsRoot / sid
        uploads.mkdir()
        port = free_port(SESSION_HOST)
        proc = subprocess.Popen(self.session_command(port, uploads), stdin=subprocess.DEVNULL,
                                start_new_session=True)
        now = time.monotonic()
        return sid, SessionProcess(proc, port, uploads, now, now)

    async def _ready(self, session: SessionProcess) -> None:
        deadline = time.monotonic() + SESSION_START_S
        while not listening(SESSION_HOST, session.port):
            if session.proc.poll() is not None:
                raise MosmosError(f"the session process exited with code {session.proc.returncode}; "
                                  "see the server's log")
            if time.monotonic() > deadline:
                self.end(session)
                raise MosmosError(f"the session did not start within {SESSION_START_S} s")
            await asyncio.sleep(0.2)

    def _start_spare(self) -> None:
        """Start the next tab's session now: building Slicer's views takes longer than a page load should."""
        try:
            self._spare = self._spawn()
        except MosmosError:
            self._spare = None  # full: the next tab starts one when a session has ended

    async def start_session(self) -> str:
        """A ready session for a new tab (the spare, or a new one), by id."""
        spare, self._spare = self._spare, None
        # A spare that waited too long is about to shut itself down (no client within its timeout).
        if spare is not None and (spare[1].proc.poll() is not None
                                  or time.monotonic() - spare[1].started > SPARE_MAX_AGE * self.sessionTimeout):
            self.end(spare[1])
            spare = None
        sid, session = spare or self._spawn()
        await self._ready(session)
        session.lastActive = time.monotonic()
        self.sessions[sid] = session
        self._start_spare()
        return sid

    # --- ending sessions ----------------------------------------------------------------------------
    def end(self, session: SessionProcess) -> None:
        self.stop([session.proc])
        shutil.rmtree(session.uploads, ignore_errors=True)

    def reap(self, now: float | None = None) -> None:
        """End the sessions whose process has exited or whose tab has been idle past ``idleTimeout``."""
        now = time.monotonic() if now is None else now
        for sid, session in list(self.sessions.items()):
            if session.proc.poll() is not None or now - session.lastActive > self.idleTimeout:
                del self.sessions[sid]
                self.end(session)

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(REAP_EVERY_S)
            self.reap()

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
        spare = [self._spare[1]] if self._spare else []
        self.stop([s.proc for s in [*self.sessions.values(), *spare]])
        self.sessions, self._spare = {}, None
        shutil.rmtree(self.uploadsRoot, ignore_errors=True)

    # --- requests -----------------------------------------------------------------------------------
    @web.middleware
    async def sign_in(self, request: web.Request, handler) -> web.StreamResponse:
        if self.signIn is None:
            return await handler(request)
        user, cookie = self.signIn.check(request.headers, request.query, request.cookies)
        if user is None:
            response = _page(401, "sign in first: open the address the server printed (with its ?token=), "
                                  "or give your user name and password")
            if self.signIn.challenge:
                response.headers["WWW-Authenticate"] = self.signIn.challenge
            return response
        response = await handler(request)
        if cookie is not None and not response.prepared:
            response.set_cookie(COOKIE, cookie, httponly=True, samesite="Lax", path="/",
                                secure=request.secure)
        return response

    async def new_tab(self, request: web.Request) -> web.StreamResponse:
        try:
            sid = await self.start_session()
        except MosmosError as e:
            return _page(503, str(e))
        # Relative, so that a reverse proxy serving the launcher under a path prefix keeps it.
        return web.Response(status=302, headers={"Location": f"session/{sid}/"})

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        sid, tail = request.match_info["sid"], request.match_info["tail"]
        session = self.sessions.get(sid)
        if session is None or session.proc.poll() is not None:
            return _page(404, "this session has ended (its tab was closed or idle too long); "
                              "open the server's address again for a new one")
        if not tail:   # the page's relative addresses (its scripts, its websocket) need the trailing slash
            return web.Response(status=302, headers={"Location": f"{sid}/"})
        tail = tail[1:]
        session.lastActive = time.monotonic()
        url = f"http://{SESSION_HOST}:{session.port}/{tail}"
        if request.query_string:
            url += "?" + request.query_string
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._proxy_websocket(request, session, url)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read() if request.can_read_body else None
        try:
            async with self._client.request(request.method, url, headers=headers, data=body,
                                            allow_redirects=False) as upstream:
                response = web.StreamResponse(status=upstream.status, headers={
                    k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP})
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(1 << 16):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientError as e:
            return _page(502, f"the session did not answer ({e})")

    async def _proxy_websocket(self, request: web.Request, session: SessionProcess, url: str) -> web.StreamResponse:
        browser = web.WebSocketResponse(max_msg_size=0)
        await browser.prepare(request)
        try:
            async with self._client.ws_connect(url, max_msg_size=0) as upstream:
                async def pump(source, target) -> None:
                    async for msg in source:
                        # Either way: a running segmentation's progress keeps its session from idling out.
                        session.lastActive = time.monotonic()
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            await target.send_str(msg.data)
                        elif msg.type == aiohttp.WSMsgType.BINARY:
                            await target.send_bytes(msg.data)
                        else:
                            break

                pumps = [asyncio.ensure_future(pump(browser, upstream)), asyncio.ensure_future(pump(upstream, browser))]
                _, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
        except aiohttp.ClientError:
            pass  # the session went away: closing the browser's side tells the page
        await browser.close()
        return browser

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self.sign_in], client_max_size=1 << 30)
        app.router.add_get("/", self.new_tab)
        app.router.add_route("*", "/session/{sid}{tail:(/.*)?}", self.proxy)
        reaper: list[asyncio.Task] = []

        async def on_startup(_app):
            self._client = aiohttp.ClientSession(auto_decompress=False)
            reaper.append(asyncio.ensure_future(self._reaper()))
            self._start_spare()

        async def on_cleanup(_app):
            for task in reaper:
                task.cancel()
            await self._client.close()
            self.stop_all()

        app.on_startup.append(on_startup)
        app.on_cleanup.append(on_cleanup)
        return app

    def run(self) -> None:
        try:
            web.run_app(self.application(), host=self.host, port=self.port, print=None, handle_signals=True)
        except OSError as e:
            raise MosmosError(f"{self.host}:{self.port}: cannot listen ({e.strerror or e})") from None
        finally:
            self.stop_all()
