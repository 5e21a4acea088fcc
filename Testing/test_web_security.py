"""`mosmos web` as an attacker on the same machine would try it, at the HTTP and websocket level (aiohttp), against
the real launcher and its real session processes on 127.0.0.1: one launcher with a users file (alice and bob, real
PBKDF2 hashes) serves every check of this file, and is stopped with Ctrl-C (SIGINT) by the last one. Each client
comes from its own loopback address (127.0.0.2, .3, ...), so that each check has its own failed-sign-in budget.
The checks that need the page (uploads, the model chosen by name, a session or the launcher killed during a run)
are in test_web_security_browser.py."""

from __future__ import annotations

import asyncio
import base64
import http.client
import os
import signal
import statistics
import subprocess
import sys
import time
import zipfile

import pytest

from web_server import files_left, gone, mosmos_web, session_folders, session_processes, wait_listening

pytest.importorskip("aiohttp")
pytest.importorskip("trame_slicer")

USERS = {"alice": "alice's password", "bob": "bob's password"}
START_S = 240    # a session builds Slicer's views before it answers: slow on 2 busy cores


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from mosmos.web.auth import hash_password

    tmp = tmp_path_factory.mktemp("web-security")
    (tmp / "users.txt").write_text("".join(f"{name}:{hash_password(pw)}\n" for name, pw in USERS.items()))
    # One session in all (alice's tab): each one builds Slicer's views, which takes a minute on 2 busy cores.
    with mosmos_web(tmp, {}, "--users", str(tmp / "users.txt"), "--max-sessions", "1") as server:
        wait_listening(server)
        yield server


@pytest.fixture(scope="module")
def alice_page(server) -> str:
    """The address of alice's tab: she signs in, the launcher gives her a session."""
    async def open_tab():
        async with _client("127.0.0.2") as alice:
            async with alice.get(server["url"], headers=_basic("alice", USERS["alice"]),
                                 allow_redirects=False) as r:
                assert r.status == 302, await r.text()
                return server["url"] + r.headers["Location"]

    return asyncio.run(open_tab())


def _client(address: str):
    """An aiohttp client whose connections come from ``address`` (a loopback address of its own)."""
    import aiohttp

    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                 connector=aiohttp.TCPConnector(local_addr=(address, 0)),
                                 timeout=aiohttp.ClientTimeout(total=START_S))


async def _status(client, url, **kwargs) -> int:
    async with client.get(url, allow_redirects=False, **kwargs) as response:
        await response.read()
        return response.status


async def _websocket(client, url, headers=None) -> int:
    """101 when the websocket opens, else the handshake's status."""
    import aiohttp

    try:
        async with client.ws_connect(url, headers=headers):
            return 101
    except aiohttp.WSServerHandshakeError as e:
        return e.status


