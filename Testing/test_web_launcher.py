"""`mosmos web`'s sign-in (mosmos/web/auth.py) and its launcher's ending of idle sessions, without a browser (the
browser tests, test_web_browser.py, drive the whole server through its one port)."""

from __future__ import annotations

import asyncio
import base64
import io
import subprocess
import sys
import time

import pytest

from mosmos.errors import MosmosError


def test_users_file_hashes_and_the_signed_cookie(tmp_path, monkeypatch, capsys):
    from mosmos.cli import main
    from mosmos.web.auth import COOKIE, SignIn, hash_password, read_users, verify_password

    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse\n"))
    assert main(["web", "--hash-password", "alice"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("alice:pbkdf2_sha256$") and "correct horse" not in line
    users = tmp_path / "users"
    users.write_text(f"# MOSMOS users\n\n{line}\nbob:{hash_password('s3cret', iterations=1000)}\n")
    table = read_users(users)
    assert sorted(table) == ["alice", "bob"]
    assert verify_password("correct horse", table["alice"]) and not verify_password("correct hors", table["alice"])

    (tmp_path / "bad").write_text(f"{line}\ncarol:plaintext\n")
    with pytest.raises(MosmosError, match=r"bad:2: expected 'name:pbkdf2_sha256\$\.\.\.'"):
        read_users(tmp_path / "bad")

    signIn = SignIn(users=table)
    basic = {"Authorization": "Basic " + base64.b64encode(b"bob:s3cret").decode()}
    user, cookie = signIn.check(basic, {}, {})
    assert user == "bob" and cookie
    assert signIn.check({}, {}, {COOKIE: cookie}) == ("bob", None)           # later requests: the cookie
    wrong = {"Authorization": "Basic " + base64.b64encode(b"bob:S3cret").decode()}
    assert signIn.check(wrong, {}, {}) == (None, None)
    assert signIn.check({}, {"token": "anything"}, {}) == (None, None)        # no token in users mode
    forged = cookie.replace(cookie.split(".")[0], base64.urlsafe_b64encode(b"alice").decode().rstrip("="))
    assert signIn.check({}, {}, {COOKIE: forged}) == (None, None)
    expired = signIn.cookie("bob", now=time.time() - 8 * 86400)
    assert signIn.check({}, {}, {COOKIE: expired}) == (None, None)
    assert SignIn(users=table).check({}, {}, {COOKIE: cookie}) == (None, None)   # another server's cookie

    token = SignIn(token="t0ken")
    assert token.check({}, {"token": "t0ken"}, {})[0] == "token"
    assert token.check({"Authorization": "Bearer t0ken"}, {}, {})[0] == "token"
    assert token.check({}, {"token": "t0ke"}, {}) == (None, None)


def test_idle_and_exited_sessions_end_with_their_upload_folders():
    pytest.importorskip("aiohttp")
    from mosmos.web.launcher import Launcher, SessionProcess

    launcher = Launcher(idle_timeout=60)
    try:
        now = time.monotonic()
        sessions = {}
        for sid, lastActive in (("idle", now - 61), ("busy", now - 10), ("exited", now)):
            folder = launcher.root / sid
            folder.mkdir()
            (folder / "ct.nii.gz").write_bytes(b"x")
            proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"] if sid != "exited"
                                    else [sys.executable, "-c", "pass"], start_new_session=True)
            sessions[sid] = SessionProcess(proc, 0, folder, now - 100, lastActive)
        sessions["exited"].proc.wait()
        launcher.sessions = dict(sessions)
        asyncio.run(launcher.reap(now))
        assert list(launcher.sessions) == ["busy"]
        assert sessions["idle"].proc.poll() is not None and not sessions["idle"].folder.exists()
        assert not sessions["exited"].folder.exists()
        assert sessions["busy"].proc.poll() is None and sessions["busy"].folder.exists()
    finally:
        asyncio.run(launcher.stop_all())
    assert sessions["busy"].proc.poll() is not None and not launcher.root.exists()
