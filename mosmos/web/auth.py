"""Sign-in for `mosmos web`: a shared token or a users file of salted PBKDF2-SHA256 password hashes. A request
that signs in (``?token=``, a Bearer token, or HTTP Basic with a user's password) gets a cookie signed with a
secret made at start, so the page's scripts and its websocket (which carry cookies, not typed credentials)
are let in too. No aiohttp or trame here: the launcher hands over the request's headers, query and cookies.

Nothing here tells an attacker more than "no": every comparison is of bytes in constant time (a value that is not
ASCII is a refusal like any other), an unknown user name costs a password hash as a known one does, and an
address that keeps failing is refused outright for a while (FailedSignIns) before any hash is computed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import deque
from pathlib import Path

from mosmos.errors import MosmosError

COOKIE = "mosmos_signin"
SCHEME = "pbkdf2_sha256"
ITERATIONS = 310_000          # OWASP's 2023 figure for PBKDF2-HMAC-SHA256
COOKIE_DAYS = 7
# Failed sign-ins from one address within FAILURE_WINDOW_S seconds before it is refused (429) until the oldest
# of them is that old: a user who mistypes a few times is not locked out, a guesser gets about 10 tries a minute.
MAX_FAILURES = 10
FAILURE_WINDOW_S = 60.0
# The launcher sends each request it forwards to a session with that session's secret in this header; the
# session process answers nothing without it. The secret reaches the session in its environment, not in its
# command line (which every user of the machine can read in `ps`).
SESSION_SECRET_HEADER = "X-Mosmos-Session"
SESSION_SECRET_ENV = "MOSMOS_SESSION_SECRET"


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time comparison of their UTF-8 bytes: a value that cannot be encoded is simply not equal
    (``hmac.compare_digest`` raises on non-ASCII str)."""
    try:
        return given is not None and hmac.compare_digest(given.encode(), expected.encode())
    except UnicodeError:   # lone surrogates: bytes of a header that were not UTF-8
        return False


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """``pbkdf2_sha256$<iterations>$<salt>$<hash>`` (salt and hash URL-safe base64), one users-file entry's hash."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{SCHEME}${iterations}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, iterations, salt, digest = encoded.split("$")
        if scheme != SCHEME:
            return False
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), _unb64(salt), int(iterations))
    except ValueError:   # UnicodeError included
        return False
    return hmac.compare_digest(got, _unb64(digest))


def read_users(path: str | Path) -> dict[str, str]:
    """``name:hash`` lines (blank lines and # comments skipped) -> {name: hash}; a malformed line is an error
    naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise MosmosError(f"{path}: cannot read the users file ({e})") from None
    users = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, encoded = line.partition(":")
        if not name or not encoded.startswith(SCHEME + "$") or encoded.count("$") != 3:
            raise MosmosError(f"{path}:{number}: expected 'name:{SCHEME}$...' (make one with "
                              "`mosmos web --hash-password NAME`)")
        users[name.strip()] = encoded.strip()
    if not users:
        raise MosmosError(f"{path}: the users file names no user")
    return users


class SignIn:
    """Who may use the server: everyone holding ``token``, or the ``users`` ({name: hash}) with their passwords."""

    def __init__(self, token: str | None = None, users: dict[str, str] | None = None):
        if not token and not users:
            raise ValueError("SignIn needs a token or users")
        self.token, self.users = token, users or {}
        self._secret = secrets.token_bytes(32)    # cookies die with the server that signed them
        # Checked when the name is unknown, so that a refusal takes as long as for a known name: made with the
        # iteration count of the file's (first) hash.
        iterations = int(next(iter(self.users.values())).split("$")[1]) if self.users else ITERATIONS
        self._dummy = hash_password(secrets.token_urlsafe(16), iterations=iterations)

    @property
    def challenge(self) -> str | None:
        """The WWW-Authenticate value of a refusal: browsers ask users-file users for name and password."""
        return 'Basic realm="MOSMOS", charset="UTF-8"' if self.users else None

    def cookie(self, user: str, now: float | None = None) -> str:
        expires = int((now or time.time()) + COOKIE_DAYS * 86400)
        payload = f"{_b64(user.encode())}.{expires}"
        return f"{payload}.{self._sign(payload)}"

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def _from_cookie(self, value: str | None) -> str | None:
        try:
            user, expires, signature = (value or "").split(".")
            if same_secret(signature, self._sign(f"{user}.{expires}")) and int(expires) > time.time():
                return _unb64(user).decode()
        except (ValueError, UnicodeDecodeError):
            pass
        return None

    def _from_credentials(self, authorization: str, query_token: str | None) -> str | None:
        if self.token and same_secret(query_token, self.token):
            return "token"
        kind, _, value = authorization.partition(" ")
        if self.token and kind.lower() == "bearer" and same_secret(value.strip(), self.token):
            return "token"
        if self.users and kind.lower() == "basic":
            try:
                name, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except ValueError:
                return None
            # Both branches hash: the time taken does not tell which names exist.
            known = verify_password(password, self.users.get(name, self._dummy))
            return name if known and name in self.users else None
        return None

    def signed_in(self, cookies) -> str | None:
        """The user of a valid cookie (a cheap check: one HMAC), else None."""
        return self._from_cookie(cookies.get(COOKIE))

    @staticmethod
    def has_credentials(headers, query) -> bool:
        """Whether the request tried a password or token (and so counts as a failure when refused). A stale
        cookie does not: a signed cookie cannot be guessed, and a restarted server's users all carry one."""
        return bool(headers.get("Authorization") or "token" in query)

    def check(self, headers, query, cookies) -> tuple[str | None, str | None]:
        """(the signed-in user or None, a cookie value to set when the request signed in with credentials).
        Slow with a users file (a password hash): the launcher runs it off its event loop."""
        user = self.signed_in(cookies)
        if user is not None:
            return user, None
        user = self._from_credentials(headers.get("Authorization", ""), query.get("token"))
        return user, (self.cookie(user) if user is not None else None)


class FailedSignIns:
    """Failed sign-ins per client address in the last ``window`` seconds; an address with ``limit`` of them is
    refused until the oldest is ``window`` old. Only failures are recorded, so signed-in users are never slowed."""

    def __init__(self, limit: int = MAX_FAILURES, window: float = FAILURE_WINDOW_S):
        self.limit, self.window = limit, window
        self._failures: dict[str, deque] = {}

    def _recent(self, address: str, now: float) -> deque:
        times = self._failures.get(address, deque())
        while times and now - times[0] >= self.window:
            times.popleft()
        return times

    def retry_after(self, address: str, now: float | None = None) -> float:
        """Seconds until ``address`` may try again (0: it may now)."""
        now = time.monotonic() if now is None else now
        times = self._recent(address, now)
        if not times:
            self._failures.pop(address, None)
        return self.window - (now - times[0]) if len(times) >= self.limit else 0.0

    def record(self, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self._failures) > 10_000:     # many addresses: forget those with no recent failure
            for old in list(self._failures):
                self.retry_after(old, now)
        times = self._recent(address, now)
        times.append(now)
        self._failures[address] = times