def _basic(name: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def _session_port_and_secret(server, sid: str) -> tuple[int, str]:
    """The port of session ``sid`` from its command line (what `ps` shows anyone), and its secret from its
    environment (readable by its own user only: what the launcher holds)."""
    for proc in session_processes(server):
        argv = proc.cmdline()
        if any(sid in a for a in argv):
            environ = dict(line.split("=", 1) for line in
                           open(f"/proc/{proc.pid}/environ", "rb").read().decode().split("\0") if "=" in line)
            return int(argv[argv.index("--port") + 1]), environ["MOSMOS_SESSION_SECRET"]
    raise AssertionError(f"no session process for {sid}")


def test_a_session_answers_its_own_user_only_and_only_through_the_launcher(server, alice_page):
    from yarl import URL

    from mosmos.web.auth import SESSION_SECRET_HEADER

    url, page = server["url"], alice_page

    async def check():
        async with _client("127.0.0.2") as alice, _client("127.0.0.2") as bob:
            sid = page.rstrip("/").rsplit("/", 1)[1]
            assert await _status(alice, page + "index.html", headers=_basic("alice", USERS["alice"])) == 200
            assert await _websocket(alice, page + "ws") == 101
            sessions = len(session_processes(server))

            # bob signs in (on alice's address: the answer is the same as for a session that does not exist) ...
            assert await _status(bob, page, headers=_basic("bob", USERS["bob"])) == 404
            assert bob.cookie_jar.filter_cookies(URL(url)).get("mosmos_signin")
            # ... and with his cookie gets nothing of alice's session: page, scripts, websocket (its downloads)
            for path in ("", "index.html"):
                assert await _status(bob, page + path) == 404, path
            assert await _websocket(bob, page + "ws") == 404
            assert len(session_processes(server)) == sessions        # and starts nothing

            # The session's own port, from its command line: nothing for a direct caller, page or websocket.
            port, secret = _session_port_and_secret(server, sid)
            assert secret not in " ".join(" ".join(p.cmdline()) for p in session_processes(server))
            direct = f"http://127.0.0.1:{port}/"
            for path in ("", "index.html"):
                assert await _status(bob, direct + path) == 404, path
            assert await _status(bob, direct, headers={SESSION_SECRET_HEADER: "guess"}) == 404
            assert await _websocket(bob, direct + "ws") == 404
            assert await _websocket(bob, direct + "ws", {SESSION_SECRET_HEADER: secret[:-1] + "é"}) == 404
            # The launcher's secret is what lets it in: the refusals above are the check, not a missing page.
            assert await _status(bob, direct + "index.html", headers={SESSION_SECRET_HEADER: secret}) == 200
            assert await _status(alice, page + "index.html") == 200

    asyncio.run(check())


def _raw_status(port: int, headers: dict, path: str = "/", source: str = "127.0.0.3") -> int:
    """A request whose header values are sent as their Latin-1 bytes (http.client's way): bytes that are not
    UTF-8 reach the server as they are."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(source, 0))
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_sign_in_tells_nothing_and_guessing_does_not_slow_signed_in_users(server, alice_page):
    from mosmos.web.auth import MAX_FAILURES

    url, port, page = server["url"], server["port"], alice_page

    # Not ASCII, or not even UTF-8: 401 like any other refusal (it was a 500).
    for headers, path in (({"Authorization": "Bearer tökén"}, "/"),
                          ({"Authorization": "Basic " + base64.b64encode("élise:pässword".encode()).decode()}, "/"),
                          ({"Cookie": "mosmos_signin=ü.1.ß"}, "/"),
                          ({}, "/?token=%C3%BC%FF")):
        assert _raw_status(port, headers, path) == 401, headers

    async def check():
        async with _client("127.0.0.4") as timing:
            # An unknown name costs the hash a known name costs: the time does not tell which names exist.
            known, unknown = [], []
            for _ in range(3):
                for name, times in (("alice", known), ("mallory", unknown)):
                    t = time.perf_counter()
                    assert await _status(timing, url, headers=_basic(name, "wrong")) == 401
                    times.append(time.perf_counter() - t)
            assert statistics.median(unknown) > 0.5 * statistics.median(known), (known, unknown)

        async with _client("127.0.0.5") as alice, _client("127.0.0.5") as guesser:
            assert await _status(alice, page, headers=_basic("alice", USERS["alice"])) == 302   # signed in
            idle = []
            for _ in range(5):
                t = time.perf_counter()
                assert await _status(alice, page + "index.html") == 200
                idle.append(time.perf_counter() - t)

            # 4 clients guessing alice's password from her own address, as fast as they are answered.
            answers = []

            async def guess(n: int) -> None:
                for i in range(12):
                    async with guesser.get(url, headers=_basic("alice", f"guess {n}.{i}"),
                                           allow_redirects=False) as response:
                        answers.append((response.status, response.headers.get("Retry-After")))

            guessing = asyncio.gather(*(guess(n) for n in range(4)))
            busy = []
            while not guessing.done():
                t = time.perf_counter()
                assert await _status(alice, page + "index.html") == 200   # her cookie: never refused
                busy.append(time.perf_counter() - t)
                await asyncio.sleep(0.05)
            await guessing
            refused = [a for a in answers if a[0] == 429]
            assert len(answers) - len(refused) <= MAX_FAILURES + 3, answers        # + the guesses in flight
            assert refused and all(int(after) > 0 for _, after in refused), answers
            # The right password too, from that address, until the window has passed; alice's cookie still works.
            assert await _status(guesser, url, headers=_basic("alice", USERS["alice"])) == 429
            print(f"signed-in page: idle median {statistics.median(idle) * 1000:.1f} ms, while 4 clients guess "
                  f"{statistics.median(busy) * 1000:.1f} ms ({len(busy)} requests)")
            assert statistics.median(busy) < max(4 * statistics.median(idle), 0.25), (idle, busy)

    asyncio.run(check())


def test_stopping_a_session_leaves_the_event_loop_free():
    """Launcher.stop of a process that ignores SIGTERM waits for it (then SIGKILLs it) without holding the loop
    that every tab's websocket goes through; listening() is a coroutine too (it was a blocking connect)."""
    from mosmos.web.launcher import STOP_WAIT_S, Launcher, free_port, listening

    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, sys, time; "
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(60)"],
                                stdout=subprocess.PIPE, start_new_session=True)
    stubborn.stdout.readline()     # SIGTERM is ignored from here on

    async def check():
        gaps = []

        async def tick():
            while True:
                t = time.perf_counter()
                await asyncio.sleep(0.01)
                gaps.append(time.perf_counter() - t)

        ticker = asyncio.ensure_future(tick())
        t = time.perf_counter()
        await Launcher.stop([stubborn])
        took = time.perf_counter() - t
        assert not await listening("127.0.0.1", free_port("127.0.0.1"))
        ticker.cancel()
        return took, gaps

    took, gaps = asyncio.run(check())
    assert stubborn.poll() == -signal.SIGKILL and took >= STOP_WAIT_S
    assert len(gaps) > 10 and max(gaps) < 0.5, max(gaps)


