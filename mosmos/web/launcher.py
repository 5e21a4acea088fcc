"""One public port for every browser tab. A trame server shares its state (and so its MRML scene) with every
client that connects, so each tab still gets a session process of its own, listening on a loopback port; the
launcher sends the tab to ``session/<id>/`` and forwards that path's HTTP and websocket traffic to the session's
process, so one SSH tunnel or one reverse-proxy location reaches everything. Sign-in (auth.py) is checked before
anything else: a refused request gets 401 (429 after too many failures from its address) and starts no session.

Every door is signed: a session belongs to the user who opened it (anyone else gets 404 for its address), and the
launcher adds the session's own secret to what it forwards, without which the session's port answers 404.

No patient data is left behind: each session has a folder (its upload and its runs' work files) in the launcher's
own temporary root, removed when the session ends however it ends. A session ends when its tab has been gone for
``session_timeout`` seconds (the trame server exits by itself), when nothing has passed between it and its tab for
``idle_timeout`` seconds, or when its process died (the launcher's sweep); sessions die with the launcher, even a
SIGKILLed one (the kernel's parent-death signal), and a launcher that starts removes the roots that crashed
launchers left. One spare session is kept started so that a new tab opens without waiting."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import html
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
from aiohttp import web

from mosmos.errors import MosmosError
from mosmos.mrml.process import die_with_parent

from .auth import COOKIE, SESSION_SECRET_ENV, SESSION_SECRET_HEADER, FailedSignIns, SignIn

SESSION_START_S = 120      # a session builds Slicer's views before it listens (about 10-20 s on 2 cores)
SPARE_MAX_AGE = 0.8        # of the session timeout: an unclaimed spare is replaced before it exits
SESSION_HOST = "127.0.0.1"  # sessions are reached through the launcher only
REAP_EVERY_S = 5.0
STOP_WAIT_S = 1.0           # after SIGTERM, before SIGKILL: the launcher's own exit stays well within 5 s
SHUTDOWN_TIMEOUT_S = 1.0    # for the requests in flight when the launcher is stopped (the websockets are closed)
ROOT_LOCK = "launcher.lock"  # held (flock) by a running launcher in its temporary root
# Per-connection headers (RFC 9110 7.6.1) are the proxy's own business on each side; Host names the session.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "host"}


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def listening(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 0.5)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


def temporary_root() -> tuple[Path, object]:
    """A folder of this launcher's own, ``mosmos-web-<uid>/launcher-*`` under the system's temporary folder, and
    the open lock file that marks it as in use. The roots of launchers that are gone (their lock free: the kernel
    releases it however a process dies) are removed first, with whatever patient data they held."""
    base = Path(tempfile.gettempdir()) / f"mosmos-web-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(base)
    if not base.is_dir() or base.is_symlink() or info.st_uid != os.getuid():
        raise MosmosError(f"{base}: not a folder of this user's; remove it or set TMPDIR")
    os.chmod(base, 0o700)
    for old in base.glob("launcher-*"):
        try:
            with open(old / ROOT_LOCK, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(old, ignore_errors=True)
        except BlockingIOError:
            continue   # a running launcher's
        except OSError:
            shutil.rmtree(old, ignore_errors=True)   # no lock file: a launcher that died while making its root
    root = Path(tempfile.mkdtemp(prefix="launcher-", dir=base))
    lock = open(root / ROOT_LOCK, "a")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return root, lock


@dataclasses.dataclass
class SessionProcess:
    proc: subprocess.Popen
    port: int
    folder: Path                    # the session's folder (upload, work files), removed when it ends
    started: float
    last_active: float
    secret: str = ""                # sent with every request forwarded to the session
    owner: str | None = None        # the signed-in user (or "token") whose tab claimed it


def _page(status: int, text: str) -> web.Response:
    """A refusal the browser shows as a page: the message, and a link back to the launcher's address."""
    body = (f"<!doctype html><title>MOSMOS</title><body style='font-family: sans-serif'>"
            f"<p id='message'>MOSMOS: {html.escape(text)}</p></body>")
    return web.Response(status=status, text=body, content_type="text/html")