def test_a_zip_is_unpacked_within_its_limits(tmp_path):
    from mosmos.errors import MosmosError
    from mosmos.web.session import unpack_zip

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("series/0001.dcm", bytes(30_000_000))      # 30 MB of zeros in 30 kB
        archive.writestr("../../escaped.dcm", b"x")
    assert bomb.stat().st_size < 1_000_000
    out = tmp_path / "out"
    out.mkdir()
    t = time.perf_counter()
    with pytest.raises(MosmosError, match=r"^bomb.zip: unpacks to more than 5 MB \(10 x the upload limit\); refused$"):
        unpack_zip(bomb, out, max_bytes=5_000_000)
    assert time.perf_counter() - t < 5    # stopped on the way, not after 30 MB
    assert sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) <= 5_000_000

    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as archive:
        for i in range(4):
            archive.writestr(f"s/{i}.dcm", b"x")
        archive.writestr("../../escaped.dcm", b"x")
    with pytest.raises(MosmosError, match=r"^many.zip: 5 files in the zip archive, more than the 4 this server"):
        unpack_zip(many, tmp_path / "many", max_files=4)
    unpack_zip(many, tmp_path / "many")
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "many").rglob("*.dcm")) == [
        "many/escaped.dcm", "many/s/0.dcm", "many/s/1.dcm", "many/s/2.dcm", "many/s/3.dcm"]


def test_ctrl_c_ends_the_launcher_its_sessions_and_their_folders_within_5_s(server):
    sessions = session_processes(server)
    assert sessions and session_folders(server)       # alice's session of the tests above
    t = time.monotonic()
    os.kill(server["proc"].pid, signal.SIGINT)
    server["proc"].wait(timeout=30)
    took = time.monotonic() - t
    assert took < 5, took
    assert gone(sessions, timeout=1)
    assert session_folders(server) == [] and files_left(server) == []
    assert list((server["tmp"] / "tmpdir").glob("mosmos-web-*/launcher-*")) == []


def test_a_run_dies_with_the_process_that_started_it():
    """mosmos.mrml.process: a segmentation run (any BackgroundProcess) gets SIGKILL from the kernel when the
    process that started it dies, even by SIGKILL, which runs no clean-up of its own."""
    import psutil

    from web_server import ROOT

    parent = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from mosmos.mrml.process import BackgroundProcess\n"
                               "sleep = [sys.executable, '-c', 'import time; time.sleep(60)']\n"
                               "run = BackgroundProcess(sleep).start()\n"
                               "print(run.pid, flush=True)\ntime.sleep(60)\n"],
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    run = psutil.Process(int(parent.stdout.readline()))
    assert run.is_running()
    parent.kill()
    parent.wait()
    assert gone([run], timeout=10)