class Launcher:
    def __init__(self, host: str = "127.0.0.1", port: int = 8080, models: str | None = None,
                 data: str | None = None, max_sessions: int = 4, session_timeout: int = 300,
                 sign_in_rules: SignIn | None = None, idle_timeout: float = 1800, max_upload_mb: float = 2048):
        self.host, self.port = host, port
        self.models, self.data = models, data
        self.max_sessions, self.session_timeout = max_sessions, session_timeout
        self.sign_in_rules, self.idle_timeout, self.max_upload_mb = sign_in_rules, idle_timeout, max_upload_mb
        self.sessions: dict[str, SessionProcess] = {}    # claimed by a tab, by session id
        self._spare: tuple[str, SessionProcess] | None = None
        self.root, self._root_lock = temporary_root()
        self.failures = FailedSignIns()
        # Password hashes are computed here, off the event loop, one at a time: guessing cannot take every core.
        self._hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mosmos-sign-in")
        self._websockets: set[web.WebSocketResponse] = set()
        self._client: aiohttp.ClientSession | None = None

    def session_command(self, port: int, folder: Path) -> list[str]:
        argv = [sys.executable, "-m", "mosmos.web.app", "--host", SESSION_HOST, "--port", str(port),
                "--timeout", str(self.session_timeout), "--folder", str(folder),
                "--max-upload-mb", str(self.max_upload_mb)]
        if self.models:
            argv += ["--models", self.models]
        if self.data:
            argv += ["--data", self.data]
        return argv

    def _running(self) -> list[SessionProcess]:
        spare = [self._spare[1]] if self._spare else []
        return [s for s in [*self.sessions.values(), *spare] if s.proc.poll() is None]

    async def _spawn(self) -> tuple[str, SessionProcess]:
        await self.reap()
        if len(self._running()) >= self.max_sessions:
            raise MosmosError(f"{self.max_sessions} sessions are open, the most this server runs at once; "
                              "close a tab, wait a few minutes and reload")
        sid = secrets.token_urlsafe(12)
        folder = self.root / sid
        folder.mkdir()
        port = free_port(SESSION_HOST)
        secret = secrets.token_urlsafe(32)
        # SIGTERM when the launcher dies, whatever kills it: the session removes its folder on its way out.
        proc = subprocess.Popen(self.session_command(port, folder), stdin=subprocess.DEVNULL,
                                env=dict(os.environ, **{SESSION_SECRET_ENV: secret}), start_new_session=True,
                                preexec_fn=die_with_parent(signal.SIGTERM))
        now = time.monotonic()
        return sid, SessionProcess(proc, port, folder, now, now, secret)

    async def _ready(self, session: SessionProcess) -> None:
        deadline = time.monotonic() + SESSION_START_S
        while not await listening(SESSION_HOST, session.port):
            if session.proc.poll() is not None:
                await self.end(session)
                raise MosmosError(f"the session process exited with code {session.proc.returncode}; "
                                  "see the server's log")
            if time.monotonic() > deadline:
                await self.end(session)
                raise MosmosError(f"the session did not start within {SESSION_START_S} s")
            await asyncio.sleep(0.2)

    async def _start_spare(self) -> None:
        """Start the next tab's session now: building Slicer's views takes longer than a page load should."""
        try:
            self._spare = await self._spawn()
        except MosmosError:
            self._spare = None  # full: the next tab starts one when a session has ended

    async def start_session(self, owner: str | None = None) -> str:
        """A ready session for a new tab of ``owner`` (the spare, or a new one), by id."""
        spare, self._spare = self._spare, None
        # A spare that waited too long is about to shut itself down (no client within its timeout).
        if spare is not None and (spare[1].proc.poll() is not None
                                  or time.monotonic() - spare[1].started > SPARE_MAX_AGE * self.session_timeout):
            await self.end(spare[1])
            spare = None
        sid, session = spare or await self._spawn()
        session.owner = owner
        await self._ready(session)
        session.last_active = time.monotonic()
        self.sessions[sid] = session
        await self._start_spare()
        return sid

    # --- ending sessions ----------------------------------------------------------------------------
    async def end(self, session: SessionProcess) -> None:
        await self.stop([session.proc])
        shutil.rmtree(session.folder, ignore_errors=True)

    async def reap(self, now: float | None = None) -> None:
        """End the sessions whose process has exited (killed, or its tab gone) or whose tab has been idle past
        ``idle_timeout``, with their folders: what a killed session's run left there (its copy of the volume)."""
        now = time.monotonic() if now is None else now
        for sid, session in list(self.sessions.items()):
            if session.proc.poll() is not None or now - session.last_active > self.idle_timeout:
                del self.sessions[sid]
                await self.end(session)
        if self._spare is not None and self._spare[1].proc.poll() is not None:
            spare, self._spare = self._spare[1], None
            await self.end(spare)

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(REAP_EVERY_S)
            await self.reap()

    @staticmethod
    async def stop(procs: list[subprocess.Popen], timeout: float = STOP_WAIT_S) -> None:
        """SIGTERM every session's process group at once, SIGKILL what is left after ``timeout``; waits without
        holding up the event loop (every other tab's websocket goes through it)."""
        running = [p for p in procs if p.poll() is None]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in running:
                try:
                    os.killpg(proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + timeout
            while any(p.poll() is None for p in running) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            running = [p for p in running if p.poll() is None]
            if not running:
                return

    async def stop_all(self) -> None:
        """Every session stopped and the launcher's temporary root removed."""
        spare = [self._spare[1]] if self._spare else []
        await self.stop([s.proc for s in [*self.sessions.values(), *spare]])
        self.sessions, self._spare = {}, None
        shutil.rmtree(self.root, ignore_errors=True)
        self._root_lock.close()

    # --- requests -----------------------------------------------------------------------------------
    @web.middleware
    async def sign_in(self, request: web.Request, handler) -> web.StreamResponse:
        request["user"] = None
        if self.sign_in_rules is None:
            return await handler(request)
        user, cookie = self.sign_in_rules.signed_in(request.cookies), None
        if user is None:
            address = request.remote or ""
            wait = self.failures.retry_after(address)
            if wait:   # refused before any hash is computed
                response = _page(429, f"too many failed sign-ins from this address; try again in "
                                      f"{math.ceil(wait)} s")
                response.headers["Retry-After"] = str(math.ceil(wait))
                return response
            user, cookie = await asyncio.get_running_loop().run_in_executor(
                self._hashing, self.sign_in_rules.check, request.headers, request.query, request.cookies)
            if user is None:
                if SignIn.has_credentials(request.headers, request.query):
                    self.failures.record(address)
                response = _page(401, "sign in first: open the address the server printed (with its ?token=), "
                                      "or give your user name and password")
                if self.sign_in_rules.challenge:
                    response.headers["WWW-Authenticate"] = self.sign_in_rules.challenge
                return response
        request["user"], request["cookie"] = user, cookie
        response = await handler(request)
        if not response.prepared:
            self._set_cookie(request, response)
        return response

    @staticmethod
    def _set_cookie(request: web.Request, response: web.StreamResponse) -> None:
        """A request that signed in with credentials gets its cookie with whatever answers it (a forwarded
        response before it is streamed)."""
        if request.get("cookie") is not None:
            response.set_cookie(COOKIE, request["cookie"], httponly=True, samesite="Lax", path="/",
                                secure=request.secure)

    async def new_tab(self, request: web.Request) -> web.StreamResponse:
        try:
            sid = await self.start_session(request["user"])
        except MosmosError as e:
            return _page(503, str(e))
        # Relative, so that a reverse proxy serving the launcher under a path prefix keeps it.
        return web.Response(status=302, headers={"Location": f"session/{sid}/"})

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        sid, tail = request.match_info["sid"], request.match_info["tail"]
        session = self.sessions.get(sid)
        # Another user's session is answered as one that does not exist.
        if session is None or session.proc.poll() is not None or session.owner != request["user"]:
            return _page(404, "this session has ended (its tab was closed or idle too long); "
                              "open the server's address again for a new one")
        if not tail:   # the page's relative addresses (its scripts, its websocket) need the trailing slash
            return web.Response(status=302, headers={"Location": f"{sid}/"})
        tail = tail[1:]
        session.last_active = time.monotonic()
        url = f"http://{SESSION_HOST}:{session.port}/{tail}"
        if request.query_string:
            url += "?" + request.query_string
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._proxy_websocket(request, session, url)
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in HOP_BY_HOP and k.lower() != SESSION_SECRET_HEADER.lower()}
        headers[SESSION_SECRET_HEADER] = session.secret
        body = await request.read() if request.can_read_body else None
        try:
            async with self._client.request(request.method, url, headers=headers, data=body,
                                            allow_redirects=False) as upstream:
                response = web.StreamResponse(status=upstream.status, headers={
                    k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP})
                self._set_cookie(request, response)
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
        self._websockets.add(browser)
        try:
            async with self._client.ws_connect(url, max_msg_size=0,
                                               headers={SESSION_SECRET_HEADER: session.secret}) as upstream:
                async def pump(source, target) -> None:
                    async for msg in source:
                        # Either way: a running segmentation's progress keeps its session from idling out.
                        session.last_active = time.monotonic()
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
        finally:
            self._websockets.discard(browser)
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
            await self._start_spare()

        async def on_shutdown(_app):
            # SIGTERM or Ctrl-C: the tabs' websockets would hold the shutdown for as long as they stay open.
            for task in reaper:
                task.cancel()
            for socket_ in list(self._websockets):
                await socket_.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"the server is stopping")
            await self.stop_all()

        async def on_cleanup(_app):
            await self._client.close()
            self._hashing.shutdown(wait=False, cancel_futures=True)

        app.on_startup.append(on_startup)
        app.on_shutdown.append(on_shutdown)
        app.on_cleanup.append(on_cleanup)
        return app

    def run(self) -> None:
        try:
            web.run_app(self.application(), host=self.host, port=self.port, print=None, handle_signals=True,
                        shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        except OSError as e:
            raise MosmosError(f"{self.host}:{self.port}: cannot listen ({e.strerror or e})") from None
        finally:
            asyncio.run(self.stop_all())   # a start that failed: what it started, and the temporary root
